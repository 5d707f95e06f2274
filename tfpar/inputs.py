"""Checks on what the user passes as training data, before anything trains.

Keras accepts arrays, tensors, `tf.data.Dataset` and `keras.utils.PyDataset`;
these checks read the few facts a strategy needs (is there any data, what is
the global batch) without consuming or changing the data.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

# What keras.Model.fit uses when the caller gives no batch_size.
KERAS_DEFAULT_BATCH = 32


def check_not_empty(x) -> None:
    """Raises ValueError if `x` holds no samples at all."""
    count = sample_count(x)
    if count == 0:
        raise ValueError(
            "The training data is empty: it must hold at least one sample. "
            f"Received: x with 0 samples ({_describe(x)}). Check the data "
            "loading, filtering or the split that produced it."
        )


def sample_count(x) -> int | None:
    """Number of samples (or batches for datasets), None when unknowable."""
    if isinstance(x, tf.data.Dataset):
        cardinality = int(x.cardinality())
        return None if cardinality < 0 else cardinality
    if isinstance(x, keras.utils.PyDataset):
        try:
            return len(x)
        except (TypeError, NotImplementedError):
            return None
    first = _first_array(x)
    return None if first is None else int(first.shape[0])


def is_array_like(x) -> bool:
    """True for inputs Keras batches itself (arrays, tensors, dicts of them)."""
    return _first_array(x) is not None


def global_batch(x, fit_kwargs: dict) -> int | None:
    """The global batch Keras will use for array-like `x`, else None."""
    if not is_array_like(x):
        return None
    return fit_kwargs.get("batch_size") or KERAS_DEFAULT_BATCH


def _first_array(x):
    if isinstance(x, (np.ndarray, tf.Tensor)) or (
        hasattr(x, "shape") and hasattr(x, "__len__") and not isinstance(x, keras.utils.PyDataset)
    ):
        return x if len(getattr(x, "shape", ())) > 0 else None
    if isinstance(x, dict) and x:
        return _first_array(next(iter(x.values())))
    if isinstance(x, (list, tuple)) and x:
        return _first_array(x[0])
    return None


def _describe(x) -> str:
    if isinstance(x, tf.data.Dataset):
        return "a tf.data.Dataset of cardinality 0"
    if isinstance(x, keras.utils.PyDataset):
        return "a PyDataset of length 0"
    first = _first_array(x)
    return f"an array of shape {tuple(first.shape)}" if first is not None else type(x).__name__
