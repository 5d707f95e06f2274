"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time

import keras
import tensorflow as tf

from tfpar.table import format_table


class EpochTimer(keras.callbacks.Callback):
    """Records the wall time of each epoch.

    The first epoch includes tracing and graph building, so throughput is
    taken from the later ones.
    """

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


class StepTimer(keras.callbacks.Callback):
    """Wall time of each training step, and its peak extra memory."""

    def __init__(self):
        super().__init__()
        self.seconds, self.cpu_seconds, self.peak_bytes, self.base_bytes = [], [], [], []

    def on_train_batch_begin(self, batch, logs=None):
        tf.config.experimental.reset_memory_stats("CPU:0")
        self._base = tf.config.experimental.get_memory_info("CPU:0")["current"]
        self.base_bytes.append(self._base)
        self._start, self._cpu = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        self.cpu_seconds.append(time.process_time() - self._cpu)
        # Logical CPUs share one allocator: CPU:0 reports the whole process.
        self.peak_bytes.append(tf.config.experimental.get_memory_info("CPU:0")["peak"] - self._base)


def median(values: list[float]) -> float:
    return statistics.median(values)


def table(rows: list[tuple], header: tuple) -> str:
    """Formats benchmark rows as a right-aligned text table."""
    return format_table(rows, header)
