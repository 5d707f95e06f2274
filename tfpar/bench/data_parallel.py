"""Data-parallel throughput: tfpar vs native Keras vs one device.

Native Keras is the documented path: build and compile inside
`tf.distribute.MirroredStrategy(devices).scope()`, then `model.fit`. tfpar is
`fit_distributed(model, strategy=DataParallel(devices))` on a model built
outside any scope. The three runs alternate within each repeat so that
machine noise hits them alike. Each op gets one thread, so every logical
device stands for one core. Throughput comes from the median epoch time,
pooled over repeats, first epoch of each run (tracing) excluded.
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np
import tensorflow as tf

import tfpar
from tfpar.bench import timing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=int, default=2, help="logical CPU devices")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=6, help="per run; the first is warm-up")
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024, help="hidden layer width")


def main(args: argparse.Namespace) -> dict:
    tfpar.configure_devices(cpu=args.devices, intra_op_threads=1)
    devices = tfpar.devices.local_devices("CPU")[: args.devices]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.samples, 256)).astype("float32")
    y = rng.integers(0, 10, size=args.samples)
    runs = {
        "native": lambda: _native(args, devices, x, y),
        "tfpar": lambda: _tfpar(args, devices, x, y),
        "single": lambda: _single(args, x, y),
    }
    epochs = {name: [] for name in runs}
    whole = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            epoch_seconds, call_seconds = run()
            epochs[name].extend(epoch_seconds[1:])
            whole[name].append(args.samples * args.epochs / call_seconds)
    steady = {name: [args.samples / s for s in v] for name, v in epochs.items()}
    result = {name: timing.median(v) for name, v in steady.items()}
    result["ratio"] = result["tfpar"] / result["native"]
    result["ratio_whole_call"] = timing.median(whole["tfpar"]) / timing.median(whole["native"])
    rows = [
        (name, timing.median(steady[name]), timing.median(whole[name]))
        for name in runs
    ]
    print(f"data parallel on {len(devices)} logical CPU devices, MLP width "
          f"{args.width}, batch {args.batch_size}, medians of {args.repeats} repeats")
    print(timing.table(rows, ("run", "samples/s (steady)", "samples/s (whole call)")))
    print(f"single / native: {result['single'] / result['native']:.3f} (one device, one thread)")
    print(f"tfpar / native: {result['ratio']:.3f} steady, "
          f"{result['ratio_whole_call']:.3f} whole call (goal >= 1.0)")
    return result


def _model(args) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = tfpar.models.mlp(256, 10, hidden=(args.width, args.width))
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _fit_kwargs(args, timer) -> dict:
    return dict(batch_size=args.batch_size, epochs=args.epochs, verbose=0,
                shuffle=False, callbacks=[timer])


def _native(args, devices, x, y):
    timer = timing.EpochTimer()
    start = time.perf_counter()
    with tf.distribute.MirroredStrategy(devices).scope():
        model = _model(args)
    model.fit(x, y, **_fit_kwargs(args, timer))
    return timer.seconds, time.perf_counter() - start


def _tfpar(args, devices, x, y):
    timer = timing.EpochTimer()
    start = time.perf_counter()
    model = _model(args)
    strategy = tfpar.strategies.DataParallel(devices)
    tfpar.fit_distributed(model, x, y, strategy=strategy, **_fit_kwargs(args, timer))
    return timer.seconds, time.perf_counter() - start


def _single(args, x, y):
    timer = timing.EpochTimer()
    start = time.perf_counter()
    model = _model(args)
    model.fit(x, y, **_fit_kwargs(args, timer))
    return timer.seconds, time.perf_counter() - start
