"""Array inputs as one stream (MultiWorker's input path) train exactly as
Keras' fit on the same arrays: the same batches in the same order every
epoch, the same History and weights.

The reference is Keras' own `model.fit` on the arrays; the stream is given
to the same `model.fit`. A recorder in the train step logs every batch it
is given, so a changed order or a lost batch fails, not only a changed sum.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpar.replication import epoch_stream

RNG = np.random.default_rng(0)
X = RNG.normal(size=(22, 3)).astype("float32")  # 22 rows in batches of 5: a short last batch
Y = RNG.integers(0, 3, 22)


def train(stream: bool, **fit_kwargs):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    seen = []
    step = model.train_step

    def recorded(data):
        flat = tf.nest.flatten(data)
        tf.py_function(lambda *v: seen.append([a.numpy().tolist() for a in v]) or 0, flat, tf.int32)
        return step(data)

    model.train_step = recorded
    x, y, kwargs = X, Y, dict(batch_size=5, epochs=3, verbose=0, **fit_kwargs)
    if stream:
        x, y, kwargs = epoch_stream.fit_arguments(x, y, kwargs)
        assert isinstance(x, tf.data.Dataset) and y is None
        # The batches each epoch: 22 rows, or 16 left by validation_split 0.25.
        assert kwargs["steps_per_epoch"] == (4 if "validation_split" in fit_kwargs else 5)
    history = model.fit(x, y, **kwargs)
    return seen, history.history, [w.numpy() for w in model.weights]


@pytest.mark.parametrize("fit_kwargs", [
    dict(),  # Keras' default: shuffle=True
    dict(shuffle=False),
    dict(shuffle="batch"),
    dict(class_weight={0: 1.0, 1: 2.0, 2: 0.5}),
    dict(sample_weight=RNG.random(22).astype("float32")),
    dict(validation_split=0.25),
    dict(validation_data=(X[:7], Y[:7]), initial_epoch=1),
], ids=["shuffle", "no-shuffle", "batch-shuffle", "class_weight", "sample_weight",
        "validation_split", "validation_data-initial_epoch"])
def test_the_stream_gives_fit_its_own_batches(fit_kwargs):
    expected_batches, expected_history, expected_weights = train(False, **fit_kwargs)
    batches, history, weights = train(True, **fit_kwargs)
    assert len(batches) == len(expected_batches) > 0
    assert batches == expected_batches  # the same rows, order and weights, batch by batch
    assert history == expected_history
    for actual, expected in zip(weights, expected_weights):
        np.testing.assert_array_equal(actual, expected)


def test_fit_keeps_its_own_path_where_the_stream_does_not_apply():
    dataset = tf.data.Dataset.from_tensor_slices((X, Y)).batch(5)
    assert epoch_stream.fit_arguments(dataset, None, {}) is None
    assert epoch_stream.fit_arguments(X, Y, {"steps_per_epoch": 2}) is None
    assert epoch_stream.fit_arguments(X, Y, {"epochs": 2, "initial_epoch": 2}) is None
    assert epoch_stream.fit_arguments(tf.sparse.from_dense(X), Y, {}) is None
