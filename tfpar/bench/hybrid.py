"""Hybrid parallelism on 4 devices: DataParallel(4), GPipe K=4 and 2 x 2.

The same MLP, trained on 4 logical CPU devices (one intra-op thread each)
three ways: data parallel over 4 replicas, one pipeline of 4 stages, and 2
pipeline replicas of 2 stages each (`GPipe(4, data_parallel=2)`). The table
gives samples per second (median over the steps after the first of each
run, pooled over repeats; the three alternate), the largest weight +
optimizer-state bytes any one device holds (read from where the variables
live), and the pipelines' measured bubble (a separate run that records the
timeline, whose stamps would otherwise cost time).
"""

from __future__ import annotations

import argparse
import collections
import statistics

import keras
import numpy as np

from tfpar.bench import timing
import tfpar


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=8, help="hidden layers")
    parser.add_argument("--batch_size", type=int, default=1024)
    parser.add_argument("--microbatches", type=int, default=8, help="M of each pipeline replica")
    parser.add_argument("--steps", type=int, default=6, help="per run; the first is warm-up")
    parser.add_argument("--repeats", type=int, default=3)


LAYOUTS = {
    "DataParallel(4)": lambda m: tfpar.strategies.DataParallel(4),
    "GPipe K=4": lambda m, **kw: tfpar.strategies.GPipe(4, microbatches=m, **kw),
    "GPipe 2 x 2": lambda m, **kw: tfpar.strategies.GPipe(4, microbatches=m, data_parallel=2, **kw),
}


class StateBytes(keras.callbacks.Callback):
    """Weight and optimizer-state bytes on each device, at the end of training."""

    def on_train_end(self, logs=None):
        self.per_device = collections.Counter()
        for variable in list(self.model.weights) + list(self.model.optimizer.variables):
            value = variable.value
            for component in getattr(value, "values", (value,)):  # a mirrored variable's copies
                self.per_device[component.device] += int(np.prod(variable.shape)) * 4


def main(args: argparse.Namespace) -> dict:
    tfpar.configure_devices(cpu=4, intra_op_threads=1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch_size * args.steps, args.width)).astype("float32")
    y = rng.integers(0, 10, size=len(x))
    seconds = {name: [] for name in LAYOUTS}
    state = {}
    for _ in range(args.repeats):
        for name, make in LAYOUTS.items():
            timer, sizes = timing.StepTimer(), StateBytes()
            _fit(args, x, y, make(args.microbatches), [timer, sizes])
            seconds[name].extend(timer.seconds[1:])
            state[name] = max(sizes.per_device.values())
    bubble = {}
    for name, make in LAYOUTS.items():
        if name.startswith("GPipe"):
            recorder = tfpar.timeline.PipelineTimeline(verbose=False)
            _fit(args, x, y, make(args.microbatches, record_timeline=True), [recorder])
            bubble[name] = recorder.bubble
    rows = [(name, args.batch_size / statistics.median(seconds[name]), state[name] / 2**20,
             f"{bubble[name]:.3f}" if name in bubble else "-") for name in LAYOUTS]
    print(f"4 logical CPU devices, 1 intra-op thread each; MLP {args.depth}x{args.width}, Adam, "
          f"batch {args.batch_size}, M={args.microbatches} per pipeline replica; medians over "
          f"{args.repeats} x {args.steps - 1} steps, layouts alternating")
    print(timing.table(rows, ("layout", "samples/s", "max weights+optimizer MiB/device",
                              "measured bubble")))
    return {"samples_per_second": {r[0]: r[1] for r in rows},
            "state_mib": {r[0]: r[2] for r in rows}, "bubble": bubble}


def _fit(args, x, y, strategy, callbacks) -> None:
    keras.utils.set_random_seed(0)
    model = tfpar.models.mlp(args.width, 10, hidden=[args.width] * args.depth)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    tfpar.fit_distributed(model, x, y, batch_size=args.batch_size, epochs=1, shuffle=False,
                          verbose=0, strategy=strategy, callbacks=callbacks)
