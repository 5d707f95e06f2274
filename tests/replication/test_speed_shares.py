"""DataParallel(device_speeds=...): shares of each batch by device speed,
the same training as one device."""

import keras
import numpy as np
import pytest

from tfpar.replication import speed_shares
from tfpar.strategies import DataParallel
import tfpar

from conftest import ADAM_ATOL, assert_same_weights, make_data, weights_of, FEATURES, CLASSES

# 250 samples in batches of 64: the last batch (58 rows) gets other shares.
FIT = dict(batch_size=64, epochs=2, shuffle=False, verbose=0)


def softmax_model(optimizer: str) -> keras.Model:
    """The Keras examples' head: softmax and a string loss."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(CLASSES, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.1) if optimizer == "sgd" else keras.optimizers.Adam(0.01),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def travel(weights, start) -> float:
    return max(float(np.max(np.abs(w - s))) for w, s in zip(weights, start))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("speeds", [[3, 1], [1, 1]])
def test_trains_like_one_device(optimizer, speeds):
    x, y = make_data(250)
    reference = softmax_model(optimizer)
    start = weights_of(reference)
    expected = reference.fit(x, y, **FIT).history
    model = softmax_model(optimizer)
    history = tfpar.fit_distributed(model, x, y, strategy=DataParallel(2, device_speeds=speeds),
                                    **FIT).history
    atol = ADAM_ATOL if optimizer == "adam" else 1e-6
    assert_same_weights(weights_of(model), weights_of(reference), atol=atol)
    assert travel(weights_of(reference), start) > 1e-2
    assert travel(weights_of(model), start) == pytest.approx(travel(weights_of(reference), start), rel=1e-2)
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(history[key], expected[key], rtol=1e-4, err_msg=key)


def test_a_share_that_rounds_to_nothing_and_evaluation():
    # 65 samples: the last batch is 1 row, all of it replica 0's at 3:1.
    x, y = make_data(65)
    reference = softmax_model("sgd")
    reference.fit(x, y, **FIT)
    model = softmax_model("sgd")
    strategy = DataParallel(2, device_speeds=[3, 1])
    tfpar.fit_distributed(model, x, y, strategy=strategy, **FIT)
    assert_same_weights(weights_of(model), weights_of(reference))
    want = reference.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    got = tfpar.evaluate_distributed(model, x, y, strategy=strategy, batch_size=64, verbose=0,
                                     return_dict=True)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5), key


def test_measured_speeds_train_the_same():
    x, y = make_data(128)
    reference = softmax_model("sgd")
    reference.fit(x, y, **FIT)
    model = softmax_model("sgd")
    strategy = DataParallel(2, device_speeds="measure")
    tfpar.fit_distributed(model, x, y, strategy=strategy, **FIT)
    assert isinstance(strategy.device_speeds, list) and len(strategy.device_speeds) == 2
    assert max(strategy.device_speeds) == 1.0 and min(strategy.device_speeds) > 0
    assert_same_weights(weights_of(model), weights_of(reference))


@pytest.mark.parametrize("speeds, message", [
    ([3], r"one finite speed > 0 per device \(2 devices\).*device_speeds=\[3\]"),
    ([3, 0], r"device_speeds=\[3, 0\]"),
    ([1, float("nan")], r"device_speeds=\[1, nan\]"),
    ("fast", r"device_speeds='fast'"),
])
def test_bad_speeds_are_refused(speeds, message):
    with pytest.raises(ValueError, match=message):
        DataParallel(2, device_speeds=speeds)


def test_speeds_with_micro_batches_are_refused():
    with pytest.raises(ValueError, match=r"device_speeds=\[3, 1\], microbatches=2"):
        DataParallel(2, device_speeds=[3, 1], microbatches=2)


class OwnStep(keras.Model):
    def train_step(self, data):
        return super().train_step(data)


def test_a_model_with_its_own_step_is_refused_untouched():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((FEATURES,))
    model = OwnStep(inputs, keras.layers.Dense(CLASSES)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    before = weights_of(model)
    x, y = make_data(64)
    with pytest.raises(ValueError, match=r"overrides \['train_step'\]"):
        tfpar.fit_distributed(model, x, np.eye(CLASSES)[y], strategy=DataParallel(2, device_speeds=[3, 1]),
                              **FIT)
    for a, b in zip(weights_of(model), before):
        np.testing.assert_array_equal(a, b)


def test_plain_keras_is_warned_that_shares_are_equal():
    strategy = DataParallel(2, device_speeds=[3, 1])
    x, y = make_data(64)
    with strategy.scope():
        model = softmax_model("sgd")
    with pytest.warns(UserWarning, match=r"splits each batch\s+equally"):
        model.fit(x, y, **FIT)
