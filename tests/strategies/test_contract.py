"""The contract every strategy meets, checked the same way for each.

Exactness: the same model, initial weights and data order trained under the
strategy ends with the weights, optimizer state and loss history of
single-device `model.fit` at the same global batch (tolerance: see
`conftest.assert_same_weights`). The model includes a synchronized
BatchNormalization, whose statistics must then span the global batch.
"""

import functools

import numpy as np
import pytest
import tensorflow as tf

import tfpar

from conftest import ADAM_ATOL, DEVICES, assert_same_weights, build_mlp, compile_model, make_data, weights_of

STRATEGIES = {
    "name mirrored": lambda: "mirrored",
    "DataParallel(4)": lambda: tfpar.strategies.DataParallel(4),
    "DataParallel(2, ring)": lambda: tfpar.strategies.DataParallel(2, all_reduce="ring"),
    "tf MirroredStrategy": lambda: tf.distribute.MirroredStrategy(DEVICES),
    "tf OneDeviceStrategy": lambda: tf.distribute.OneDeviceStrategy("/cpu:1"),
}
FIT = dict(batch_size=32, epochs=2, shuffle=False, verbose=0)  # 2 x 8 steps


@functools.lru_cache(maxsize=None)
def reference(optimizer):
    """Single-device model.fit: weights, optimizer state, loss history."""
    x, y = make_data()
    model = compile_model(build_mlp(batch_norm=True), optimizer)
    history = model.fit(x, y, **FIT)
    return weights_of(model), [np.array(v) for v in model.optimizer.variables], history.history


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("strategy", STRATEGIES.values(), ids=STRATEGIES.keys())
def test_strategy_trains_exactly_like_one_device(strategy, optimizer):
    x, y = make_data()
    model = compile_model(build_mlp(batch_norm=True), optimizer)
    history = tfpar.fit_distributed(model, x, y, strategy=strategy(), **FIT)

    weights, optimizer_state, losses = reference(optimizer)
    atol = ADAM_ATOL if optimizer == "adam" else 1e-6
    assert_same_weights(weights_of(model), weights, atol=atol)
    assert_same_weights([np.array(v) for v in model.optimizer.variables], optimizer_state, atol=atol)
    assert int(model.optimizer.iterations) == 16
    assert history.model is model
    assert history.epoch == [0, 1]
    np.testing.assert_allclose(history.history["loss"], losses["loss"], rtol=1e-5)
    np.testing.assert_allclose(history.history["accuracy"], losses["accuracy"])
