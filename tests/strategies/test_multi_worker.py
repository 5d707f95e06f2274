"""Multi-worker data parallel: 2 local worker processes through the launcher.

Both workers must end with identical weights, equal (to float32 round-off,
see conftest.assert_same_weights) to single-process training at the same
global batch and data order, with the same loss history.
"""

import json
import os
import subprocess
import sys

import numpy as np
import socket

import pytest

import multi_worker_job
from tfpar.cluster import peers
from tfpar.strategies import MultiWorker

from conftest import assert_same_weights

ROOT, worker_env = multi_worker_job.ROOT, multi_worker_job.worker_env
FIT = dict(batch_size=32, epochs=2, shuffle=False, verbose=0, validation_split=0.25)
JOB = f"""
import json, os, sys
import keras
import numpy as np
import tfpar  # launched: makes the MultiWorker strategy before any TF op
import multi_worker_job as job

rank = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
for kind in job.KINDS:
    callbacks = []
    if kind == "mlp":
        callbacks.append(keras.callbacks.ModelCheckpoint(os.path.join(sys.argv[1], f"model_{{rank}}.keras")))
    model = job.model(kind=kind)
    history = tfpar.fit_distributed(model, *job.data(kind), strategy="multi_worker", callbacks=callbacks,
                                    **{FIT!r})
    np.savez(os.path.join(sys.argv[1], f"weights_{{kind}}_{{rank}}.npz"), *model.get_weights())
    with open(os.path.join(sys.argv[1], f"history_{{kind}}_{{rank}}.json"), "w") as f:
        json.dump(history.history, f)
# Micro-batches: 16 rows per worker per step as 2 micro-batches of 8.
strategy = tfpar.strategies.MultiWorker.current()
strategy.microbatches = 2
model = job.model()
tfpar.fit_distributed(model, *job.data(), strategy=strategy, **{FIT!r})
np.savez(os.path.join(sys.argv[1], f"weights_micro_{{rank}}.npz"), *model.get_weights())
# Several steps per call: 6 steps per epoch as calls of 4 and 2.
strategy.microbatches = 1
model = job.model(steps_per_execution=4)
history = tfpar.fit_distributed(model, *job.data(), strategy=strategy, **{FIT!r})
np.savez(os.path.join(sys.argv[1], f"weights_spe_{{rank}}.npz"), *model.get_weights())
with open(os.path.join(sys.argv[1], f"history_spe_{{rank}}.json"), "w") as f:
    json.dump(history.history, f)
# A second strategy in a launched worker: the error names the launcher's flags.
try:
    tfpar.strategies.MultiWorker(compression="powersgd")
except ValueError as error:
    with open(os.path.join(sys.argv[1], f"second_{{rank}}.txt"), "w") as f:
        f.write(str(error))
"""


