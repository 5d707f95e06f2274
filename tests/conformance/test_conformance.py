"""Every idiom of the catalogue under every strategy, against one device.

For each idiom (`idioms.py`) and strategy: the same model, initial weights
and data order trained with `fit_distributed` must end as single-device
`model.fit` does, as the idiom's `compare` says, with the same History keys
and values, and `model.evaluate` afterwards must agree; or, for a pipeline
and an idiom it cannot run, be refused before training with the idiom's
message and the model left untouched. MultiWorker runs the catalogue's
`MULTI_WORKER` idioms in one two-worker job (`test_multi_worker_conformance`).
"""

import functools
import json
import os
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from tfpar.strategies import DataParallel, GPipe, ModelSplit, PipelineStrategy
import tfpar

import idioms
from conftest import weights_of

STRATEGIES = {
    "DataParallel(2)": lambda: DataParallel(2),
    "DataParallel(2, microbatches=2)": lambda: DataParallel(2, microbatches=2),
    "DataParallel(2, shard=optimizer)": lambda: DataParallel(2, shard="optimizer"),
    "DataParallel(2, shard=gradients)": lambda: DataParallel(2, shard="gradients"),
    "ModelSplit(2)": lambda: ModelSplit(2),
    "GPipe(2, M=2, gpipe)": lambda: GPipe(2, microbatches=2),
    "GPipe(2, M=4, 1f1b, remat)": lambda: GPipe(2, microbatches=4, schedule="1f1b", rematerialize=True),
    "GPipe(2x2, M=2, zb1)": lambda: GPipe(4, microbatches=2, data_parallel=2, schedule="zb1"),
}
BY_NAME = {idiom.name: idiom for idiom in idioms.IDIOMS}
# Dropout masks and per-replica / per-micro-batch BatchNormalization
# statistics legitimately differ from one device. Measured on this
# catalogue (tools/conformance_table.py): weight travel 0.92-1.00x of one
# device's. The bounds leave room for other seeds; a run that trains
# nothing moves 0x and fails.
CURVE_RTOL, TRAVEL_RATIO = 0.08, 2.0


def initial_weights(idiom) -> list:
    model = idiom.build()
    if not model.built:  # built by fit from the first batch
        model.build((None, *np.shape(idiom.data()[0])[1:]))
    return weights_of(model)


@functools.lru_cache(maxsize=None)
def reference(name):
    """Single-device model.fit: initial and final weights, History, evaluate."""
    idiom = BY_NAME[name]
    x, y, extra = idiom.data()
    model = idiom.build()
    history = model.fit(x, y, **idiom.fit_kwargs(extra))
    return initial_weights(idiom), weights_of(model), history.history, evaluation(model, x, y)


evaluation = idioms.evaluate


def travel(weights, start) -> float:
    return max(float(np.max(np.abs(w - s))) for w, s in zip(weights, start))


def unnumbered(history: dict) -> dict:
    # A metric object made without a name is numbered per process (auc,
    # auc_1, ...): each build of an idiom gets another number.
    return {re.sub(r"_\d+$", "", key): values for key, values in history.items()}


def check_same_training(idiom, weights, history: dict, evaluated: dict, replicas: int = 1) -> None:
    start, expected, expected_history, expected_evaluation = reference(idiom.name)
    assert travel(expected, start) > 1e-3, "the one-device run itself trains nothing"
    history, expected_history = unnumbered(history), unnumbered(expected_history)
    assert sorted(history) == sorted(expected_history)
    if idiom.loss_per_replica:
        history["loss"] = np.multiply(history["loss"], replicas)
    if idiom.compare == "exact":
        for actual, want in zip(weights, expected):
            np.testing.assert_allclose(actual, want, rtol=1e-5, atol=idiom.atol)
        np.testing.assert_allclose(travel(weights, start), travel(expected, start), rtol=1e-2)
        for key, values in expected_history.items():
            np.testing.assert_allclose(history[key], values, rtol=1e-3, atol=idiom.atol, err_msg=key)
        for key, value in unnumbered(expected_evaluation).items():
            np.testing.assert_allclose(unnumbered(evaluated)[key], value, rtol=1e-3, atol=idiom.atol,
                                       err_msg=key)
    else:
        ratio = travel_ratio(idiom, weights)
        assert 1 / TRAVEL_RATIO < ratio < TRAVEL_RATIO, f"moved {ratio:.2f}x as far as one device"
        np.testing.assert_allclose(history["loss"], expected_history["loss"], rtol=CURVE_RTOL)


