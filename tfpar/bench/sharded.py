"""Sharded data parallel: memory and step time of each ZeRO level.

A keras_hub GPT-2 causal LM (12 layers, width 256 by default, tied
embeddings) with Adam, trained by `DataParallel(R, shard=...)` at R = 1, 2,
4 on logical CPUs, one thread each. Per level and R:

- state held per device: the bytes of the weights and optimizer slots
  whose variables live on each replica's device (read from the trained
  variables' placement, the median over devices), plus the summed gradient
  each replica holds for its update (all of it replicated and at
  "optimizer", its share's at "gradients");
- the step's peak: the most TensorFlow's allocator held during a step, over
  all replicas (logical CPUs share one allocator), divided by R;
- step time, the median over the steps after the first of every repeat
  (the levels alternate within a repeat, so that machine noise hits them
  alike);
- bytes each replica sends per step: a ring all-reduce of G bytes sends
  2(R-1)/R G, a reduce-scatter or all-gather (R-1)/R of what it exchanges;
  the ideal is a plain all-reduce's (ZeRO's own figure: 1x for stages 1-2
  when the all-reduce is a reduce-scatter plus an all-gather).

The last line: `sharded R=4 state_vs_replicated optimizer=X gradients=Y
weights=Z step_vs_replicated optimizer=A gradients=B weights=C`, each
against replicated data parallel at R = 4 ("n/a" for a level tfpar does
not have yet).
"""

from __future__ import annotations

import argparse
import statistics

import keras
import numpy as np
import tensorflow as tf

from tfpar.bench import timing
import tfpar

LEVELS = (None, "optimizer", "gradients")
ALL_LEVELS = (*LEVELS[1:], "weights")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--replicas", default="1,2,4", help="values of R")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--vocabulary", type=int, default=2048)
    parser.add_argument("--sequence", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=16, help="global batch")
    parser.add_argument("--steps", type=int, default=5, help="per run; the first is warm-up")
    parser.add_argument("--repeats", type=int, default=2)


def main(args: argparse.Namespace) -> dict:
    replicas = [int(r) for r in args.replicas.split(",")]
    tfpar.configure_devices(cpu=max(replicas), intra_op_threads=1)
    rng = np.random.default_rng(0)
    samples = args.batch_size * args.steps
    ids = rng.integers(1, args.vocabulary, size=(samples, args.sequence + 1))
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones((samples, args.sequence), "int32")}
    y = ids[:, 1:]
    runs = [(r, level) for r in replicas for level in (LEVELS if r > 1 else (None,))]
    seconds = {run: [] for run in runs}
    measured = {}
    for _ in range(args.repeats):
        for r, level in runs:
            step_seconds, memory = _run(args, r, level, x, y)
            seconds[(r, level)].extend(step_seconds[1:])
            measured[(r, level)] = memory
    rows, result = [], {}
    for r, level in runs:
        memory = measured[(r, level)]
        base = measured[(r, None)]
        step = statistics.median(seconds[(r, level)])
        base_step = statistics.median(seconds[(r, None)])
        result[(r, level)] = dict(memory, step_seconds=step)
        rows.append((r, level or "none", memory["weights"] / 2**20, memory["gradients"] / 2**20,
                     memory["optimizer"] / 2**20, memory["state"] / 2**20, memory["state"] / base["state"],
                     memory["peak"] / 2**20, memory["peak"] / base["peak"], step * 1000, step / base_step,
                     memory["sent"] / 2**20, memory["sent"] / base["sent"] if base["sent"] else 1.0))
    parameters = measured[runs[0]]["parameters"]
    print(f"sharded data parallel: keras_hub GPT2CausalLM {args.layers} layers, width {args.width}, "
          f"vocabulary {args.vocabulary} ({parameters / 1e6:.1f}M parameters), Adam, batch "
          f"{args.batch_size} x {args.sequence} tokens, logical CPUs with one thread each; "
          f"state per device = weights + summed gradient + optimizer slots on it (median device); "
          f"peak = the step's allocator peak, all replicas, / R; medians of {args.repeats} repeats")
    print(timing.table(rows, ("R", "shard", "weights MiB", "grads MiB", "slots MiB", "state MiB",
                              "vs none", "peak MiB", "vs none", "step ms", "vs none", "sent MiB/step",
                              "vs all-reduce")))
    top = max(replicas)
    ideal = {"optimizer": (4 + 4 + 8 / top) / 16, "gradients": (4 + (4 + 8) / top) / 16,
             "weights": 16 / top / 16}
    print("ideal state vs none at R=%d (Adam, 16 bytes per parameter): " % top
          + ", ".join(f"{level} {ideal[level]:.3f}" for level in ALL_LEVELS))
    state, step = [], []
    for level in ALL_LEVELS:
        if (top, level) in result and top > 1:
            state.append(f"{level}={result[(top, level)]['state'] / result[(top, None)]['state']:.3f}")
            step.append(f"{level}={result[(top, level)]['step_seconds'] / result[(top, None)]['step_seconds']:.3f}")
        else:
            state.append(f"{level}=n/a")
            step.append(f"{level}=n/a")
    print(f"sharded R={top} state_vs_replicated {' '.join(state)} step_vs_replicated {' '.join(step)}")
    return result


