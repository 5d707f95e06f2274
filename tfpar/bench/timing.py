"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time

import keras
import tensorflow as tf

from tfpar.planner.trials import StepTimer  # noqa: F401  (the benchmarks time steps with it)
from tfpar.core.table import format_table


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


def median(values: list[float]) -> float:
    return statistics.median(values)


def table(rows: list[tuple], header: tuple) -> str:
    """Formats benchmark rows as a right-aligned text table."""
    return format_table(rows, header)
