"""Pipeline speed and memory: GPipe against naive model split (and PyTorch).

Runs one compute-bound MLP split over K stages at M = 1 (naive split) and
larger M, and prints the step time, the speedup over M = 1, the ideal
K*M/(M+K-1) and the efficiency (speedup / ideal). Then, at the largest M:
each schedule's measured bubble next to its ideal, on this MLP and a deeper
one; pipelined inference (predict) against stage-after-stage; the set-up
time `fit_distributed` adds per strategy, next to native Keras under
MirroredStrategy; the peak activation memory of a step per schedule with
rematerialisation off and on. With `--peer torch` (torch installed, the
`bench` extra), PyTorch's ScheduleGPipe and Schedule1F1B on the same MLP,
batch, M and cores, K processes of one thread each, and each framework's
plain one-device step on one thread, in one table.

Each op gets one thread (`intra_op_threads=1`, what `configure_devices` sets
on 2 cores split in 2); a second process repeats M = 1 and the largest M
under TensorFlow's default threading. Logical CPU devices share the
process's thread pool, though, so independent ops of one stage (a layer's
weight and input gradients) may still run on two cores at once: naive split
is then already partly parallel, which caps what pipelining can add on this
backend. Step times are medians over the steps after the first (tracing) of
each run, pooled over repeats; the runs for different M alternate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from tfpar.bench import timing
from tfpar.pipeline import schedule as schedule_lib
import tfpar


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
    parser.add_argument("--peer", choices=("none", "torch"), default="none",
                        help="also run PyTorch's pipeline schedules (needs torch)")
    # Internal: the run under TensorFlow's default threading, in a process
    # of its own (threading is fixed when TensorFlow starts).
    parser.add_argument("--tf_default_threading", action="store_true", help=argparse.SUPPRESS)
    # Internal: Keras' one-device step on one thread (inter- and intra-op),
    # in a process of its own: the sequential step of the torch comparison.
    parser.add_argument("--one_thread_step", action="store_true", help=argparse.SUPPRESS)


def main(args: argparse.Namespace) -> dict:
    if args.one_thread_step:
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.threading.set_intra_op_parallelism_threads(1)
        print(json.dumps({"median_seconds": statistics.median(
            [_one_device(args) for _ in range(args.repeats)])}))
        return {}
    tfpar.configure_devices(cpu=args.devices,
                            intra_op_threads=None if args.tf_default_threading else 1)
    devices = tfpar.core.devices.local_devices("CPU")[: args.devices]
    k = len(devices)
    values = [int(v) for v in args.microbatches.split(",")]
    if 1 not in values:
        values = [1, *values]
    if args.tf_default_threading:  # the child run of `_threading`
        print(json.dumps({str(m): _median_step(args, devices, m) for m in values}))
        return {}
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
    result = {"step_seconds": step, "speedup": {r[0]: r[2] for r in rows},
              "efficiency": {r[0]: r[4] for r in rows}, "cores_busy": {r[0]: r[5] for r in rows}}
    result["threading"] = _threading(args, step[1], step[m], m)
    result["bubble"] = _bubbles(args, devices, m)
    result["inference_speedup"] = _inference(args, devices, m)
    result["setup_seconds"] = _setup(args, devices, m)
    result["memory_mib"] = _memory(args, devices, m)
    if args.peer == "torch":
        result["torch"] = _torch_peer(args, devices, m)
    return result


def _median_step(args, devices, m) -> float:
    seconds = []
    for _ in range(args.repeats):
        seconds += _run(args, devices, args.depth, args.batch_size, m, args.schedule, False).seconds[1:]
    return statistics.median(seconds)


def _threading(args, split_one, pipe_one, m) -> dict:
    """ModelSplit (M = 1) and GPipe (M) with one intra-op thread per op, as
    tfpar's configure_devices sets for a split CPU, and with TensorFlow's
    default (every op on every core), run in a process of its own."""
    default = {int(k): v for k, v in _child(args, "--tf_default_threading", f"--microbatches=1,{m}").items()}
    rows = [("1 per op (configure_devices)", split_one * 1000, pipe_one * 1000, split_one / pipe_one),
            ("TensorFlow's default", default[1] * 1000, default[m] * 1000, default[1] / default[m])]
    print(f"\nthreading: ModelSplit (M=1) and GPipe (M={m}) step times, and GPipe's speedup; "
          f"GPipe at one thread per op against ModelSplit at TensorFlow's default: "
          f"{default[1] / pipe_one:.2f}x")
    print(timing.table(rows, ("intra-op threads", "ModelSplit ms", "GPipe ms", "speedup")))
    return {"one_thread": split_one / pipe_one, "tf_default": default[1] / default[m],
            "gpipe_one_thread_over_split_default": default[1] / pipe_one}


def _child(args, *flags) -> dict:
    """Runs this bench in a new process (threading is fixed when TensorFlow
    starts) with `flags`; returns the JSON its last line prints."""
    command = [sys.executable, "-m", "tfpar.bench", "pipeline", *flags] + [
        f"--{name}={getattr(args, name)}" for name in (
            "devices", "schedule", "width", "depth", "batch_size", "steps", "repeats")]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if completed.returncode:
        raise RuntimeError(f"The bench's {flags[0]} run failed: {completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


class BubbleRecorder(keras.callbacks.Callback):
    """The measured bubble and its idle-while-ready part of every step after
    the first (tracing), from the pipeline's recorded timeline."""

    def __init__(self):
        super().__init__()
        self.bubbles, self.ready = [], []

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:
            return
        needs = self.model.task_needs
        tasks = tfpar.timeline.intervals(self.model.task_order, self.model.last_timeline(), needs)
        self.bubbles.append(tfpar.timeline.measured_bubble(tasks))
        self.ready.append(tfpar.timeline.ready_idle(tasks, needs))
        self.ideal = tfpar.timeline.ideal_bubble(tasks, len(self.model.plan.graph.stages))