def travel_ratio(idiom, weights) -> float:
    """How far the trainable weights moved, over how far one device moved
    them. Trainable only: a pipeline updates BatchNormalization's moving
    statistics once per micro-batch (documented), so those travel further
    by design."""
    start, expected, _, _ = reference(idiom.name)
    model = idiom.build()
    if model.built:
        trainable = [v.trainable for v in model.weights]
        weights, start, expected = ([w for w, t in zip(ws, trainable) if t]
                                    for ws in (weights, start, expected))
    return travel(weights, start) / travel(expected, start)


MICRO = "DataParallel(2, microbatches=2)"
# The gpipe schedule runs the very tasks of 1f1b (each micro-batch's
# forward, backward and loss, the same accumulation) in another order, so
# an idiom that trains under 1f1b and zb1 trains under it: the suite leaves
# its column to test_pipeline_contract (every schedule on every reference
# model) and tools/conformance_table.py, and saves a sixth of its time.
SUITE_SKIPS = ("GPipe(2, M=2, gpipe)",)
# ZeRO-1 sums the gradients by DataParallel(2)'s all-reduce and updates
# each share by the very code ZeRO-2 runs after its reduce-scatter (the
# owner's update, the all-gather): an idiom exact under both columns is
# exact under it. The suite runs its column only for the idioms ZeRO-2
# refuses (Keras' gradient_accumulation_steps); tools/conformance_table.py
# and tests/replication/test_optimizer_shards.py run it whole.
ZERO1 = "DataParallel(2, shard=optimizer)"
# Every (idiom, strategy) pair but the per-sample idioms' micro-batch one
# (Idiom.per_sample). One idiom's strategies share a test process
# (pytest-xdist's loadgroup): its one-device reference is trained once.
PAIRS = [pytest.param(name, label, marks=pytest.mark.xdist_group(name), id=f"{name}-{label}")
         for name, idiom in BY_NAME.items() for label in STRATEGIES
         if label not in SUITE_SKIPS and not (label == MICRO and idiom.per_sample)
         and not (label == ZERO1 and not idiom.accumulates)]


@pytest.mark.parametrize("name, label", PAIRS)
def test_idiom_trains_like_one_device(name, label):
    idiom = BY_NAME[name]
    strategy = STRATEGIES[label]()
    x, y, extra = idiom.data()
    model = idiom.build()
    refusal = idiom.pipelines if isinstance(strategy, PipelineStrategy) else None
    if not isinstance(strategy, PipelineStrategy) and strategy.microbatches > 1 \
            and idiom.own_train_step:
        refusal = r"overrides \['train_step'\], which tfpar runs as it is and cannot cut"
    if not isinstance(strategy, PipelineStrategy) and strategy.shard == "gradients" and idiom.accumulates:
        refusal = r"shard='gradients' with gradient_accumulation_steps=2: Keras accumulates"
    if refusal:
        before = weights_of(model)
        with pytest.raises(ValueError, match=refusal):
            tfpar.fit_distributed(model, x, y, strategy=strategy, **idiom.fit_kwargs(extra))
        for a, b in zip(weights_of(model), before):
            np.testing.assert_array_equal(a, b)
        return
    history = tfpar.fit_distributed(model, x, y, strategy=strategy, **idiom.fit_kwargs(extra))
    assert history.model is model
    replicas = getattr(strategy, "num_replicas_in_sync", getattr(strategy, "data_parallel", 1))
    check_same_training(idiom, weights_of(model), history.history, evaluation(model, x, y), replicas)


ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_multi_worker_conformance(tmp_path):
    """The catalogue's MULTI_WORKER idioms in one job of two launched workers."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join(
        [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "conformance")]))
    completed = subprocess.run(
        [sys.executable, "-m", "tfpar.launch", "-n", "2", "--threads-per-worker", "1", "--",
         sys.executable, str(pathlib.Path(__file__).with_name("multi_worker_conformance.py")),
         str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-2000:]
    for index, idiom in enumerate(idioms.MULTI_WORKER):
        results = [json.loads((tmp_path / f"{index}_{rank}.json").read_text()) for rank in (0, 1)]
        weights = [list(np.load(tmp_path / f"{index}_{rank}.npz").values()) for rank in (0, 1)]
        # Workers stay identical; BatchNormalization's moving statistics
        # follow each worker's own share of the batch, as in tf.distribute.
        trainable = [v.trainable for v in idiom.build().weights] if idiom.compare == "curves" else None
        for index_w, (a, b) in enumerate(zip(*weights)):
            if trainable is None or trainable[index_w]:
                np.testing.assert_array_equal(a, b, err_msg=idiom.name)
        check_same_training(idiom, weights[0], results[0]["history"], results[0]["evaluate"], replicas=2)
        if index == 0:  # float32 round-off
            for result in results:
                assert result["inference"]["predict"] < 1e-5 and result["inference"]["evaluate"] < 1e-5
