"""A pipeline replica per worker (data_parallel="workers"): 2 launched
workers x 2 stages each train exactly like one process, and only the chief
writes files. Tolerance: float32 round-off (conftest.assert_same_weights).
"""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

import multi_worker_job
from tfpar.strategies import GPipe

from conftest import assert_same_weights
from test_multi_worker import ROOT, worker_env

FIT = dict(batch_size=32, epochs=2, shuffle=False, verbose=0, validation_split=0.25)
JOB = f"""
import json, os, sys
import keras
import numpy as np
import tfpar  # launched: makes the MultiWorker strategy (2 logical CPUs) first
import multi_worker_job as job

rank = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
for kind in ("mlp", "cnn"):
    callbacks = []
    if kind == "mlp":
        callbacks.append(keras.callbacks.ModelCheckpoint(os.path.join(sys.argv[1], f"model_{{rank}}.keras")))
    model = job.model(kind=kind)
    strategy = tfpar.strategies.GPipe(2, microbatches=2, data_parallel="workers")
    history = tfpar.fit_distributed(model, *job.data(kind), strategy=strategy, callbacks=callbacks,
                                    **{FIT!r})
    np.savez(os.path.join(sys.argv[1], f"weights_{{kind}}_{{rank}}.npz"), *model.get_weights())
    with open(os.path.join(sys.argv[1], f"history_{{kind}}_{{rank}}.json"), "w") as f:
        json.dump(history.history, f)
    if kind == "mlp":  # pipelined inference across the workers, against one device
        x, y = job.data(kind)
        predicted = tfpar.predict_distributed(model, x, strategy=strategy, batch_size=30, verbose=0)
        evaluated = tfpar.evaluate_distributed(model, x, y, strategy=strategy, batch_size=30, verbose=0)
        with open(os.path.join(sys.argv[1], f"inference_{{rank}}.json"), "w") as f:
            json.dump({{"predict": float(np.abs(predicted - model.predict(x, verbose=0)).max()),
                       "evaluate": float(np.abs(np.subtract(evaluated, model.evaluate(
                           x, y, batch_size=30, verbose=0))).max())}}, f)
print("devices", strategy.devices)
tfpar.describe_placement(job.model(), strategy)

# Exact resume: both workers stop after step 6 of 12 (the chief has saved
# step 4), then a fresh model resumes from the checkpoint.
class Stop(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        self.seen = getattr(self, "seen", 0) + 1
        if self.seen == 6:
            raise InterruptedError("stopped on purpose")

ckpt = os.path.join(sys.argv[1], "ckpt")
strategy = lambda: tfpar.strategies.GPipe(2, microbatches=2, data_parallel="workers")
try:
    tfpar.fit_distributed(job.model(), *job.data(), strategy=strategy(), callbacks=[Stop()],
                          checkpoint_dir=ckpt, checkpoint_every=4, **{FIT!r})
except InterruptedError:
    print("stopped at step", tfpar.cluster.checkpoint.load(ckpt).step, flush=True)
model = job.model()
tfpar.fit_distributed(model, *job.data(), strategy=strategy(), checkpoint_dir=ckpt, checkpoint_every=4,
                      **{FIT!r})
np.savez(os.path.join(sys.argv[1], f"weights_resumed_{{rank}}.npz"), *model.get_weights())
"""


def test_two_workers_each_a_two_stage_pipeline_train_like_one_process(tmp_path):
    (tmp_path / "job.py").write_text(JOB)
    completed = subprocess.run(
        [sys.executable, "-m", "tfpar.launch", "-n", "2", "--threads-per-worker", "1",
         "--virtual-devices", "2", "--timeout-seconds", "120", "--",
         sys.executable, str(tmp_path / "job.py"), str(tmp_path)],
        cwd=ROOT, env=worker_env(), capture_output=True, text=True, timeout=900,
    )
    assert completed.returncode == 0, completed.stdout[-4000:]
    # Each worker's stages on its own two devices.
    assert "task:1/device:CPU:1" in completed.stdout and "task:0/device:CPU:0" in completed.stdout
    # Each worker describes its own replica, numbered by its task.
    assert re.search(r"\[worker 1\] 1 +1 +/job:worker/replica:0/task:1/device:CPU:1", completed.stdout)
    assert (tmp_path / "model_0.keras").exists() and not (tmp_path / "model_1.keras").exists()
    for rank in (0, 1):  # float32 round-off; the last batch of 30 is 16 rows
        inference = json.loads((tmp_path / f"inference_{rank}.json").read_text())
        assert inference["predict"] < 1e-5 and inference["evaluate"] < 1e-5, inference
    for kind in ("mlp", "cnn"):
        weights = [list(np.load(tmp_path / f"weights_{kind}_{r}.npz").values()) for r in (0, 1)]
        histories = [json.loads((tmp_path / f"history_{kind}_{r}.json").read_text()) for r in (0, 1)]
        for a, b in zip(*weights):
            np.testing.assert_array_equal(a, b)  # the replicas stay bit-identical
        expected_weights, expected_history = multi_worker_job.reference(kind, **FIT)
        assert_same_weights(weights[0], expected_weights)
        assert max(np.abs(a - b).max() for a, b in zip(weights[0], multi_worker_job.model(kind=kind).get_weights())) > 1e-3
        assert histories[0] == histories[1]  # global metrics, the same on both
        for key, values in expected_history.items():
            np.testing.assert_allclose(histories[0][key], values, rtol=1e-5, err_msg=f"{kind} {key}")
    assert "[worker 0] stopped at step 4" in completed.stdout
    expected_weights, _ = multi_worker_job.reference("mlp", **FIT)
    for rank in (0, 1):
        assert_same_weights(list(np.load(tmp_path / f"weights_resumed_{rank}.npz").values()), expected_weights)


def test_workers_outside_a_multi_worker_job_is_a_clear_error():
    with pytest.raises(ValueError, match=r'data_parallel="workers" trains one pipeline replica per worker.*'
                                         r"python -m tfpar.launch.*Received: TF_CONFIG="):
        GPipe(2, data_parallel="workers")


def test_the_last_batch_must_give_every_worker_a_sample():
    from tfpar.pipeline import worker_shards

    assert worker_shards.rows(10, 4, 2, 0).tolist() == [0, 1, 4, 5, 8]  # the last batch: 2 rows
    with pytest.raises(ValueError, match=r"last batch holds 1 sample\(s\), fewer than the 2 workers"):
        worker_shards.rows(9, 4, 2, 1)
    # Together the workers take every row exactly once, batch by batch.
    parts = [worker_shards.rows(23, 8, 2, w) for w in (0, 1)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(23))
