"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time

import keras


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
    """Formats rows as a fixed-width text table."""
    cells = [tuple(str(c) for c in header)] + [tuple(_fmt(c) for c in row) for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
