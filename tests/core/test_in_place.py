"""Data parallel trains the caller's model object itself (`tfpar/core/in_place.py`).

Models whose config does not round-trip (a subclassed model with layers
made in `__init__`, a `Lambda` layer, a lookup table adapted to data) train
under DataParallel as plain `model.fit` trains them, exactly, and are left
as `model.fit` leaves them: plain variables, the caller's optimizer with
the trained state, `model.save` and a later plain `fit` working.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpar.core.in_place import Adoption, state_variables
from tfpar.strategies import DataParallel
import tfpar

from conftest import assert_same_weights, weights_of


class TwoDense(keras.Model):
    # keras.io's subclassing guide: layers made in __init__, no get_config.
    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(16, activation="relu")
        self.out = keras.layers.Dense(3, activation="softmax")

    def call(self, inputs):
        return self.out(self.hidden(inputs))


def subclassed():
    model = TwoDense()
    model(np.zeros((1, 8), "float32"))
    return model


def with_lambda():
    inputs = keras.Input((8,))
    x = keras.layers.Lambda(lambda t: t * 2.0 - 1.0)(inputs)
    x = keras.layers.Dense(16, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


def data():
    rng = np.random.default_rng(3)
    return rng.normal(size=(64, 8)).astype("float32"), rng.integers(0, 3, 64)


def compiled(build, optimizer=lambda: keras.optimizers.Adam(0.01)):
    keras.utils.set_random_seed(5)
    model = build()
    model.compile(optimizer=optimizer(), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def is_plain(model) -> bool:
    variables = [*state_variables(model), *model.optimizer.variables]
    return all(type(v.value) is type(tf.Variable(0.0)) for v in variables)  # noqa: E721


@pytest.mark.parametrize("build", [subclassed, with_lambda], ids=["subclassed", "lambda"])
def test_a_model_that_does_not_round_trip_trains_exactly_and_is_left_plain(build, tmp_path):
    x, y = data()
    reference = compiled(build)
    start = weights_of(reference)
    reference.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    model = compiled(build)
    optimizer = model.optimizer
    history = tfpar.fit_distributed(model, x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
                                    strategy=DataParallel(2))
    assert history.model is model and model.optimizer is optimizer
    # Adam: see conftest.ADAM_ATOL.
    assert_same_weights(weights_of(model), weights_of(reference), atol=1e-5)
    moved = max(np.abs(a - b).max() for a, b in zip(weights_of(model), start))
    assert moved > 1e-2
    assert int(optimizer.iterations.numpy()) == int(reference.optimizer.iterations.numpy()) == 8
    for mine, theirs in zip(optimizer.variables, reference.optimizer.variables):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-4, atol=1e-5)
    assert is_plain(model) and tfpar.fit.home_strategy(model) is None
    model.save(tmp_path / "m.keras")  # what model.fit leaves, saves
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)  # and trains on
    reference.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert_same_weights(weights_of(model), weights_of(reference), atol=1e-5)


def test_callbacks_see_the_callers_model_during_training():
    x, y = data()
    model = compiled(subclassed)
    seen = []
    callback = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(callback.model))
    tfpar.fit_distributed(model, x, y, batch_size=16, epochs=2, verbose=0, callbacks=[callback],
                          strategy=DataParallel(2))
    assert seen == [model, model]


def test_a_failed_fit_leaves_the_model_as_it_was():
    x, y = data()
    model = compiled(subclassed)
    before = weights_of(model)

    class Fails(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        tfpar.fit_distributed(model, x, y, batch_size=16, epochs=1, verbose=0, callbacks=[Fails()],
                              strategy=DataParallel(2))
    for a, b in zip(weights_of(model), before):
        np.testing.assert_array_equal(a, b)
    assert is_plain(model) and int(model.optimizer.iterations.numpy()) == 0


def test_adopt_and_release_without_training_change_nothing():
    model = compiled(with_lambda)
    before = weights_of(model)
    strategy = DataParallel(2)
    adoption = Adoption(model, strategy)
    assert adoption.adopt() is model
    assert model.distribute_strategy is strategy
    assert all(isinstance(v.value, tf.distribute.DistributedValues) for v in model.weights)
    adoption.release(trained=False)
    assert is_plain(model) and model.distribute_strategy is not strategy
    for a, b in zip(weights_of(model), before):
        np.testing.assert_array_equal(a, b)


def test_predict_and_evaluate_leave_the_model_plain():
    x, y = data()
    model = compiled(subclassed)
    np.testing.assert_allclose(tfpar.predict_distributed(model, x, verbose=0, strategy=DataParallel(2)),
                               model.predict(x, verbose=0), atol=1e-6)
    tfpar.evaluate_distributed(model, x, y, verbose=0, strategy=DataParallel(2))
    assert is_plain(model)
