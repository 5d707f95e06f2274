"""Shared test setup: 4 logical CPU devices, small models and data.

TensorFlow fixes its device layout when it first initialises, so the split
into 4 logical CPUs happens here, at collection time, before any test runs.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tfpar  # noqa: E402

DEVICES = tfpar.configure_devices(cpu=4)
FEATURES, CLASSES = 12, 3


def build_mlp(*, batch_norm: bool = False, seed: int = 0) -> keras.Model:
    """A small MLP with fixed initial weights (same seed, same weights)."""
    keras.utils.set_random_seed(seed)
    return tfpar.models.mlp(FEATURES, CLASSES, hidden=(16, 8), batch_norm=batch_norm)


def compile_model(model: keras.Model, optimizer: str = "sgd", **kwargs) -> keras.Model:
    optimizers = {
        "sgd": lambda: keras.optimizers.SGD(0.1, momentum=0.5),
        "adam": lambda: keras.optimizers.Adam(0.01),
    }
    model.compile(
        optimizer=optimizers[optimizer](),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        **kwargs,
    )
    return model


def make_data(samples: int = 256, seed: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, FEATURES)).astype("float32")
    y = rng.integers(0, CLASSES, size=samples).astype("int32")
    return x, y


def weights_of(model: keras.Model) -> list[np.ndarray]:
    return [np.array(w) for w in model.get_weights()]


def assert_same_weights(actual, expected, *, rtol=1e-5, atol=1e-6):
    """Float32 round-off tolerance for "the same training".

    Replicas sum gradients in a different order than one device does, so
    each step's gradient differs by a few float32 ulps (eps = 1.2e-7). Over
    the few steps these tests take, weights of order 1 drift by ~1e-7; the
    bounds allow ~100 ulps and are far below what a real difference causes
    (a wrong loss scale or a skipped step moves weights by >= 1e-3).
    """
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)


# Adam divides each step by sqrt(v): for a gradient entry near zero, a few
# ulps of difference in the summed gradient are a large relative change,
# and the step (up to lr = 0.01) moves by up to ~1e-3 of itself. Measured:
# 6e-6 on one weight of 128 after 16 steps with a ring all-reduce. 1e-5 is
# still 100x below what a wrong loss scale or a skipped step causes.
ADAM_ATOL = 1e-5


@pytest.fixture
def data():
    return make_data()


# Tests that start processes of their own (launched workers, the binary's
# default job, notebooks) or run for a minute: started first, so that the
# two test processes finish together instead of one of them starting a
# two-minute job near the end (the suite has a 15-minute budget).
LONG_FIRST = (
    "test_multi_worker_conformance",
    "test_default_job_trains_digits_and_saves",
    "test_two_workers_train_exactly_like_one_process",
    "04_multi_worker.ipynb",
    "test_killed_worker_resumes_to_the_uninterrupted_result",
    "test_multi_worker_benchmark_reports_scaling",
    "test_two_workers_each_a_two_stage_pipeline_train_like_one_process",
    "test_every_docstring_example_holds",
    "test_transformer_on_reversal_pipelined_with_a_timeline",
    "test_a_hung_peer_is_an_error_within_the_timeout",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        for index, name in enumerate(LONG_FIRST):
            if name in item.nodeid:
                return index
        return len(LONG_FIRST)

    items.sort(key=rank)  # stable: the rest keep their order
