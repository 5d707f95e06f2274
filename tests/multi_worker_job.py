"""The model and data the multi-worker tests train, in every process alike.

Imported by the worker scripts the tests launch (PYTHONPATH includes tests/)
and by the tests themselves for the one-process reference.
"""

import functools
import os
import pathlib

import keras
import numpy as np

import tfpar

ROOT = pathlib.Path(__file__).resolve().parents[1]


def worker_env():
    """The environment a launched worker needs to import tfpar and this."""
    return dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", TF_CPP_MIN_LOG_LEVEL="2")


# The other reference models, for "every model under every strategy"; SGD
# for the Transformer (see tests/models/test_transformer.py on Adam).
KINDS = ("mlp", "cnn", "transformer")


def data(kind="mlp"):
    rng = np.random.default_rng(1)
    if kind == "transformer":
        (x, y), _ = tfpar.datasets.reversal(samples=80, length=4, vocab_size=7, test_fraction=0.2)
        return x, y
    samples, shape = (64, (6, 6, 2)) if kind == "cnn" else (256, (12,))
    return (rng.normal(size=(samples, *shape)).astype("float32"),
            rng.integers(0, 3, samples).astype("int32"))


def model(hidden=(16, 8), kind="mlp", steps_per_execution=1):
    keras.utils.set_random_seed(0)
    optimizer = keras.optimizers.Adam(0.01)
    if kind == "cnn":
        net = tfpar.models.residual_cnn((6, 6, 2), 3, filters=(4, 8), batch_norm=False)
    elif kind == "transformer":
        net = tfpar.models.transformer(7, 4, 4, width=8, heads=2, feed_forward=16,
                                       encoder_blocks=1, decoder_blocks=1)
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    else:
        net = tfpar.models.mlp(12, 3, hidden=hidden)
    net.compile(optimizer=optimizer, steps_per_execution=steps_per_execution,
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return net


@functools.lru_cache(maxsize=None)  # several tests and checks compare with the same run
def reference(kind="mlp", **fit_kwargs):
    """Single-process model.fit: the result multi-worker runs must match."""
    net = model(kind=kind)
    history = net.fit(*data(kind), **fit_kwargs)
    return net.get_weights(), history.history
