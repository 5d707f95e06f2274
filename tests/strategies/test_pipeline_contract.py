"""ModelSplit and GPipe train exactly like one device.

Three models: an MLP, a residual CNN, and a functional model whose skip
connection crosses a stage boundary and that takes two inputs. Each is
trained N steps under ModelSplit and GPipe (M in 1, 2, 4, 8; both schedules;
rematerialisation on and off) from the same weights and data order as
single-device model.fit; weights must agree to float32 round-off (see
conftest.assert_same_weights). None of them has BatchNormalization or
dropout, whose per-micro-batch behaviour is documented to differ.
"""

import functools

import keras
import numpy as np
import pytest

from tfpar.strategies import GPipe, ModelSplit
import tfpar

from conftest import assert_same_weights, weights_of


def skip_model():
    """Two inputs; `early` skips past the middle layers into the head."""
    a = keras.Input((6,), name="a")
    b = keras.Input((4,), name="b")
    early = keras.layers.Dense(12, activation="tanh", name="early")(a)
    h = keras.layers.Dense(12, activation="relu", name="mid1")(early)
    h = keras.layers.Dense(12, activation="relu", name="mid2")(h)
    side = keras.layers.Dense(12, name="side")(b)
    h = keras.layers.Add(name="join")([h, early, side])
    out = keras.layers.Dense(3, name="head")(h)
    return keras.Model([a, b], out, name="skip")


MODELS = {
    "mlp": (lambda: tfpar.models.mlp(12, 3, hidden=(16, 16, 8)), lambda r: r.normal(size=(64, 12))),
    "cnn": (lambda: tfpar.models.residual_cnn((6, 6, 2), 3, filters=(4, 8), batch_norm=False),
            lambda r: r.normal(size=(64, 6, 6, 2))),
    "skip": (skip_model, lambda r: [r.normal(size=(64, 6)), r.normal(size=(64, 4))]),
}


def build(name, optimizer):
    keras.utils.set_random_seed(3)
    model = MODELS[name][0]()
    opt = keras.optimizers.SGD(0.05, momentum=0.9) if optimizer == "sgd" else keras.optimizers.Adam(0.01)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def data(name):
    rng = np.random.default_rng(5)
    x = MODELS[name][1](rng)
    x = [v.astype("float32") for v in x] if isinstance(x, list) else x.astype("float32")
    return x, rng.integers(0, 3, size=64).astype("int32")


FIT = dict(batch_size=16, epochs=2, shuffle=False, verbose=0)  # 8 steps


@functools.lru_cache(maxsize=None)
def reference(name, optimizer):
    model = build(name, optimizer)
    history = model.fit(*data(name), **FIT)
    return weights_of(model), history.history["loss"]


# Every M, each with every schedule or rematerialisation on and off across
# neighbouring M (the conformance catalogue adds every idiom at M = 1, 2, 4).
CASES = [("split", 1, "gpipe", False)] + [
    ("gpipe", m, schedule, remat)
    for m, schedule, remat in [(1, "gpipe", False), (2, "gpipe", True), (2, "1f1b", False),
                               (4, "gpipe", False), (4, "1f1b", True), (4, "zb1", False),
                               (8, "gpipe", True), (8, "1f1b", False), (8, "zb1", True)]
]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("kind, microbatches, schedule, remat", CASES,
                         ids=[f"{k}-M{m}-{s}-{'remat' if r else 'keep'}" for k, m, s, r in CASES])
def test_pipeline_trains_exactly_like_one_device(name, kind, microbatches, schedule, remat):
    devices = 3 if name == "cnn" else 2
    if kind == "split":
        strategy = ModelSplit(devices)
    else:
        strategy = GPipe(devices, microbatches=microbatches, schedule=schedule, rematerialize=remat)
    optimizer = "adam" if microbatches in (2, 8) else "sgd"
    model = build(name, optimizer)
    history = tfpar.fit_distributed(model, *data(name), strategy=strategy, **FIT)
    weights, losses = reference(name, optimizer)
    assert_same_weights(weights_of(model), weights)
    np.testing.assert_allclose(history.history["loss"], losses, rtol=1e-5)
    assert history.model is model
