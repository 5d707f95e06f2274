"""Pipelines train the caller's own layers where a config does not round-trip.

A pipeline rebuilds the caller's model as stage sub-models on their
devices, each layer from its config. A custom layer whose `get_config()`
forgets a constructor argument (or a nested model that has none) cannot be
rebuilt; plain `model.fit` never notices. Under ModelSplit and GPipe such a
layer is trained itself, its variables moved to its stage's device and back
(`tfpar.core.in_place.OwnLayers`): exact against one device, and the caller's
model ends as `model.fit` leaves it (plain variables, `model.save` and a
later plain `fit` working). A pipeline trained data parallel needs a copy
per replica, so there the layer is refused before training, by name.
"""

import keras
import numpy as np
import pytest

from tfpar.strategies import GPipe, ModelSplit
import tfpar

from conftest import ADAM_ATOL, assert_same_weights, weights_of


class Scale(keras.layers.Layer):
    """A projection times a constant; get_config() forgets `factor`, so
    from_config raises TypeError."""

    def __init__(self, units, factor, **kwargs):
        super().__init__(**kwargs)
        self.units, self.factor = units, factor

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), initializer="glorot_uniform")

    def call(self, inputs):
        return keras.ops.matmul(inputs, self.kernel) * self.factor

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class Block(keras.Model):
    """A functional model subclass with constructor arguments and no
    get_config(), used as a nested model."""

    def __init__(self, width):
        inputs = keras.Input((width,))
        hidden = keras.layers.Dense(width, activation="tanh")(inputs)
        super().__init__(inputs, keras.layers.Dense(width)(hidden) + inputs)


def with_scale():
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, activation="tanh")(inputs)
    x = Scale(8, 0.5)(x)
    x = keras.layers.Dense(8, activation="tanh")(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


def with_block():
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, activation="tanh")(inputs)
    x = Block(8)(x)
    x = keras.layers.Dense(8, activation="tanh")(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


def compiled(build):
    keras.utils.set_random_seed(0)
    model = build()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    return model


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(32, 6)).astype("float32"), rng.integers(0, 3, 32)


FIT = dict(batch_size=16, shuffle=False, verbose=0)


def test_the_layers_do_not_round_trip():
    # What makes the models of this file worth testing.
    with pytest.raises(TypeError, match="factor"):
        Scale.from_config(Scale(8, 0.5).get_config())
    with pytest.raises(Exception):
        keras.models.clone_model(compiled(with_block))


@pytest.mark.parametrize("build", [with_scale, with_block], ids=["layer", "nested_model"])
@pytest.mark.parametrize("make", [lambda: ModelSplit(2),
                                  lambda: GPipe(2, microbatches=2, schedule="1f1b", rematerialize=True)],
                         ids=["split", "1f1b_remat"])
def test_a_layer_that_does_not_round_trip_trains_itself_exactly(build, make, tmp_path):
    x, y = data()
    reference = compiled(build)
    start = weights_of(reference)
    reference.fit(x, y, epochs=3, **FIT)
    model = compiled(build)
    own = [layer for layer in model.layers if isinstance(layer, (Scale, Block))][0]
    model.fit(x, y, epochs=1, **FIT)  # a built optimizer and a traced step, kept by the caller
    tfpar.fit_distributed(model, x, y, strategy=make(), epochs=1, **FIT)
    assert [layer for layer in model.layers if isinstance(layer, (Scale, Block))][0] is own
    model.fit(x, y, epochs=1, **FIT)  # trains on where the pipeline ended
    # Float32 round-off of the pipeline's other order of sums (Adam).
    assert_same_weights(weights_of(model), weights_of(reference), atol=ADAM_ATOL)
    assert max(float(np.max(np.abs(w - s))) for w, s in zip(weights_of(model), start)) > 1e-2
    assert all("CPU:0" in v.value.device for v in own.weights)  # back where plain variables live
    model.save(tmp_path / "model.keras")


def test_a_pipeline_trained_data_parallel_refuses_the_layer_by_name_before_training():
    x, y = data()
    model = compiled(with_scale)
    before = weights_of(model)
    with pytest.raises(ValueError, match=r"needs a copy of layer 'scale\w*' \(class Scale\) per "
                                         r"replica.*factor.*data_parallel=1"):
        tfpar.fit_distributed(model, x, y, strategy=GPipe(4, microbatches=2, data_parallel=2),
                              epochs=1, **FIT)
    for a, b in zip(weights_of(model), before):
        np.testing.assert_array_equal(a, b)
    model.fit(x, y, epochs=1, **FIT)  # the caller's model still trains plainly
