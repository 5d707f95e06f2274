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


def training_count(count: int, validation_split: float | None) -> int:
    """How many of `count` samples Keras trains on with `validation_split`:
    the first floor(count * (1 - split)), before any shuffling."""
    return int(np.floor(count * (1.0 - (validation_split or 0.0))))


def split_validation(x, y, kwargs: dict):
    """`validation_split` turned into explicit `validation_data`, as Keras
    splits: the last fraction of the samples, before any shuffling.

    Returns:
      (x, y, kwargs) for the training part; kwargs without validation_split.
    """
    split = kwargs.pop("validation_split", 0.0) or 0.0
    if not split:
        return x, y, kwargs
    at = training_count(int(keras.tree.flatten(x)[0].shape[0]), split)
    head = lambda data: None if data is None else keras.tree.map_structure(lambda a: a[:at], data)  # noqa: E731
    tail = lambda data: None if data is None else keras.tree.map_structure(lambda a: a[at:], data)  # noqa: E731
    weights = kwargs.get("sample_weight")
    validation = (tail(x), tail(y)) if weights is None else (tail(x), tail(y), tail(weights))
    kwargs["validation_data"] = validation
    if weights is not None:
        kwargs["sample_weight"] = head(weights)
    return head(x), head(y), kwargs


def is_array_like(x) -> bool:
    """True for inputs Keras batches itself (arrays, tensors, dicts of them)."""
    return _first_array(x) is not None


def global_batch(x, fit_kwargs: dict) -> int | None:
    """The global batch Keras will use for array-like `x`, else None."""
    if not is_array_like(x):
        return None
    return fit_kwargs.get("batch_size") or KERAS_DEFAULT_BATCH


def input_shapes(x):
    """The full shape of each input array in `x` (for a Dataset, of its
    element spec, batch dimension None): a dict by name for dict inputs,
    else a list in order. None when it cannot be read without consuming
    data (a PyDataset, a generator)."""
    if isinstance(x, tf.data.Dataset):
        spec = x.element_spec
        parts = spec[0] if isinstance(spec, tuple) else spec
        shape_of = lambda s: tuple(s.shape)  # noqa: E731
    elif is_array_like(x):
        parts, shape_of = x, lambda a: tuple(np.shape(a))  # noqa: E731
    else:
        return None
    if isinstance(parts, dict):
        return {k: shape_of(v) for k, v in parts.items()}
    if isinstance(parts, (list, tuple)):
        return [shape_of(v) for v in parts]
    return [shape_of(parts)]


def check_shapes(model: keras.Model, x) -> None:
    """Raises a clear error when `x` does not fit the model's inputs.

    Checked: the number of inputs, and each per-sample dimension that the
    model fixes, for a built model with `inputs` (Sequential or functional).

    Raises:
      ValueError: the wrong number of inputs, or a per-sample shape that
        differs from the model's.
    """
    expected = getattr(model, "inputs", None) if model.built else None
    received = input_shapes(x)
    if not expected or received is None:
        return
    if isinstance(received, dict):
        by_name = {t.name: t for t in expected}
        if not set(received) <= set(by_name):
            return  # Keras matches dict inputs its own ways; let it decide
        pairs = [(name, by_name[name], received[name]) for name in received]
    elif len(received) != len(expected):
        raise ValueError(
            f"Model {model.name!r} takes {len(expected)} input(s) "
            f"{[t.name for t in expected]}. Received: x with {len(received)} array(s)."
        )
    else:
        pairs = [(index, t, shape) for index, (t, shape) in enumerate(zip(expected, received))]
    for which, tensor, shape in pairs:
        want = tuple(tensor.shape)
        if len(want) != len(shape) or any(
            w is not None and r is not None and w != r for w, r in zip(want[1:], shape[1:])
        ):
            raise ValueError(
                f"Input {which!r} of model {model.name!r} must have per-sample shape "
                f"{want[1:]} (the model's input {tensor.name!r} has shape {want}). "
                f"Received: data of shape {shape}. Pass data that matches the "
                "model's inputs, or rebuild the model for this data."
            )


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
