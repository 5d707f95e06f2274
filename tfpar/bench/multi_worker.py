"""Multi-worker scaling: 1 worker x 1 thread vs 2 workers x 1 thread.

Weak scaling, as Horovod reports it: each worker keeps the same per-worker
batch, so 2 workers do twice the work per step. Each run is a job started by
`tfpar.launch` on loopback; the chief reports samples/s from the median
epoch time after the first. Scaling efficiency = samples/s(2) / (2 x
samples/s(1)). Runs alternate across repeats; medians are reported.

The same run also measures the machine's own ceiling: N one-worker jobs at
once, each alone in its cluster (no communication). Their combined samples/s
over N x samples/s(1) is the best any data-parallel engine can reach on this
host, because the processes share its caches, memory bandwidth and cores;
multi-worker samples/s over that combined rate is what the distribution
itself keeps.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import statistics
import sys
import threading

from tfpar.bench import timing
from tfpar.cluster import launch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--per_worker_batch", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=4, help="per run; the first is warm-up")
    parser.add_argument("--steps", type=int, default=8, help="steps per epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compression", default=None, choices=["fp16", "bf16", "powersgd"])
    parser.add_argument("--bytes_per_pack", default="0,1048576",
                        help="comma-separated values to compare (0: one pack after the whole backward)")
    parser.add_argument("--steps_per_execution", default="1,8",
                        help="comma-separated values to compare (steps per call of the train function)")
    parser.add_argument("--bare", type=int, default=1,
                        help="1: also time a bare strategy.run loop (no Keras), the floor for any step")
    parser.add_argument("--spe", type=int, default=1, help=argparse.SUPPRESS)  # a worker's value
    parser.add_argument("--loop", default="fit", choices=["fit", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--role", default="driver", choices=["driver", "worker"], help=argparse.SUPPRESS)


def main(args: argparse.Namespace) -> dict:
    if args.role == "worker":
        return _worker(args)
    packs = [int(v) for v in str(args.bytes_per_pack).split(",")]
    executions = [int(v) for v in str(args.steps_per_execution).split(",")]
    layouts = [(pack, spe) for spe in executions for pack in packs]
    # One worker has no peer to reduce with, so bytes_per_pack cannot change
    # its speed: one baseline, measured in every repeat, serves every row.
    alone, rates, independent = [], {layout: [] for layout in layouts}, []
    bare_alone, bare = [], []
    for _ in range(args.repeats):
        alone.append(_job(args, 1, 0, 1))
        for pack, spe in layouts:
            rates[(pack, spe)].append(_job(args, args.workers, pack, spe))
        independent.append(_independent_jobs(args))
        if args.bare:
            bare_alone.append(_job(args, 1, 0, 1, loop="bare"))
            bare.append(_job(args, args.workers, 0, 1, loop="bare"))
    one = statistics.median(alone)
    ceiling = statistics.median(independent) / (args.workers * one)
    rows, result = [("one worker", 1, one, 1.0, 1.0 / ceiling)], {}
    for pack, spe in layouts:
        many = statistics.median(rates[(pack, spe)])
        result[(pack, spe)] = many / (args.workers * one)
        rows.append((f"multi-worker, bytes_per_pack={pack}, steps_per_execution={spe}", args.workers,
                     many, result[(pack, spe)], result[(pack, spe)] / ceiling))
    if args.bare:
        # The same step with no Keras and no tfpar: a tape, one all-reduce
        # of the gradients, an SGD update. What it keeps of the ceiling is
        # what TensorFlow's collectives keep on this host, whatever the step.
        lone, pair = statistics.median(bare_alone), statistics.median(bare)
        rows.append(("bare strategy.run loop, one worker", 1, lone, lone / one, lone / one / ceiling))
        rows.append(("bare strategy.run loop", args.workers, pair, pair / (args.workers * lone),
                     pair / (args.workers * lone) / ceiling))
    rows.append((f"{args.workers} independent 1-worker jobs", args.workers,
                 statistics.median(independent), ceiling, 1.0))
    print(f"multi-worker data parallel on loopback, 1 thread per worker, MLP width "
          f"{args.width}, {args.per_worker_batch} samples per worker per step, compression "
          f"{args.compression}; medians of {args.repeats} runs")
    print(timing.table(rows, ("run", "workers", "samples/s", "scaling efficiency", "vs ceiling")))
    best = max(result, key=result.get)
    print(f"scaling efficiency: {result[best]:.3f} with bytes_per_pack={best[0]}, "
          f"steps_per_execution={best[1]} (goal >= 0.85; Horovod's headline 0.90)")
    print(f"machine ceiling (independent processes, no communication): {ceiling:.3f}")
    print(f"multi_worker efficiency_vs_ceiling={result[best] / ceiling:.2f}")
    return {"efficiency": {f"{p}/{e}": v for (p, e), v in result.items()}, "ceiling": ceiling,
            "efficiency_vs_ceiling": result[best] / ceiling}


def _independent_jobs(args) -> float:
    """Combined samples/s of N one-worker jobs running at the same time."""
    results = [None] * args.workers

    def run(i):
        results[i] = _job(args, 1, 0, 1)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(args.workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if None in results:
        raise RuntimeError("an independent benchmark job failed; see the messages above")
    return sum(results)


def _job(args, workers: int, bytes_per_pack: int, steps_per_execution: int, loop: str = "fit") -> float:
    command = [sys.executable, "-m", "tfpar.bench", "multi_worker", "--role", "worker",
               f"--per_worker_batch={args.per_worker_batch}", f"--width={args.width}",
               f"--epochs={args.epochs}", f"--steps={args.steps}", f"--spe={steps_per_execution}",
               f"--loop={loop}"]
    # Packs smaller than the gradients let the all-reduce of the last layers'
    # gradients start while the backward pass is still computing the first.
    options = {"compression": args.compression, "bytes_per_pack": bytes_per_pack}
    # A crash in TensorFlow's C++ start-up leaves no Python traceback; the
    # fault handler prints where it happened.
    env = dict(os.environ, PYTHONFAULTHANDLER="1")

    def run():
        out = io.StringIO()
        code = launch.launch(command, workers, threads_per_worker=1, strategy_options=options,
                             out=out, env=env)
        failure = (f"benchmark job with {workers} worker(s) failed ({_exit_status(code)}):\n"
                   f"{out.getvalue()[-3000:]}")
        return code, [line for line in out.getvalue().splitlines() if "BENCH " in line], failure

    code, lines, failure = run()
    if code < 0:
        # A worker killed by a signal (seen once under the test suite's load,
        # in TensorFlow's start-up) says nothing about the speed measured:
        # one more try, with the crash shown. Any other failure is the
        # program's and ends the run.
        print(f"{failure}\nretrying the job once", file=sys.stderr, flush=True)
        code, lines, failure = run()
    if code != 0 or not lines:
        raise RuntimeError(failure)
    return json.loads(lines[0].split("BENCH ", 1)[1])["samples_per_second"]


def _exit_status(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _worker(args) -> dict:
    import keras  # Late: `import tfpar` made the MultiWorker strategy first.
    import numpy as np

    import tfpar

    strategy = tfpar.strategies.MultiWorker.current()
    workers = strategy.num_replicas_in_sync
    batch = args.per_worker_batch * workers
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * args.steps, 256)).astype("float32")
    y = rng.integers(0, 10, size=batch * args.steps)
    keras.utils.set_random_seed(0)
    model = tfpar.models.mlp(256, 10, hidden=(args.width, args.width))
    if args.loop == "bare":
        rate = _bare_loop(args, strategy, model, x, y, batch)
        if strategy.is_chief:
            print("BENCH " + json.dumps({"workers": workers, "samples_per_second": rate}), flush=True)
        return {"samples_per_second": rate}
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=args.spe)
    timer = timing.EpochTimer()
    tfpar.fit_distributed(model, x, y, batch_size=batch, epochs=args.epochs, shuffle=False,
                          verbose=0, strategy="multi_worker", callbacks=[timer])
    rate = batch * args.steps / statistics.median(timer.seconds[1:])
    if strategy.is_chief:
        print("BENCH " + json.dumps({"workers": workers, "samples_per_second": rate}), flush=True)
    return {"samples_per_second": rate}


def _bare_loop(args, strategy, model, x, y, batch: int) -> float:
    """Samples/s of a hand-written step: forward and backward under a tape,
    one all-reduce of every gradient, plain SGD. No Keras fit, no tfpar."""
    import time

    import keras
    import tensorflow as tf

    with strategy.scope():
        model.build((None, x.shape[1]))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")
    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).repeat())
    batches = iter(dataset)

    def replica_step(features, labels):
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(features, training=True)) / batch
        grads = tape.gradient(loss, model.trainable_variables)
        grads = tf.distribute.get_replica_context().all_reduce("sum", grads)
        for variable, grad in zip(model.trainable_variables, grads):
            variable.assign_sub(0.01 * grad)
        return loss

    @tf.function
    def step(features, labels):
        return strategy.run(replica_step, args=(features, labels))

    seconds = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        for _ in range(args.steps):
            loss = step(*next(batches))
        strategy.experimental_local_results(loss)[0].numpy()  # wait for the last step
        seconds.append(time.perf_counter() - start)
    return batch * args.steps / statistics.median(seconds[1:])
