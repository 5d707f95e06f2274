"""The planner's predictions against measurement, on 4 logical CPUs.

For each model (an MLP, the residual CNN, the Transformer), `tfpar.plan`
predicts every layout; then every feasible candidate trains for a few
steps with `fit_distributed`, each in a new process (as a user's training
would run) unless --in_process. The table gives, per candidate, predicted and
measured step time (median over the steps after the first) and peak memory
(the most the process's allocator held during a step, over what it held
before training started: the logical CPUs share one allocator, so the
prediction compared is the sum over the devices used), the mean absolute relative errors, and where the
chosen plan ranks among the measured ones.

Goals (issue 11): step-time error <= 15% on average, memory error <= 20%,
chosen plan within 10% of the best measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys

import keras
import numpy as np

from tfpar.bench import timing
from tfpar.planner import trials
import tfpar

MODELS = ("mlp", "cnn", "transformer")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {MODELS}")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="per candidate, after the warm-up")
    parser.add_argument("--warmup", type=int, default=3, help="steps per candidate not timed (tracing, allocation)")
    parser.add_argument("--json", default="", help="also write every candidate's terms and measurements here")
    parser.add_argument("--uncalibrated", action="store_true",
                        help="tfpar.plan(calibrate=False): the layers' timings as measured")
    parser.add_argument("--in_process", action="store_true",
                        help="measure every candidate in this process (faster, but later candidates then "
                             "run beside all the earlier ones' traced functions, which slowed the "
                             "Transformer's steps by up to a third); by default each runs in a new process")
    parser.add_argument("--measure", default="", help=argparse.SUPPRESS)  # a child's layout, as JSON
    parser.add_argument("--max_candidates", type=int, default=0,
                        help="measure only N feasible candidates (0: all): the best predicted half of them "
                             "and the rest spread evenly over the others' ranking")


def main(args: argparse.Namespace) -> dict:
    # One intra-op thread per logical CPU on 2 cores ("auto"), as the other
    # benchmarks run; in a process that started TensorFlow, its threads.
    tfpar.configure_devices(cpu=4)
    if args.measure:
        return _measure_child(args)
    results = {}
    for name in str(args.models).split(","):
        results[name] = _bench_model(name, args)
        if args.json:  # after each model: a long run keeps what it measured
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    print("summary: " + "; ".join(
        f"{name}: time error {r['time_error']:.1%} (held out {r['held_out_time_error']:.1%}), memory "
        f"error {r['memory_error']:.1%} (held out {r['held_out_memory_error']:.1%}), chosen "
        f"rank {r['chosen_rank']} of {r['measured']} ({r['chosen_vs_best']:.2f}x the best)"
        for name, r in results.items()))
    time_error = statistics.mean(r["time_error"] for r in results.values())
    memory_error = statistics.mean(r["memory_error"] for r in results.values())
    worst = max(r["chosen_vs_best"] for r in results.values())
    print(f"plan time_error={time_error:.3f} memory_error={memory_error:.3f} chosen_vs_best={worst:.3f}")
    return {"models": results, "time_error": time_error, "memory_error": memory_error,
            "chosen_vs_best": worst}


def _model_and_data(name: str, batch_size: int, steps: int):
    rng = np.random.default_rng(0)
    samples = batch_size * steps
    keras.utils.set_random_seed(0)
    if name == "mlp":
        model = tfpar.models.mlp(256, 10, hidden=(512, 512, 512, 512))
        x = rng.normal(size=(samples, 256)).astype("float32")
        y = rng.integers(0, 10, size=samples)
    elif name == "cnn":
        model = tfpar.models.residual_cnn((16, 16, 3), 10)
        x = rng.normal(size=(samples, 16, 16, 3)).astype("float32")
        y = rng.integers(0, 10, size=samples)
    elif name == "transformer":
        model = tfpar.models.transformer(64, 16, 16)
        x = [rng.integers(1, 64, size=(samples, 16)), rng.integers(1, 64, size=(samples, 16))]
        y = rng.integers(1, 64, size=(samples, 16))
    else:
        raise ValueError(f"--models takes {list(MODELS)}. Received: {name!r}.")
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, x, y


def _bench_model(name: str, args) -> dict:
    model, x, y = _model_and_data(name, args.batch_size, args.steps + args.warmup)
    plan = tfpar.plan(model, args.batch_size, calibrate=not args.uncalibrated)
    print(f"\n{name}: {model.count_params():,} parameters")
    print(plan)
    print(f"calibrated coefficients: time {[round(c, 3) for c in plan.coefficients.time]}, "
          f"memory {[round(c, 3) for c in plan.coefficients.memory]}")
    feasible = [c for c in plan.candidates if c.feasible]
    if args.max_candidates:
        feasible = spread(feasible, args.max_candidates)
    rows, measured, records = [], {}, []
    for candidate in feasible:
        if args.in_process:
            seconds, peak = _measure(model, x, y, candidate.strategy, args)
        else:
            seconds, peak = _measure_in_child(name, candidate, args)
        measured[candidate.name] = seconds
        # Ran during planning: an anchor, or one of the fastest, run to
        # confirm the choice; either way the last fit saw it.
        ran = "anchor" if candidate.anchor else ("confirm" if candidate.measured_step_seconds else "")
        records.append({"name": candidate.name, "ran": ran,
                        "terms": list(candidate.prediction.terms),
                        "memory": [list(device) for device in candidate.prediction.memory],
                        "predicted_seconds": candidate.predicted_step_seconds, "seconds": seconds,
                        "predicted_peak": sum(candidate.predicted_peak_bytes), "peak": peak})
        predicted_peak = sum(candidate.predicted_peak_bytes)
        rows.append((candidate.name, ran, candidate.predicted_step_seconds * 1e3, seconds * 1e3,
                     _error(candidate.predicted_step_seconds, seconds), predicted_peak / 2 ** 20,
                     peak / 2 ** 20, _error(predicted_peak, peak)))
    print(timing.table(rows, ("layout", "ran in plan", "predicted ms", "measured ms", "time error",
                              "predicted MiB", "measured MiB", "memory error")))
    # The errors of the layouts the plan ran are those of a fit; the
    # others' are predictions.
    held_out = [r for r in rows if not r[1]] or rows
    order = sorted(measured, key=measured.get)
    chosen = plan.chosen.name
    rank = order.index(chosen) + 1 if chosen in measured else None
    result = {
        "time_error": statistics.mean(abs(r[4]) for r in rows),
        "memory_error": statistics.mean(abs(r[7]) for r in rows),
        "held_out_time_error": statistics.mean(abs(r[4]) for r in held_out),
        "held_out_memory_error": statistics.mean(abs(r[7]) for r in held_out),
        "fitted": sum(1 for r in rows if r[1]),
        "chosen": chosen, "chosen_rank": rank, "measured": len(order),
        "chosen_vs_best": measured.get(chosen, float("nan")) / measured[order[0]],
        "best": order[0], "candidates": records,
        # What prediction alone would have chosen, before the confirmations.
        "predicted_choice_vs_best": measured[min(feasible, key=lambda c: c.predicted_step_seconds).name]
        / measured[order[0]],
    }
    print(f"{name}: chosen {chosen}, measured rank {rank} of {len(order)}, "
          f"{result['chosen_vs_best']:.2f}x the best measured ({order[0]}; by prediction alone "
          f"{result['predicted_choice_vs_best']:.2f}x); mean |time error| "
          f"{result['time_error']:.1%} ({result['held_out_time_error']:.1%} without the "
          f"{result['fitted']} that ran in the plan), mean |memory error| {result['memory_error']:.1%} "
          f"({result['held_out_memory_error']:.1%})")
    return result


def spread(ranked: list, n: int) -> list:
    """n of `ranked`: the first half of them (where the choice is made), the
    rest evenly spaced over the others (what the mean error is over).

    >>> spread(list(range(10)), 6)   # 0-2, then 3 to 9 evenly
    [0, 1, 2, 3, 6, 9]
    """
    if n >= len(ranked):
        return list(ranked)
    head, rest = ranked[:(n + 1) // 2], ranked[(n + 1) // 2:]
    tail = n - len(head)
    return head + [rest[round(i * (len(rest) - 1) / max(tail - 1, 1))] for i in range(tail)] if tail else head


def _measure(model, x, y, strategy, args) -> tuple[float, float]:
    """Median step seconds after the warm-up, and the largest bytes the
    allocator held during a step over what it held before training: the
    twin's weights, gradients, optimizer state and activations."""
    import tensorflow as tf

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    copy.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    timer = timing.StepTimer()
    data = trials.as_dataset(x, y, args.batch_size)  # its bytes are the data's, not the layout's
    gc.collect()  # the previous candidate's twin and functions, freed first
    # Logical CPUs share one allocator: CPU:0 reports the whole process.
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    tfpar.fit_distributed(copy, data, epochs=1, shuffle=False, verbose=0, strategy=strategy, callbacks=[timer])
    # StepTimer's peaks are over each step's start; its bases add back.
    peaks = [peak + base - before for peak, base in zip(timer.peak_bytes, timer.base_bytes)]
    return statistics.median(timer.seconds[args.warmup:]), max(peaks[args.warmup:])


