"""Pipeline speed and memory: GPipe against naive model split.

Runs one compute-bound MLP split over K stages at M = 1 (naive split) and
larger M, and prints the step time, the speedup over M = 1, the ideal
K*M/(M+K-1) and the efficiency (speedup / ideal). Then, at the largest M,
the peak activation memory of a step with rematerialisation off and on,
under the "gpipe" and "1f1b" schedules.

Each op gets one thread (`intra_op_threads=1`). Logical CPU devices share the
process's thread pool, though, so independent ops of one stage (a layer's
weight and input gradients) may still run on two cores at once: naive split
is then already partly parallel, which caps what pipelining can add on this
backend. Step times are medians over the steps after the first (tracing) of
each run, pooled over repeats; the runs for different M alternate.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

import tfpar
from tfpar.pipeline import schedule as schedule_lib
from tfpar.bench import timing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=int, default=2, help="K, the number of stages")
    parser.add_argument("--microbatches", default="1,2,4,8,16", help="values of M to time")
    parser.add_argument("--schedule", default="gpipe", choices=schedule_lib.SCHEDULES)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=8, help="hidden layers")
    parser.add_argument("--batch_size", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=6, help="per run; the first is warm-up")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory_depth", type=int, default=16, help="hidden layers for the memory runs")
    parser.add_argument("--memory_batch", type=int, default=1024)


class StepTimer(keras.callbacks.Callback):
    """Wall time of each training step, and its peak extra memory."""

    def __init__(self):
        super().__init__()
        self.seconds, self.cpu_seconds, self.peak_bytes = [], [], []

    def on_train_batch_begin(self, batch, logs=None):
        tf.config.experimental.reset_memory_stats("CPU:0")
        self._base = tf.config.experimental.get_memory_info("CPU:0")["current"]
        self._start, self._cpu = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        self.cpu_seconds.append(time.process_time() - self._cpu)
        # Logical CPUs share one allocator: CPU:0 reports the whole process.
        self.peak_bytes.append(tf.config.experimental.get_memory_info("CPU:0")["peak"] - self._base)


def main(args: argparse.Namespace) -> dict:
    # The default CPU allocator leaves some allocations out of its stats; the
    # BFC allocator counts all. Read when TensorFlow creates its devices.
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
    tfpar.configure_devices(cpu=args.devices, intra_op_threads=1)
    devices = tfpar.devices.local_devices("CPU")[: args.devices]
    k = len(devices)
    values = [int(v) for v in args.microbatches.split(",")]
    if 1 not in values:
        values = [1, *values]
    per_step = {m: [] for m in values}
    busy = {m: [] for m in values}
    for _ in range(args.repeats):
        for m in values:
            timer = _run(args, devices, args.depth, args.batch_size, m, args.schedule, False)
            per_step[m].extend(timer.seconds[1:])
            busy[m].extend(c / w for c, w in zip(timer.cpu_seconds[1:], timer.seconds[1:]))
    step = {m: statistics.median(v) for m, v in per_step.items()}
    rows = []
    for m in values:
        speedup = step[1] / step[m]
        ideal = schedule_lib.ideal_speedup(k, m)
        rows.append((m, step[m] * 1000, speedup, ideal, speedup / ideal, statistics.median(busy[m])))
    print(f"GPipe ({args.schedule}) on {k} logical CPU devices, 1 intra-op thread each; "
          f"MLP {args.depth}x{args.width}, batch {args.batch_size}; medians over "
          f"{args.repeats} x {args.steps - 1} steps")
    print(timing.table(rows, ("M", "step ms", "speedup vs M=1", "ideal K*M/(M+K-1)",
                              "efficiency", "cores busy")))

    m = max(values)
    memory = {}
    for schedule in schedule_lib.SCHEDULES:
        for remat in (False, True):
            timer = _run(args, devices, args.memory_depth, args.memory_batch, m, schedule, remat)
            memory[(schedule, remat)] = statistics.median(timer.peak_bytes[1:]) / 2**20
    base = memory[("gpipe", False)]
    mem_rows = [(s, "on" if r else "off", memory[(s, r)], memory[(s, r)] / base) for (s, r) in memory]
    print(f"\npeak activation memory of a step, M={m}, MLP {args.memory_depth}x{args.width}, "
          f"batch {args.memory_batch} (peak allocation above the step's start)")
    print(timing.table(mem_rows, ("schedule", "rematerialize", "MiB", "vs gpipe, remat off")))
    return {"step_seconds": step, "speedup": {r[0]: r[2] for r in rows},
            "efficiency": {r[0]: r[4] for r in rows}, "cores_busy": {r[0]: r[5] for r in rows},
            "memory_mib": {f"{s}/{'remat' if r else 'keep'}": v for (s, r), v in memory.items()}}


def _run(args, devices, depth, batch, m, schedule, remat) -> StepTimer:
    keras.utils.set_random_seed(0)
    model = tfpar.models.mlp(args.width, 10, hidden=[args.width] * depth)
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * args.steps, args.width)).astype("float32")
    y = rng.integers(0, 10, size=batch * args.steps)
    timer = StepTimer()
    strategy = tfpar.strategies.GPipe(devices, microbatches=m, schedule=schedule, rematerialize=remat)
    tfpar.fit_distributed(model, x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0,
                          strategy=strategy, callbacks=[timer])
    return timer