def test_two_workers_train_exactly_like_one_process(tmp_path):
    (tmp_path / "job.py").write_text(JOB)
    completed = subprocess.run(
        [sys.executable, "-m", "tfpar.launch", "-n", "2", "--threads-per-worker", "1", "--",
         sys.executable, str(tmp_path / "job.py"), str(tmp_path)],
        cwd=ROOT, env=worker_env(), capture_output=True, text=True, timeout=900,
    )
    assert completed.returncode == 0, completed.stdout[-4000:]
    # Only the chief writes files; the other worker's checkpoint went to a
    # temporary directory.
    assert (tmp_path / "model_0.keras").exists() and not (tmp_path / "model_1.keras").exists()
    for kind in multi_worker_job.KINDS:  # every reference model
        weights = [list(np.load(tmp_path / f"weights_{kind}_{r}.npz").values()) for r in (0, 1)]
        histories = [json.loads((tmp_path / f"history_{kind}_{r}.json").read_text()) for r in (0, 1)]
        for a, b in zip(*weights):
            np.testing.assert_array_equal(a, b)  # replicas stay bit-identical
        expected_weights, expected_history = multi_worker_job.reference(kind, **FIT)
        assert_same_weights(weights[0], expected_weights)
        assert histories[0] == histories[1]
        for key, values in expected_history.items():
            np.testing.assert_allclose(histories[0][key], values, rtol=1e-5, err_msg=f"{kind} {key}")
    micro = [list(np.load(tmp_path / f"weights_micro_{r}.npz").values()) for r in (0, 1)]
    for a, b in zip(*micro):
        np.testing.assert_array_equal(a, b)
    assert_same_weights(micro[0], multi_worker_job.reference("mlp", **FIT)[0])
    expected_weights, expected_history = multi_worker_job.reference("mlp", **FIT)
    spe = [list(np.load(tmp_path / f"weights_spe_{r}.npz").values()) for r in (0, 1)]
    for a, b in zip(*spe):
        np.testing.assert_array_equal(a, b)
    assert_same_weights(spe[0], expected_weights)
    history = json.loads((tmp_path / "history_spe_0.json").read_text())
    for key, values in expected_history.items():
        np.testing.assert_allclose(history[key], values, rtol=1e-5, err_msg=f"steps_per_execution {key}")
    second = (tmp_path / "second_1.txt").read_text()
    assert "already exists" in second and "--compression" in second and "compression='powersgd'" in second


@pytest.mark.parametrize("kwargs, message", [
    (dict(all_reduce="reduce_to_one"), r"all_reduce must be one of \['auto', 'ring', 'nccl'\]"),
    (dict(compression="int4"), r"compression must be one of"),
    (dict(timeout_seconds=0), r"timeout_seconds must be > 0 or None. Received: timeout_seconds=0"),
    (dict(bytes_per_pack=-5), r"bytes_per_pack must be a whole number >= 0"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiWorker(**kwargs)


def test_without_tf_config_says_how_to_start(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG is not set"):
        MultiWorker()


def cluster_of_two(monkeypatch):
    own, peer = peers.free_ports(2)
    monkeypatch.setenv("TF_CONFIG", json.dumps(
        {"cluster": {"worker": [f"localhost:{own}", f"localhost:{peer}"]},
         "task": {"type": "worker", "index": 0}}))
    return peer


def test_created_after_tensorflow_started_says_to_create_it_first(monkeypatch):
    peer = cluster_of_two(monkeypatch)
    with socket.socket() as other_worker:  # the peer is up
        other_worker.bind(("127.0.0.1", peer))
        other_worker.listen()
        with pytest.raises(RuntimeError, match="before any other TensorFlow work"):
            MultiWorker(timeout_seconds=10)


def test_a_missing_worker_is_an_error_not_a_hang(monkeypatch):
    """Worker-count mismatch: TF_CONFIG lists 2 workers, only 1 starts."""
    import time

    peer = cluster_of_two(monkeypatch)
    start = time.monotonic()
    with pytest.raises(ValueError, match=rf"lists 2 workers, but 1 of them did not start within 2 s: \['localhost:{peer}'\]"):
        MultiWorker(timeout_seconds=2)
    assert time.monotonic() - start < 10


HANG = """
import json, os, time
import keras, tfpar
import multi_worker_job as job
rank = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
x, y = job.data()
model = job.model()

class Hang(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if rank == 1 and batch == 2:
            time.sleep(600)  # a stuck peer

tfpar.fit_distributed(model, x, y, batch_size=32, verbose=0, strategy="multi_worker", callbacks=[Hang()])
"""


def test_a_hung_peer_is_an_error_within_the_timeout(tmp_path):
    import time

    (tmp_path / "hang.py").write_text(HANG)
    start = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", "tfpar.launch", "-n", "2", "--threads-per-worker", "1",
         "--timeout-seconds", "5", "--", sys.executable, str(tmp_path / "hang.py")],
        cwd=ROOT, env=worker_env(), capture_output=True, text=True, timeout=900,
    )
    assert completed.returncode != 0
    assert "DeadlineExceeded" in completed.stdout
    assert time.monotonic() - start < 120  # not the 600 s the peer sleeps