def _bubbles(args, devices, m) -> dict:
    """Each schedule's measured bubble and its ideal, on the bench MLP and on
    the memory runs' deeper one: medians over every step after the first of
    every run. Stages are cut at layers, so a shallow MLP cannot balance
    zb1's stages (stage 0 computes no input gradient); a deeper one can
    more finely, which shows how much of the bubble is the schedule's."""
    rows, result = [], {}
    for depth in sorted({args.depth, args.memory_depth}):
        measured, ideal, steps, ready = {}, {}, {}, {}
        for _ in range(args.repeats):
            for schedule in schedule_lib.SCHEDULES:
                recorder = BubbleRecorder()
                timer = _run(args, devices, depth, args.batch_size, m, schedule, False,
                             record_timeline=True, callbacks=[recorder])
                measured.setdefault(schedule, []).extend(recorder.bubbles)
                ready.setdefault(schedule, []).extend(recorder.ready)
                steps.setdefault(schedule, []).extend(timer.seconds[1:])
                ideal[schedule] = recorder.ideal
        for s in schedule_lib.SCHEDULES:
            row = (f"{depth}x{args.width}", s, statistics.median(measured[s]),
                   statistics.median(ready[s]), ideal[s], statistics.median(steps[s]) * 1000)
            rows.append(row)
            result[s if depth == args.depth else f"{s}/depth {depth}"] = {
                "measured": row[2], "ready_idle": row[3], "ideal": row[4]}
    print(f"\nbubble per schedule, M={m} (recorded timelines; medians over {args.repeats} x "
          f"{args.steps - 1} steps; step times include the timeline's stamps). 'idle while "
          "ready': the part of the bubble when a stage's next task could already run (dispatch)")
    print(timing.table(rows, ("MLP", "schedule", "measured bubble", "idle while ready", "ideal",
                              "step ms")))
    return result