def _measure_in_child(name: str, candidate, args) -> tuple[float, float]:
    """`_measure` in a new process: the same model (same seed), data and
    layout, with nothing else traced beside it, as when a user trains."""
    layout = json.dumps({"kind": candidate.kind, "options": candidate.options})
    command = [sys.executable, "-m", "tfpar.bench", "plan", f"--models={name}", f"--measure={layout}"] + [
        f"--{flag}={getattr(args, flag)}" for flag in ("batch_size", "steps", "warmup")]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if completed.returncode:
        raise RuntimeError(f"Measuring {candidate.name} failed: {completed.stderr[-2000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    return result["seconds"], result["peak"]


def _measure_child(args) -> dict:
    """The child's side of `_measure_in_child`: prints one JSON line."""
    from tfpar.planner import plans, search

    layout = json.loads(args.measure)
    model, x, y = _model_and_data(args.models, args.batch_size, args.steps + args.warmup)
    strategy = plans.strategy_for(search.Candidate("", layout["kind"], layout["options"], 0.0, []))
    seconds, peak = _measure(model, x, y, strategy, args)
    print(json.dumps({"seconds": seconds, "peak": peak}))
    return {"seconds": seconds, "peak": peak}


def _error(predicted: float, measured: float) -> float:
    return (predicted - measured) / measured if measured else float("nan")
