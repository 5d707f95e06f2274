"""Bad input to fit_distributed: a clear error, and the caller's model untouched."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpar.strategies import DataParallel, GPipe
import tfpar

from conftest import build_mlp, compile_model, make_data, weights_of


def state_of(model):
    optimizer = model.optimizer
    return (weights_of(model), optimizer.built if optimizer else None,
            [np.array(v) for v in optimizer.variables] if optimizer else None)


def assert_unchanged(model, before):
    after = state_of(model)
    for a, b in zip(after[0], before[0]):
        np.testing.assert_array_equal(a, b)
    assert after[1:2] == before[1:2]
    for a, b in zip(after[2] or [], before[2] or []):
        np.testing.assert_array_equal(a, b)


class EmptySequence(keras.utils.PyDataset):
    def __len__(self):
        return 0

    def __getitem__(self, index):
        raise IndexError(index)


x, y = make_data()
CASES = {
    "unknown strategy name": (dict(x=x, y=y, strategy="pipelined"),
                              ValueError, r"Unknown strategy name 'pipelined'. Valid names: \['gpipe', 'mirrored', 'multi_worker', 'split'\]"),
    "not a strategy": (dict(x=x, y=y, strategy=3), TypeError, r"strategy must be a name.*Received: strategy=3"),
    "batch not divisible": (dict(x=x, y=y, batch_size=30, strategy=DataParallel(4)),
                            ValueError, r"divisible by the number of replicas \(4\).*batch_size=30.*28 or 32"),
    "default batch not divisible": (dict(x=x, y=y, strategy=DataParallel(["cpu:0", "cpu:1", "cpu:2"])),
                                    ValueError, r"batch_size=32"),
    "empty arrays": (dict(x=x[:0], y=y[:0]), ValueError, r"training data is empty.*shape \(0, 12\)"),
    "empty dataset": (dict(x=tf.data.Dataset.from_tensor_slices((x, y)).batch(8).take(0)),
                      ValueError, r"empty.*cardinality 0"),
    "empty PyDataset": (dict(x=EmptySequence()), ValueError, r"empty.*PyDataset of length 0"),
    "unknown fit argument": (dict(x=x, y=y, batchsize=32), TypeError, r"unexpected argument\(s\) \['batchsize'\]"),
    # The user's model is named, not the pipeline's stage sub-models.
    "wrong input width, pipelined": (
        dict(x=x[:, :10], y=y, strategy=GPipe(2)), ValueError,
        r"Input 0 of model 'mlp' must have per-sample shape \(12,\).*Received: data of shape \(256, 10\)"),
    "wrong input count": (dict(x=[x, x], y=y), ValueError, r"takes 1 input\(s\).*Received: x with 2 array"),
}


@pytest.mark.parametrize("kwargs, error, message", CASES.values(), ids=CASES.keys())
def test_bad_input_is_a_clear_error_and_changes_nothing(kwargs, error, message):
    model = compile_model(build_mlp())
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)  # some optimizer state to protect
    before = state_of(model)
    with pytest.raises(error, match=message):
        tfpar.fit_distributed(model, verbose=0, **kwargs)
    assert_unchanged(model, before)


def test_uncompiled_model():
    model = build_mlp()
    before = weights_of(model)
    with pytest.raises(ValueError, match=r"must be compiled.*model.compile\(optimizer=..., loss=...\)"):
        tfpar.fit_distributed(model, x, y)
    for a, b in zip(weights_of(model), before):
        np.testing.assert_array_equal(a, b)


def test_not_a_model():
    with pytest.raises(TypeError, match="keras.Model.*Received: model of type list"):
        tfpar.fit_distributed([1, 2], x, y)


def test_failure_during_training_leaves_the_model_as_it_was():
    class Boom(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 3:
                raise RuntimeError("boom")

    model = compile_model(build_mlp(), "adam")
    before = state_of(model)
    with pytest.raises(RuntimeError, match="boom"):
        tfpar.fit_distributed(model, x, y, batch_size=32, verbose=0, callbacks=[Boom()],
                              strategy=DataParallel(2))
    assert_unchanged(model, before)
    assert not model.optimizer.built


def test_a_subclassed_model_that_cannot_be_cloned_trains_data_parallel_as_it_is():
    # Data parallel trains the caller's own object (tfpar/core/in_place.py): its
    # config never matters there. Only a pipeline, which must place a twin,
    # needs the graph (and refuses a subclassed model before training).
    class Opaque(keras.Model):
        def __init__(self, helper):  # an argument Keras cannot serialise
            super().__init__()
            self.helper = helper
            self.dense = keras.layers.Dense(3)

        def call(self, inputs):
            return self.dense(inputs)

    model = Opaque(helper=object())
    model(x[:1])
    compile_model(model)
    before = weights_of(model)
    tfpar.fit_distributed(model, x, y, batch_size=32, epochs=1, verbose=0, strategy=DataParallel(2))
    assert max(np.abs(a - b).max() for a, b in zip(weights_of(model), before)) > 1e-3
    with pytest.raises(ValueError, match="subclassed"):
        tfpar.fit_distributed(model, x, y, batch_size=32, strategy=GPipe(2))


class SequentialWithItsOwnStep(keras.Sequential):
    steps = 0

    def train_step(self, data):
        SequentialWithItsOwnStep.steps += 1  # counted when traced
        return super().train_step(data)


def test_a_sequential_subclass_trains_data_parallel_with_its_own_step():
    # A clone would be a plain Sequential without the subclass's step; data
    # parallel trains the model itself, so its train_step runs.
    keras.utils.set_random_seed(0)
    model = compile_model(SequentialWithItsOwnStep([keras.Input((x.shape[1],)), keras.layers.Dense(3)]))
    SequentialWithItsOwnStep.steps = 0
    with pytest.warns(UserWarning, match=r"overrides \['train_step'\]"):
        tfpar.fit_distributed(model, x, y, batch_size=32, epochs=1, verbose=0, strategy=DataParallel(2))
    assert SequentialWithItsOwnStep.steps > 0 and type(model) is SequentialWithItsOwnStep


class ConfigWithoutArgument(keras.layers.Layer):
    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        self.width = width
        self.dense = keras.layers.Dense(width)

    def call(self, inputs):
        return self.dense(inputs)

    def get_config(self):  # forgets `width`: from_config cannot rebuild it
        return {"name": self.name}


def test_a_layer_that_cannot_be_rebuilt_is_named_with_the_full_cause():
    inputs = keras.Input((12,))
    model = compile_model(keras.Model(inputs, keras.layers.Dense(3)(ConfigWithoutArgument(4, name="odd")(inputs))))
    # A pipeline trained data parallel places a copy of each layer per
    # replica; one pipeline (or data parallel) trains the layer itself.
    with pytest.raises(ValueError, match=r"needs a copy of layer 'odd' \(class ConfigWithoutArgument\)"
                                         r".*could not recreate layer 'odd' of class ConfigWithoutArgument.*width"):
        tfpar.fit_distributed(model, x, y, batch_size=32, strategy=GPipe(4, data_parallel=2))
