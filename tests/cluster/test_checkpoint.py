"""Fault tolerance: kill a worker mid-epoch, start the job again, and it
resumes from the last checkpoint to the weights of an uninterrupted run."""

import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

import multi_worker_job
from tfpar.cluster import checkpoint
import tfpar

from conftest import assert_same_weights, build_mlp, compile_model, make_data, weights_of

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIT = dict(batch_size=32, epochs=3, shuffle=False, verbose=0, validation_split=0.25)
JOB = f"""
import json, os, sys
import numpy as np
import keras
import tfpar
import multi_worker_job as job

out, kill_at = sys.argv[1], int(sys.argv[2])
rank = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
model = job.model()
state = tfpar.cluster.checkpoint.load(os.path.join(out, "ckpt"))
print("start step", state.step if state else 0, flush=True)

class Crash(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.step = state.step if state else 0
    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if rank == 1 and self.step == kill_at:
            os._exit(9)  # a killed worker: no cleanup, no goodbye

tfpar.fit_distributed(model, *job.data(), strategy="multi_worker", callbacks=[Crash()],
                      checkpoint_dir=os.path.join(out, "ckpt"), checkpoint_every=4, **{FIT!r})
np.savez(os.path.join(out, f"weights_{{rank}}.npz"), *model.get_weights())
"""


def launch(tmp_path, kill_at):
    env = multi_worker_job.worker_env()
    return subprocess.run(
        [sys.executable, "-m", "tfpar.launch", "-n", "2", "--threads-per-worker", "1", "--",
         sys.executable, str(tmp_path / "job.py"), str(tmp_path), str(kill_at)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )


def test_killed_worker_resumes_to_the_uninterrupted_result(tmp_path):
    (tmp_path / "job.py").write_text(JOB)
    crashed = launch(tmp_path, kill_at=14)  # 6 steps per epoch: mid-epoch 3
    assert crashed.returncode == 9, crashed.stdout[-3000:]
    assert checkpoint.load(str(tmp_path / "ckpt")).step == 12
    resumed = launch(tmp_path, kill_at=0)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "[worker 0] start step 12" in resumed.stdout  # redoes 2 <= 4 steps
    assert not (tmp_path / "ckpt" / "position.json").exists()  # cleared when done

    expected, _ = multi_worker_job.reference(**FIT)
    for rank in (0, 1):
        weights = list(np.load(tmp_path / f"weights_{rank}.npz").values())
        assert_same_weights(weights, expected)


def test_resume_in_one_process_matches_and_history_is_joined(tmp_path):
    x, y = make_data(96)
    directory = str(tmp_path / "ckpt")
    reference = compile_model(build_mlp(), "adam")
    reference.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)

    class Stop(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 3:  # step 10 of 12: the checkpoint of step 9 survives
                raise KeyboardInterrupt

    first = compile_model(build_mlp(), "adam")
    with pytest.raises(KeyboardInterrupt):
        tfpar.fit_distributed(first, x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
                              strategy=tfpar.strategies.DataParallel(2), callbacks=[_AfterSteps(9, Stop())],
                              checkpoint_dir=directory, checkpoint_every=3)
    assert checkpoint.load(directory).step == 9
    model = compile_model(build_mlp(), "adam")
    history = tfpar.fit_distributed(model, x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
                                    strategy=tfpar.strategies.DataParallel(2),
                                    checkpoint_dir=directory, checkpoint_every=3)
    assert_same_weights(weights_of(model), weights_of(reference))
    assert history.epoch == [1]  # the resumed run finished epoch 1 only
    np.testing.assert_allclose(int(model.optimizer.iterations.numpy()), 12)
    assert checkpoint.load(directory) is None


class _AfterSteps(keras.callbacks.Callback):
    """Runs `inner`'s batch hook only once `steps` steps have passed."""

    def __init__(self, steps, inner):
        super().__init__()
        self.steps, self.inner, self.seen = steps, inner, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen > self.steps:
            self.inner.on_train_batch_end(batch, logs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(checkpoint_dir="/tmp/x"), r"needs both checkpoint_dir and checkpoint_every"),
    (dict(checkpoint_dir="/tmp/x", checkpoint_every=0), r"checkpoint_every=0"),
])
def test_checkpoint_arguments(kwargs, message):
    x, y = make_data(32)
    with pytest.raises(ValueError, match=message):
        tfpar.fit_distributed(compile_model(build_mlp()), x, y, **kwargs)


def test_checkpoint_needs_arrays(tmp_path):
    import tensorflow as tf

    x, y = make_data(32)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    with pytest.raises(ValueError, match="needs array inputs.*DatasetV2|needs array inputs"):
        tfpar.fit_distributed(compile_model(build_mlp()), dataset, checkpoint_dir=str(tmp_path),
                              checkpoint_every=2)


def test_checkpointing_with_shuffle_warns_that_a_resume_is_not_exact(tmp_path):
    x, y = make_data(32)
    model = compile_model(build_mlp())
    with pytest.warns(UserWarning, match=r"resumes exactly only with shuffle=False"):
        tfpar.fit_distributed(model, x, y, batch_size=16, epochs=1, verbose=0,  # shuffle: Keras' default
                              checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=1)
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tfpar.fit_distributed(compile_model(build_mlp()), x, y, batch_size=16, epochs=1, verbose=0,
                              shuffle=False, checkpoint_dir=str(tmp_path / "ckpt2"), checkpoint_every=1)
    assert not [w for w in caught if "resumes exactly" in str(w.message)]  # shuffle=False: exact
