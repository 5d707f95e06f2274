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
import contextlib
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from tfpar.bench import timing
import tfpar


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=int, default=2, help="logical CPU devices")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=6, help="per run; the first is warm-up")
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024, help="hidden layer width")
    parser.add_argument("--microbatches", default="1,2,4,8",
                        help="values of k for the micro-batch memory runs")
    parser.add_argument("--memory_depth", type=int, default=8, help="hidden layers, memory runs")
    parser.add_argument("--memory_width", type=int, default=512)
    parser.add_argument("--memory_batch", type=int, default=4096)


def main(args: argparse.Namespace) -> dict:
    tfpar.configure_devices(cpu=args.devices, intra_op_threads=1)
    devices = tfpar.core.devices.local_devices("CPU")[: args.devices]
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
    result["microbatches"] = _microbatches(args, devices)
    result["powersgd"] = _powersgd(args, devices, x, y)
    return result


def _powersgd(args, devices, x, y) -> dict:
    """Bytes each replica hands the all-reduce per step, and the step time,
    uncompressed and with PowerSGD (rank 2), on this benchmark's MLP."""
    rows, result = [], {}
    for compression in (None, "powersgd"):
        strategy = tfpar.strategies.DataParallel(devices, compression=compression)
        timer = timing.StepTimer()
        tfpar.fit_distributed(_model(args), x, y, batch_size=args.batch_size, epochs=2, verbose=0,
                              shuffle=False, callbacks=[timer], strategy=strategy)
        hook = strategy.communication_hook
        model_bytes = sum(v.numpy().nbytes for v in _model(args).trainable_weights)
        sent = model_bytes if hook is None else hook.sent_bytes
        result[str(compression)] = sent
        rows.append((str(compression), sent / 2**10, model_bytes / sent,
                     statistics.median(timer.seconds[1:]) * 1000))
    print(f"\ngradient compression: bytes each replica sends into the all-reduce per step "
          f"(PowerSGD: rank-2 factors of each matrix, in two rounds), MLP width {args.width}")
    print(timing.table(rows, ("compression", "KiB per step", "fewer than uncompressed", "step ms")))
    return result


def _microbatches(args, devices) -> dict:
    """Peak memory of a step and all-reduces per step, per micro-batch count."""
    values = sorted({1, *(int(v) for v in args.microbatches.split(","))})
    batch, steps = args.memory_batch, 4
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * steps, args.memory_width)).astype("float32")
    y = rng.integers(0, 10, size=batch * steps)
    rows, result = [], {}
    for k in values:
        keras.utils.set_random_seed(0)
        model = tfpar.models.mlp(args.memory_width, 10, hidden=[args.memory_width] * args.memory_depth)
        model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        timer = timing.StepTimer()
        with _counting_all_reduces() as counts:
            tfpar.fit_distributed(model, x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0,
                                  callbacks=[timer],
                                  strategy=tfpar.strategies.DataParallel(devices, microbatches=k))
        peak = statistics.median(timer.peak_bytes[1:]) / 2**20
        # One set of gradients, all replicas: the floor of the peak is about
        # two (the running sum and the micro-batch's being added).
        gradients = len(devices) * sum(v.numpy().nbytes for v in model.trainable_weights) / 2**20
        # Calls made while the step was traced, by each replica: per step.
        per_step = len(counts) / len(devices)
        rows.append((k, peak, peak / rows[0][1] if rows else 1.0, per_step,
                     statistics.median(timer.seconds[1:]) * 1000))
        result[k] = {"peak_mib": peak, "all_reduces": per_step}
    print(f"\nmicro-batches: DataParallel over {len(devices)} devices, MLP "
          f"{args.memory_depth}x{args.memory_width}, batch {batch}, SGD (peak allocation above "
          "the step's start, all replicas: logical CPUs share one allocator; all-reduces: "
          "calls per replica per step, counted as the step is traced)")
    print(timing.table(rows, ("microbatches", "peak MiB", "vs k=1", "all-reduces/step", "step ms")))
    print(f"one set of gradients, all replicas: {gradients:.1f} MiB (with k > 1 a replica holds "
          "their running sum and one micro-batch's: the peak's floor)")
    return result


@contextlib.contextmanager
def _counting_all_reduces():
    """Records each replica-context all-reduce (Keras' optimizer makes one
    per step for all gradients)."""
    calls = []
    all_reduce = tf.distribute.ReplicaContext.all_reduce

    def counting(self, reduce_op, value, options=None):
        calls.append(len(tf.nest.flatten(value)))
        return all_reduce(self, reduce_op, value, options)

    tf.distribute.ReplicaContext.all_reduce = counting
    try:
        yield calls
    finally:
        tf.distribute.ReplicaContext.all_reduce = all_reduce


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
