"""Timing one piece of work on this machine, and inputs to time it on.

The planner's profile, the cost of balance="time", device_speeds="measure"
and the link probes all time work the same way: the median of several
calls after a warm-up call, each waiting for the values it returns.

Example:
    >>> seconds = median_seconds(lambda: tf.ones((64, 64)) @ tf.ones((64, 64)), repeats=3)
    >>> seconds > 0
    True
"""

from __future__ import annotations

import statistics
import time as time_lib

import keras
import numpy as np
import tensorflow as tf


def median_seconds(run, repeats: int = 5) -> float:
    """Median wall time of `run()` over `repeats` calls after one warm-up
    call (tracing, allocation), each waiting for every tensor it returns."""
    _wait(run())
    seconds = []
    for _ in range(repeats):
        start = time_lib.perf_counter()
        _wait(run())
        seconds.append(time_lib.perf_counter() - start)
    return statistics.median(seconds)


def _wait(result) -> None:
    for t in keras.tree.flatten(result):
        if t is not None:
            np.asarray(t)  # the value exists only once computed


def random_batch(tensor, batch_size: int):
    """A random (or, for integer inputs, all-ones) batch shaped like `tensor`."""
    shape = (batch_size, *[d or 1 for d in tensor.shape[1:]])
    dtype = tf.as_dtype(tensor.dtype)
    if dtype.is_integer or dtype == tf.bool:
        # Token 1: ids index tables of at least two rows, and 0 is often the
        # padding a mask would hide (all of it, which would time nothing).
        return tf.ones(shape, dtype)
    return tf.random.normal(shape, dtype=dtype)
