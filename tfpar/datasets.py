"""Datasets that install with tfpar: no network is needed at run time."""

from __future__ import annotations

import numpy as np


def digits(*, test_fraction: float = 0.2, seed: int = 0):
    """The UCI handwritten digits (1,797 8x8 images, 10 classes).

    The data ships inside scikit-learn, so it loads offline. Pixels are scaled
    to [0, 1] and flattened to 64 features; the split is stratified-free but
    seeded, so it is the same on every machine.

    Args:
      test_fraction: share of samples held out for testing.
      seed: seed of the shuffle before the split.

    Returns:
      `((x_train, y_train), (x_test, y_test))` as float32 / int32 arrays.

    Example:
        >>> (x, y), (x_test, y_test) = tfpar.datasets.digits()
        >>> x.shape, x_test.shape
        ((1438, 64), (359, 64))
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(
            f"test_fraction must be between 0 and 1 (exclusive). Received: {test_fraction!r}."
        )
    from sklearn.datasets import load_digits  # Imported late: only this loader needs it.

    bunch = load_digits()
    x = (bunch.data / 16.0).astype("float32")
    y = bunch.target.astype("int32")
    order = np.random.default_rng(seed).permutation(len(x))
    split = len(x) - int(round(len(x) * test_fraction))
    train, test = order[:split], order[split:]
    return (x[train], y[train]), (x[test], y[test])
