"""Clipping and gradient accumulation act on the whole batch's gradient.

The conformance catalogue compares clipped and accumulating optimizers
with one device under every strategy (`tests/conformance/idioms.py`,
"optimizer recipes"). Here, what the catalogue cannot compare exactly: with
compressed exchanges (fp16, bf16, PowerSGD) the summed gradient is not one
device's, but the clip must still act on it after decompression. One SGD
step with `global_clipnorm=c` on a gradient whose norm is above c then
moves the weights by exactly lr * c, whatever the compression; clipping
each replica's share before the sum (Keras' own order, and native
tf.distribute's) does not.
"""

import keras
import numpy as np
import pytest

from tfpar.core import internals
from tfpar.strategies import DataParallel, PowerSGD
import tfpar

from conftest import weights_of

LR, CLIP = 1.0, 0.05


def wide_model(optimizer) -> keras.Model:
    # 64 x 64 matrices: PowerSGD compresses them (2 x 64 x 2 < 64 x 64).
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(4, activation="softmax")])
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    return model


def step_norm(strategy) -> float:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(32, 64)).astype("float32"), rng.integers(0, 4, 32)
    model = wide_model(keras.optimizers.SGD(LR, global_clipnorm=CLIP))
    before = weights_of(model)
    tfpar.fit_distributed(model, x, y, batch_size=32, epochs=1, shuffle=False, verbose=0,
                          strategy=strategy)
    return float(np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(weights_of(model), before))))


@pytest.mark.parametrize("compression", [None, "fp16", "bf16", PowerSGD(rank=2)],
                         ids=["none", "fp16", "bf16", "powersgd"])
def test_one_step_moves_by_exactly_the_clip(compression):
    # float32 round-off of a norm of ~8,500 weights; bf16 rounds the
    # summed gradient, not its norm after the clip.
    np.testing.assert_allclose(step_norm(DataParallel(2, compression=compression)), LR * CLIP,
                               rtol=1e-5)


def test_the_gradient_is_above_the_clip():
    # Otherwise the test above would pass without clipping.
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(32, 64)).astype("float32"), rng.integers(0, 4, 32)
    model = wide_model(keras.optimizers.SGD(LR))
    before = weights_of(model)
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    moved = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(weights_of(model), before)))
    assert moved > 5 * LR * CLIP


def test_the_twin_optimizer_serializes_as_the_users_class():
    optimizer = keras.optimizers.AdamW(0.01, global_clipnorm=1.0, gradient_accumulation_steps=2)
    twin = internals.summed_update_optimizer(optimizer)
    assert isinstance(twin, keras.optimizers.AdamW) and type(twin) is not keras.optimizers.AdamW
    assert twin.get_config() == optimizer.get_config()
    config = keras.optimizers.serialize(twin)
    assert type(keras.optimizers.deserialize(config)) is keras.optimizers.AdamW


def test_a_loss_scale_optimizer_keeps_its_wrapper():
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1, clipnorm=1.0),
                                                    initial_scale=256.0)
    twin = internals.summed_update_optimizer(optimizer)
    assert isinstance(twin, keras.optimizers.LossScaleOptimizer)
    assert twin.get_config()["initial_scale"] == 256.0
    assert isinstance(twin.inner_optimizer, keras.optimizers.SGD)
    assert type(twin.inner_optimizer) is not keras.optimizers.SGD
    assert twin.inner_optimizer.clipnorm == 1.0