def _model(args) -> keras.Model:
    import keras_hub  # pylint: disable=import-outside-toplevel  (only this benchmark needs it)

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=args.vocabulary, num_layers=args.layers, num_heads=4, hidden_dim=args.width,
        intermediate_dim=4 * args.width, max_sequence_length=args.sequence, dropout=0.0)
    model = keras_hub.models.GPT2CausalLM(backbone, preprocessor=None)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _run(args, replicas: int, level, x, y) -> tuple[list, dict]:
    model = _model(args)
    strategy = tfpar.strategies.DataParallel(replicas, shard=level)
    timer = timing.StepTimer()
    held = _Held(strategy, level)
    tfpar.fit_distributed(model, x, y, batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0,
                          callbacks=[timer, held], strategy=strategy)
    peak = statistics.median(b + p for b, p in zip(timer.base_bytes[1:], timer.peak_bytes[1:]))
    return timer.seconds, dict(held.bytes, peak=peak / replicas)


class _Held(keras.callbacks.Callback):
    """Bytes of state each replica's device holds, read at the end of
    training from where the variables are."""

    def __init__(self, strategy, level):
        super().__init__()
        self.strategy, self.level, self.bytes = strategy, level, {}

    def on_train_end(self, logs=None):
        devices = [tf.DeviceSpec.from_string(d).to_string() for d in self.strategy.extended.worker_devices]
        weights = _by_device([v.value for v in self.model.weights], devices)
        optimizer = self.model.optimizer
        inner = getattr(optimizer, "inner_optimizer", optimizer)
        shards = getattr(inner, "shards", None)
        slots = [v.value for v in optimizer.variables if _is_slot(v)]
        if shards is not None:
            slots += [v.value for shard in shards.optimizers for v in shard.variables if _is_slot(v)]
        slots = _by_device(slots, devices)
        dense = sum(v.numpy().nbytes for v in self.model.trainable_weights)
        replicas = len(devices)
        if shards is not None and shards.scatters:
            grads = list(shards.bytes_per_replica)
            sent = (replicas - 1) / replicas * (shards.scattered_bytes + shards.gathered_bytes)
        else:
            grads = [dense] * replicas
            sent = 2 * (replicas - 1) / replicas * dense
            if shards is not None:
                sent += (replicas - 1) / replicas * shards.gathered_bytes
        states = [w + g + s for w, g, s in zip(weights, grads, slots)]
        middle = sorted(range(replicas), key=lambda r: states[r])[replicas // 2]
        self.bytes = {"weights": weights[middle], "gradients": grads[middle], "optimizer": slots[middle],
                      "state": states[middle], "sent": sent,
                      "parameters": sum(v.shape.num_elements() for v in self.model.trainable_weights)}


def _is_slot(variable) -> bool:
    """An optimizer variable of a weight's shape (a moment), not a counter
    or the learning rate."""
    return len(variable.shape) > 0


def _by_device(variables, devices: list[str]) -> list[int]:
    """Bytes of `variables` on each device (a mirrored variable has a copy
    on every one)."""
    held = [0] * len(devices)
    for variable in variables:
        for component in getattr(variable, "values", (variable,)):
            where = tf.DeviceSpec.from_string(component.device).to_string()
            for r, device in enumerate(devices):
                if _same_device(where, device):
                    held[r] += component.shape.num_elements() * component.dtype.size
    return held


def _same_device(a: str, b: str) -> bool:
    a, b = tf.DeviceSpec.from_string(a), tf.DeviceSpec.from_string(b)
    return a.device_type == b.device_type and (a.device_index or 0) == (b.device_index or 0)
