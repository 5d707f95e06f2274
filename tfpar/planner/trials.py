"""Runs a layout for real for a few steps: what calibration fits to.

A twin of the model (its weights copied, the same optimizer made afresh
from its config, a mean squared error against random targets: the loss's
own cost is a few ops, and a target that fits any head needs no labels)
trains with the layout's strategy on random inputs of the model's shapes.
The result is the median wall time of the steps after the first few (they
trace, and fill the allocator) and the most memory a step held over what
the process held before the run, its data set already made. Host memory is counted only when
TensorFlow started with TF_CPU_ALLOCATOR_USE_BFC=true (its default CPU
allocator keeps no statistics); otherwise the peak is 0.

Example:
    >>> devices = tfpar.configure_devices(cpu=2)
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> model.compile(optimizer="adam", loss="mse")
    >>> seconds, peak = run(model, tfpar.strategies.DataParallel(2), batch_size=16, steps=4)
    >>> 0 < seconds < 1 and peak >= 0
    True
"""

from __future__ import annotations

import gc
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from tfpar.core import internals, replica, timing
from tfpar.strategies import contract


class StepTimer(keras.callbacks.Callback):
    """Wall time of each training step, and its peak extra memory.

    Logical CPUs share one allocator: "CPU:0" (the default) reports the
    whole process's host memory.
    """

    def __init__(self, memory_devices: tuple = ("CPU:0",)):
        super().__init__()
        self.memory_devices = tuple(memory_devices)
        self.seconds, self.cpu_seconds, self.peak_bytes, self.base_bytes = [], [], [], []

    def on_train_batch_begin(self, batch, logs=None):
        for device in self.memory_devices:
            tf.config.experimental.reset_memory_stats(device)
        self._base = self._memory("current")
        self.base_bytes.append(self._base)
        self._start, self._cpu = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        self.cpu_seconds.append(time.process_time() - self._cpu)
        self.peak_bytes.append(self._memory("peak") - self._base)

    def _memory(self, key: str) -> int:
        return sum(tf.config.experimental.get_memory_info(d)[key] for d in self.memory_devices)


class NoCopy(Exception):
    """The model cannot be copied for a trial (its config does not
    round-trip): no layout can be tried, whichever it is."""


def run(model: keras.Model, strategy, batch_size: int, *, devices: list[str] | None = None,
        steps: int = 8, warmup: int = 2) -> tuple[float, int]:
    """Median seconds per step after `warmup` steps, and the peak bytes a
    step held on `devices` (default: the host's) over what they held
    before the run: the twin's weights, gradients, optimizer state and
    activations.

    Raises:
      NoCopy: the model cannot be rebuilt from its config for the twin.
      ValueError: tfpar refuses `strategy` for this model.
    """
    try:
        twin = replica.clone(model)
    except replica.RecreateError as error:
        raise NoCopy(str(error)) from error
    optimizer = model.optimizer
    twin.compile(optimizer=type(optimizer).from_config(optimizer.get_config()), loss="mse")
    rows = batch_size * (steps + warmup)
    # Inputs in the structure the model takes (a dict for keras_hub's).
    x = internals.input_batch(model, lambda t: timing.random_batch(t, rows).numpy())
    y = [np.random.default_rng(0).normal(size=(rows, *[d or 1 for d in t.shape[1:]])).astype("float32")
         for t in model.outputs]
    y = y[0] if len(y) == 1 else y
    timer = StepTimer(allocators(devices or ["/device:CPU:0"]))
    # shuffle=False: Keras' default, True, would warn that a dataset ignores it.
    fit_kwargs = dict(epochs=1, shuffle=False, verbose=0, callbacks=[timer])
    # What fit_distributed does, without its hand-over to the caller's
    # model: the runner checks the data, recreates the twin under the
    # strategy and trains it.
    runner = contract.for_strategy(strategy)
    data = as_dataset(x, y, batch_size)
    runner.check_fit(data, fit_kwargs)
    # An earlier trial's twin and functions, freed now rather than during
    # this run, where they would lower the bytes held below `before`.
    gc.collect()
    before = timer._memory("current")
    runner.fit(runner.recreate(twin), data, None, fit_kwargs)
    peaks = [peak + base - before for peak, base in zip(timer.peak_bytes, timer.base_bytes)]
    return statistics.median(timer.seconds[warmup:]), max(peaks[warmup:])


def as_dataset(x, y, batch_size: int) -> tf.data.Dataset:
    """The arrays as batches, made before a run's memory is counted: given
    arrays, Keras converts (and copies) them whole inside fit, which would
    count the data set's size, not the layout's, into every step's peak."""
    return tf.data.Dataset.from_tensor_slices((tuple(x) if isinstance(x, list) else x, y)).batch(batch_size)


def allocators(devices: list[str]) -> tuple:
    """The allocators `devices` draw on, as get_memory_info names them:
    each GPU its own, every CPU the host's one."""
    gpus = sorted({"GPU:" + name.rsplit(":", 1)[-1] for name in devices if "GPU" in name.upper()})
    return tuple(gpus) + (("CPU:0",) if len(gpus) < len(devices) else ())
