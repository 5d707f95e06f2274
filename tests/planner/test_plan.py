"""tfpar.plan on real measurements, strategy="auto", and the binary's
--strategy=auto: the planner's choice trains exactly like one device."""

import keras
import numpy as np
import pytest
from absl import flags

import tfpar
from tfpar import train
from tfpar.bench import __main__ as bench

from conftest import ADAM_ATOL, assert_same_weights, weights_of

FIT = dict(batch_size=64, epochs=2, shuffle=False, verbose=0)


def softmax_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(4, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def data(samples=256):
    rng = np.random.default_rng(0)
    return rng.normal(size=(samples, 16)).astype("float32"), rng.integers(0, 4, size=samples)


def test_plan_predicts_every_layout_and_chooses_a_feasible_one():
    plan = tfpar.plan(softmax_model(), batch_size=64)
    names = [c.name for c in plan.candidates]
    assert {"one device", "DataParallel(2)", "DataParallel(4)", "ModelSplit(2)",
            "GPipe(2, M=8, 1f1b)", "GPipe(2x2, M=2, zb1, remat)"} <= set(names)
    assert plan.chosen is plan.candidates[0] and plan.chosen.feasible
    assert plan.chosen.reason.startswith("fastest feasible")
    for candidate in plan.candidates:
        if candidate.feasible:
            assert 0 < candidate.predicted_step_seconds < 10
            assert len(candidate.predicted_peak_bytes) == len(candidate.options["devices"])
    rejected = {c.name: c.reason for c in plan.candidates if not c.feasible}
    assert rejected["DataParallel(3)"] == "batch_size 64 is not divisible by 3 replicas"
    assert str(plan).splitlines()[3].startswith("*  " + plan.chosen.name)


def wide_model() -> keras.Model:
    """Two 256 x 256 layers hold most of the weights: half of them fits
    where all of them does not."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,))] + [keras.layers.Dense(256, activation="relu")
                                                      for _ in range(3)]
                             + [keras.layers.Dense(4, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_a_memory_limit_rules_out_what_does_not_fit_and_the_choice_trains_exactly():
    model = wide_model()
    weights = sum(w.size for w in model.get_weights()) * 4
    # One device holds the weights, their gradients and Adam's two slots:
    # 4x the weights. The limit, 3x, leaves room for half the model only.
    plan = tfpar.plan(model, batch_size=64, memory_limit=int(weights * 3))
    by_name = {c.name: c for c in plan.candidates}
    assert not by_name["one device"].feasible
    assert by_name["one device"].reason.startswith("needs ")
    assert by_name["one device"].reason.endswith(f"on /device:CPU:0, limit {weights * 3 / 2**20:.1f} MiB")
    assert not by_name["DataParallel(2)"].feasible
    assert plan.chosen.kind in ("ModelSplit", "GPipe")
    x, y = data()
    reference = wide_model()
    start = weights_of(reference)
    reference.fit(x, y, **FIT)
    tfpar.fit_distributed(model, x, y, strategy=plan.chosen.strategy, **FIT)
    assert_same_weights(weights_of(model), weights_of(reference), atol=ADAM_ATOL)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(weights_of(reference), start)) > 1e-3


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match=r"memory_limit must be bytes per device.*memory_limit=\[1, 2\]"):
        tfpar.plan(softmax_model(), 64, memory_limit=[1, 2])
    with pytest.raises(ValueError, match=r"device_speeds=\[1\]"):
        tfpar.plan(softmax_model(), 64, device_speeds=[1])


def test_auto_trains_exactly_like_one_device(capsys):
    x, y = data()
    reference = softmax_model()
    start = weights_of(reference)
    expected = reference.fit(x, y, **FIT).history
    model = softmax_model()
    history = tfpar.fit_distributed(model, x, y, strategy="auto", **{**FIT, "verbose": 2}).history
    assert "tfpar strategy='auto': " in capsys.readouterr().out
    assert_same_weights(weights_of(model), weights_of(reference), atol=ADAM_ATOL)
    # A run that trains nothing moves 0 (Adam at 1e-3 over 8 steps: ~8e-3).
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(weights_of(reference), start))
    assert moved > 1e-3
    np.testing.assert_allclose(history["loss"], expected["loss"], rtol=1e-4)


def test_the_binary_prints_the_plan_first(capsys):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["tfpar.train", "--strategy=auto", "--epochs=1", "--save="])
    train.main(["tfpar.train"])
    out = capsys.readouterr().out
    assert out.index("tfpar plan: batch_size 64") < out.index("strategy: ") < out.index("held-out accuracy")


def test_the_plan_benchmark_compares_predicted_and_measured():
    result = bench.run(["plan", "--models=mlp", "--max_candidates=2", "--steps=3", "--batch_size=32"])
    assert result["models"]["mlp"]["measured"] == 2
    assert 0 <= result["time_error"] < 10 and result["chosen_vs_best"] >= 1.0