def _inference(args, devices, m) -> float:
    """predict's time per batch: pipelined (M micro-batches) vs stage after stage."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch_size * args.steps, args.width)).astype("float32")
    seconds = {1: [], m: []}
    model = _model(args, args.depth)
    for _ in range(args.repeats):
        for micro in seconds:
            # What predict_distributed runs, timed after its first batch (tracing).
            twin = tfpar.strategies.GPipe(devices, microbatches=micro).recreate(model)
            twin.predict(x[: args.batch_size], batch_size=args.batch_size, verbose=0)
            start = time.perf_counter()
            twin.predict(x, batch_size=args.batch_size, verbose=0)
            seconds[micro].append((time.perf_counter() - start) / args.steps)
    one, piped = statistics.median(seconds[1]), statistics.median(seconds[m])
    print(f"\npipelined inference (predict, batch {args.batch_size}; medians over {args.repeats} runs)")
    print(timing.table([("stage after stage (M=1)", one * 1000, 1.0),
                        (f"pipelined (M={m})", piped * 1000, one / piped)],
                       ("predict", "ms per batch", "speedup")))
    return one / piped


def _setup(args, devices, m) -> dict:
    """Seconds a one-epoch fit spends outside its steps, native Keras and
    fit_distributed per strategy (recreating the model, tracing)."""
    batch = args.batch_size
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * args.steps, args.width)).astype("float32")
    y = rng.integers(0, 10, size=batch * args.steps)
    # tf.distribute's own set-up (a replicated trace, per-device input
    # iterators) is what DataParallel builds on: the row beneath it.
    mirrored = tf.distribute.MirroredStrategy(list(devices))
    runs = {"native model.fit": None, "native fit, MirroredStrategy": mirrored,
            "DataParallel": lambda: tfpar.strategies.DataParallel(devices),
            "ModelSplit": lambda: tfpar.strategies.ModelSplit(devices),
            f"GPipe M={m}": lambda: tfpar.strategies.GPipe(devices, microbatches=m)}
    overhead = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, strategy in runs.items():
            timer = timing.StepTimer()
            if not isinstance(strategy, tf.distribute.Strategy):
                model = _model(args, args.depth)
            start = time.perf_counter()
            if strategy is None or isinstance(strategy, tf.distribute.Strategy):
                if strategy is not None:
                    with strategy.scope():  # as tf.distribute's users must, so timed
                        model = _model(args, args.depth)
                model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
            else:
                tfpar.fit_distributed(model, x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0,
                                      strategy=strategy(), callbacks=[timer])
            # The first step traces: counted as set-up, at the median step's cost.
            steps = statistics.median(timer.seconds[1:] or timer.seconds) * len(timer.seconds)
            overhead[name].append(time.perf_counter() - start - steps)
    rows = [(name, statistics.median(v)) for name, v in overhead.items()]
    print(f"\nset-up of a one-epoch fit: wall time minus {args.steps} median steps "
          f"(medians over {args.repeats} runs)")
    print(timing.table(rows, ("run", "set-up s")))
    return dict(rows)


def _memory(args, devices, m) -> dict:
    memory = {}
    for schedule in schedule_lib.SCHEDULES:
        for remat in (False, True):
            timer = _run(args, devices, args.memory_depth, args.memory_batch, m, schedule, remat)
            memory[(schedule, remat)] = statistics.median(timer.peak_bytes[1:] or timer.peak_bytes) / 2**20
    base = memory[("gpipe", False)]
    mem_rows = [(s, "on" if r else "off", memory[(s, r)], memory[(s, r)] / base) for (s, r) in memory]
    print(f"\npeak activation memory of a step, M={m}, MLP {args.memory_depth}x{args.width}, "
          f"batch {args.memory_batch} (peak allocation above the step's start; logical CPUs "
          "share one allocator, so this is all stages together)")
    print(timing.table(mem_rows, ("schedule", "rematerialize", "MiB", "vs gpipe, remat off")))
    return {f"{s}/{'remat' if r else 'keep'}": v for (s, r), v in memory.items()}


def _torch_peer(args, devices, m) -> dict:
    """tfpar and PyTorch side by side: each framework's one-thread one-device
    step and its pipeline schedules, on the same MLP, batch, M and cores."""
    try:
        import torch  # noqa: F401  (only checks that it is installed)
    except ImportError as error:
        raise SystemExit("--peer torch needs PyTorch: pip install 'tfpar[bench]' "
                         "(or pip install torch).") from error
    from tfpar.bench import torch_peer

    k, batch = len(devices), args.batch_size
    seconds = {}
    for _ in range(args.repeats):
        for schedule in schedule_lib.SCHEDULES:
            timer = _run(args, devices, args.depth, batch, m, schedule, False)
            seconds.setdefault(("tfpar", schedule), []).append(statistics.median(timer.seconds[1:]))
        seconds.setdefault(("torch", "one device"), []).append(
            torch_peer.run(1, "gpipe", args.width, args.depth, batch, m, args.steps))
        for schedule in ("gpipe", "1f1b"):
            seconds.setdefault(("torch", schedule), []).append(
                torch_peer.run(k, schedule, args.width, args.depth, batch, m, args.steps))
    step = {key: statistics.median(v) for key, v in seconds.items()}
    # Keras' own step on one device and one thread, in a process of its own;
    # in this process (one intra-op thread, two inter-op) it keeps 1.4 cores busy.
    step[("tfpar", "one device")] = _child(args, "--one_thread_step")["median_seconds"]
    rows = []
    for (framework, run), value in step.items():
        base = step[(framework, "one device")]
        rows.append((framework, run, value * 1000, batch / value, base / value))
    best = {f: min(v for (fw, r), v in step.items() if fw == f and r != "one device")
            for f in ("tfpar", "torch")}
    gain = {f: step[(f, "one device")] / best[f] for f in best}
    print(f"\ntfpar and PyTorch on the same {k} cores: MLP {args.depth}x{args.width}, batch {batch}, "
          f"M={m}; pipelines on {k} stages of one thread each (torch: {k} gloo processes); "
          f"one device: one thread, inter- and intra-op; medians over {args.repeats} runs")
    print(timing.table(rows, ("framework", "run", "step ms", "samples/s", "gain over own one-device")))
    ratio = best["torch"] / best["tfpar"]
    print(f"tfpar's best pipeline / torch's best, in samples/s: {ratio:.2f}x; gain over its own "
          f"one-device step: tfpar {gain['tfpar']:.2f}x, torch {gain['torch']:.2f}x")
    return {"step_seconds": {f"{f}/{r}": v for (f, r), v in step.items()}, "tfpar_over_torch": ratio,
            "gain": gain}


def _one_device(args) -> float:
    model = _model(args, args.depth)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch_size * args.steps, args.width)).astype("float32")
    y = rng.integers(0, 10, size=args.batch_size * args.steps)
    timer = timing.StepTimer()
    model.fit(x, y, batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
    return statistics.median(timer.seconds[1:])


def _model(args, depth) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = tfpar.models.mlp(args.width, 10, hidden=[args.width] * depth)
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _run(args, devices, depth, batch, m, schedule, remat, *, record_timeline=False,
         callbacks=()) -> StepTimer:
    model = _model(args, depth)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * args.steps, args.width)).astype("float32")
    y = rng.integers(0, 10, size=batch * args.steps)
    timer = timing.StepTimer()
    strategy = tfpar.strategies.GPipe(devices, microbatches=m, schedule=schedule, rematerialize=remat,
                                      record_timeline=record_timeline)
    tfpar.fit_distributed(model, x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0,
                          strategy=strategy, callbacks=[timer, *callbacks])
    return timer
