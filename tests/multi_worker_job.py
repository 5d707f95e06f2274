"""The model and data the multi-worker tests train, in every process alike.

Imported by the worker scripts the tests launch (PYTHONPATH includes tests/)
and by the tests themselves for the one-process reference.
"""

import keras
import numpy as np

import tfpar


def data():
    rng = np.random.default_rng(1)
    return rng.normal(size=(256, 12)).astype("float32"), rng.integers(0, 3, 256).astype("int32")


def model(hidden=(16, 8)):
    keras.utils.set_random_seed(0)
    net = tfpar.models.mlp(12, 3, hidden=hidden)
    net.compile(optimizer=keras.optimizers.Adam(0.01),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return net


def reference(**fit_kwargs):
    """Single-process model.fit: the result multi-worker runs must match."""
    net = model()
    history = net.fit(*data(), **fit_kwargs)
    return net.get_weights(), history.history
