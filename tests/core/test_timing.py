"""Timing a piece of work, and inputs to time it on."""

import time

import keras
import tensorflow as tf

from tfpar.core import timing


def test_the_median_counts_every_call_after_a_warm_up():
    calls = []

    def run():
        calls.append(None)
        time.sleep(0.02 if len(calls) > 1 else 0.3)  # a slow first call: tracing
        return tf.ones(2)

    seconds = timing.median_seconds(run, repeats=3)
    assert len(calls) == 4 and 0.02 <= seconds < 0.25


def test_random_batches_take_the_tensors_shape_and_dtype():
    ids = timing.random_batch(keras.KerasTensor((None, 5), dtype="int32"), 3)
    assert ids.shape == (3, 5) and ids.dtype == tf.int32 and bool(tf.reduce_all(ids == 1))
    floats = timing.random_batch(keras.KerasTensor((None, None, 2)), 4)
    assert floats.shape == (4, 1, 2) and floats.dtype == tf.float32
