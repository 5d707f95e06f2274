"""Twins of the caller's model for the pipelines (`tfpar/core/replica.py`)."""

import keras
import numpy as np
import pytest

from tfpar.core import replica
from tfpar.strategies import GPipe, ModelSplit
import tfpar

from conftest import assert_same_weights, weights_of

import test_in_place


def test_a_lambda_layer_is_cloned_with_its_own_function():
    # Keras refuses to load a Python lambda from a config (safe mode).
    layer = keras.layers.Lambda(lambda t: t * 3.0, output_shape=(4,), name="triple")
    twin = replica.clone_layer(layer)
    assert twin is not layer and twin.function is layer.function and twin.name == "triple"
    np.testing.assert_array_equal(twin(np.ones((1, 4), "float32")), np.full((1, 4), 3.0))


@pytest.mark.parametrize("make", [lambda: ModelSplit(2), lambda: GPipe(2, microbatches=2)],
                         ids=["split", "gpipe"])
def test_a_model_with_a_lambda_layer_trains_pipelined_exactly(make):
    x, y = test_in_place.data()
    reference = test_in_place.compiled(test_in_place.with_lambda)
    start = weights_of(reference)
    reference.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    model = test_in_place.compiled(test_in_place.with_lambda)
    tfpar.fit_distributed(model, x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, strategy=make())
    assert_same_weights(weights_of(model), weights_of(reference), atol=1e-5)  # Adam: conftest.ADAM_ATOL
    assert max(np.abs(a - b).max() for a, b in zip(weights_of(model), start)) > 1e-2
