"""Shared test setup: 4 logical CPU devices, small models and data.

TensorFlow fixes its device layout when it first initialises, so the split
into 4 logical CPUs happens here, at collection time, before any test runs.
"""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Allocator stats for the benchmarks some tests run in this process (see
# tfpar/bench/__main__.py); read when TensorFlow creates its devices.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
# The planner caches its link measurements; not in the user's home.
os.environ.setdefault("TFPAR_CACHE_DIR", tempfile.mkdtemp(prefix="tfpar-cache-"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tfpar  # noqa: E402

# TensorFlow's default threading, as the suite has always run (4 logical
# devices on 2 cores would otherwise give each op one thread).
DEVICES = tfpar.configure_devices(cpu=4, intra_op_threads=None)
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



if os.environ.get("TFPAR_TEST_CPU_LOG"):
    # Where the suite's time goes: each test's CPU seconds, its own and its
    # finished child processes', appended to the file named.
    import resource

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(item):
        def cpu():
            own, children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
            return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime

        before = cpu()
        yield
        after = cpu()
        with open(os.environ["TFPAR_TEST_CPU_LOG"], "a") as log:
            log.write(f"{after[0] - before[0]:.1f} {after[1] - before[1]:.1f} {item.nodeid}\n")
