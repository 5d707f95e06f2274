"""The tfpar training binary: `python -m tfpar.train` (absl flags).

Reads top to bottom in phases: flags, devices, data, model, strategy, train,
evaluate, save. With no flags it trains an MLP on the UCI digits that ship
with scikit-learn, data parallel over every local device, and reports the
held-out accuracy.

    python -m tfpar.train --virtual_devices=2 --epochs=20 --save=/tmp/digits.keras
    python -m tfpar.train --dataset=reversal --strategy=gpipe --virtual_devices=2 \\
        --microbatches=8 --timeline=/tmp/step
    python -m tfpar.train --flagfile=job.flags
"""

from __future__ import annotations

import math
import sys
import time

from absl import app, flags

from tfpar import datasets as datasets_lib

FLAGS = flags.FLAGS
MODELS = ("auto", "mlp", "cnn", "transformer")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
PIPELINES = ("split", "gpipe")  # strategies made once the model is known (balance)
flags.DEFINE_enum("model", "auto", MODELS,
                  "Reference model; auto: transformer for sequence pairs, cnn for images, mlp otherwise.")
flags.DEFINE_string("dataset", "digits", f"One of: {', '.join(datasets_lib.DATASETS)}.")
flags.DEFINE_enum("strategy", "mirrored", ["mirrored", "split", "gpipe", "multi_worker", "auto"],
                  "How to spread training; auto: tfpar.plan predicts every layout on the "
                  "devices, prints the table and trains with the fastest that fits.")
flags.DEFINE_integer("virtual_devices", None, "Split each CPU into this many logical devices.", lower_bound=1)
flags.DEFINE_integer("devices", None, "Use the first N local devices (default: all).", lower_bound=1)
flags.DEFINE_integer("microbatches", None,
                     "Micro-batches per batch (gpipe; default 4) or per replica's share "
                     "(mirrored, multi_worker: gradients summed locally, one all-reduce per "
                     "step; default 1).", lower_bound=1)
flags.DEFINE_integer("data_parallel", 1,
                     "Pipeline replicas trained data parallel (split, gpipe): the devices are "
                     "read as this many groups, one replica each.", lower_bound=1)
flags.DEFINE_enum("compression", "none", ["none", "fp16", "bf16", "powersgd"],
                  "How data-parallel gradients travel (mirrored; for multi_worker give it to "
                  "tfpar.launch): cast to fp16/bf16, or PowerSGD rank-2 factors.")
flags.DEFINE_enum("shard", "none", ["none", "optimizer", "gradients"],
                  "mirrored: optimizer = each replica holds the optimizer state of its share of "
                  "the weights (ZeRO-1); gradients = and only its share's summed gradient (ZeRO-2).")
flags.DEFINE_string("balance", "auto",
                    "Layers per stage (split, gpipe): params, flops, time, a list such as 5,3, or "
                    "auto (the encoder/decoder split for the transformer on 2 devices, else params).")
flags.DEFINE_enum("schedule", "gpipe", ["gpipe", "1f1b", "zb1"], "Pipeline schedule (gpipe).")
flags.DEFINE_bool("rematerialize", False, "Recompute stage activations in the backward (gpipe).")
flags.DEFINE_integer("batch_size", 64, "Global batch size.", lower_bound=1)
flags.DEFINE_integer("epochs", 30, "Passes over the training data.", lower_bound=1)
flags.DEFINE_float("learning_rate", 1e-3, "Optimizer learning rate.")
flags.DEFINE_enum("optimizer", "adam", OPTIMIZERS, "Optimizer.")
flags.DEFINE_integer("seed", 0, "Seed for weights and data order.")
flags.DEFINE_string("checkpoint_dir", None, "Save and resume training state here.")
flags.DEFINE_integer("checkpoint_every", 20, "Steps between checkpoints (with --checkpoint_dir).",
                     lower_bound=1)
flags.DEFINE_string("tensorboard_dir", None, "Write TensorBoard logs here (the chief only).")
flags.DEFINE_string("timeline", None,
                    "Pipeline strategies: write the last step's timeline to PREFIX.png and "
                    "PREFIX.json (Chrome trace) and print the measured bubble.")
flags.DEFINE_string("save", "tfpar_model.keras",
                    "Write the trained model to this .keras path ('' to skip).")


def _check(condition: bool, message: str) -> bool:
    if not condition:
        raise flags.ValidationError(message)
    return True


# Checked by absl when the flags are parsed, before anything trains.
flags.register_validator("learning_rate", lambda v: v > 0, "--learning_rate must be > 0.")
flags.register_validator("save", lambda v: not v or v.endswith(".keras"), "--save must end in .keras.")
flags.register_validator(
    "balance", lambda v: v in ("auto", "params", "flops", "time") or all(
        p.strip().isdigit() and int(p) > 0 for p in v.split(",")),
    "--balance must be auto, params, flops, time or layer counts such as 5,3.")


@flags.multi_flags_validator(["timeline", "strategy"])
def _timeline_needs_a_pipeline(values) -> bool:
    return _check(not values["timeline"] or values["strategy"] == "gpipe",
                  "--timeline records a pipeline; use it with --strategy=gpipe. Received: "
                  f"--strategy={values['strategy']}.")


@flags.multi_flags_validator(["strategy", "virtual_devices", "devices"])
def _multi_worker_devices(values) -> bool:
    for name in ("virtual_devices", "devices"):
        _check(values["strategy"] != "multi_worker" or values[name] is None,
               f"--{name} does not apply to --strategy=multi_worker: each worker trains one "
               f"replica per local device, set up when tfpar starts. Received: --{name}={values[name]}.")
    return True


@flags.multi_flags_validator(["shard", "compression"])
def _shard_without_powersgd(values) -> bool:
    return _check(values["shard"] == "none" or values["compression"] != "powersgd",
                  f"--shard={values['shard']} with --compression=powersgd: PowerSGD keeps error feedback "
                  "for every weight on every replica, which sharded state does not pair with. Use "
                  "--compression=none, fp16 or bf16 with --shard.")


# Flags each strategy does not take, with their defaults.
_NOT_FOR = {
    "split": (("microbatches", None), ("schedule", "gpipe"), ("rematerialize", False),
              ("compression", "none"), ("shard", "none")),
    "gpipe": (("compression", "none"), ("shard", "none")),
    "auto": (("microbatches", None), ("compression", "none"), ("shard", "none"), ("balance", "auto"),
             ("schedule", "gpipe"), ("rematerialize", False), ("data_parallel", 1)),
    "mirrored": (("balance", "auto"), ("schedule", "gpipe"), ("rematerialize", False), ("data_parallel", 1)),
    "multi_worker": (("shard", "none"), ("balance", "auto"), ("schedule", "gpipe"), ("rematerialize", False),
                     ("data_parallel", 1)),
}


@flags.multi_flags_validator(["strategy", "microbatches", "schedule", "rematerialize", "compression",
                              "shard", "balance", "data_parallel"])
def _flags_of_the_strategy(values) -> bool:
    strategy = values["strategy"]
    for name, default in _NOT_FOR[strategy]:
        if values[name] == default:
            continue
        received = f"Received: --{name}={values[name]} with --strategy={strategy}."
        if name == "compression":
            raise flags.ValidationError(
                f"--compression applies to --strategy=mirrored or multi_worker (data parallel). {received}")
        if name == "shard":
            raise flags.ValidationError(f"--shard applies to --strategy=mirrored. {received}")
        if strategy == "auto" and name in ("microbatches", "compression"):
            raise flags.ValidationError(
                f"--{name} does not apply to --strategy=auto: the planner chooses the layout. "
                f"Received: --{name}={values[name]}. Drop it, or pick the strategy yourself.")
        if strategy == "split":
            raise flags.ValidationError(
                f"--{name} applies to --strategy=gpipe (split runs one batch at a time). {received}")
        raise flags.ValidationError(f"--{name} applies to --strategy=split or gpipe. {received}")
    return True


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import keras  # Late imports: devices must be configured before TF starts.

    import tfpar

    strategy = _strategy(tfpar)
    (x, y), (x_test, y_test) = _data(tfpar)
    kind = _model_kind(x)
    x, x_test = _shape_for(kind, x), _shape_for(kind, x_test)
    keras.utils.set_random_seed(FLAGS.seed)
    model = _model(tfpar, kind, x, y)
    print(f"data: {FLAGS.dataset}, {len(y)} train / {len(y_test)} test samples; model: {kind}, "
          f"{model.count_params():,} parameters")
    model.compile(
        optimizer=_optimizer(keras),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    if FLAGS.strategy in PIPELINES:
        strategy = _pipeline(tfpar, model, kind)
    if FLAGS.strategy == "auto":
        # The planner reads the compiled optimizer (its state's size).
        plan = tfpar.plan(model, FLAGS.batch_size, FLAGS.devices)
        print(plan)
        strategy = plan.chosen.strategy
    pipelined = isinstance(strategy, tfpar.strategies.PipelineStrategy)
    _print_setup(strategy, pipelined)
    if pipelined:
        tfpar.describe_placement(model, strategy)
    callbacks = []
    if FLAGS.tensorboard_dir:
        callbacks.append(keras.callbacks.TensorBoard(FLAGS.tensorboard_dir))
    if FLAGS.timeline:
        callbacks.append(tfpar.timeline.PipelineTimeline(
            png=f"{FLAGS.timeline}.png", trace=f"{FLAGS.timeline}.json"))
    start = time.perf_counter()
    tfpar.fit_distributed(
        model, x, y, strategy=strategy, batch_size=FLAGS.batch_size,
        epochs=FLAGS.epochs, validation_split=0.1, verbose=2, shuffle=not FLAGS.checkpoint_dir,
        callbacks=callbacks, checkpoint_dir=FLAGS.checkpoint_dir,
        checkpoint_every=FLAGS.checkpoint_every if FLAGS.checkpoint_dir else None,
    )
    print(f"trained in {time.perf_counter() - start:.1f} s")
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    unit = " (share of target tokens right)" if kind == "transformer" else ""
    print(f"held-out accuracy: {accuracy:.4f} on {len(y_test)} test samples{unit}")
    if FLAGS.save and tfpar.strategies.contract.for_strategy(strategy).is_chief:
        model.save(FLAGS.save)
        print(f"saved model to {FLAGS.save}")


def _strategy(tfpar):
    """Devices phase: the data-parallel strategy, or the devices a pipeline gets."""
    if FLAGS.strategy == "multi_worker":
        # Before any other TensorFlow work: collectives are set at startup.
        strategy = tfpar.strategies.MultiWorker.current()
        compression = None if FLAGS.compression == "none" else FLAGS.compression
        if tfpar.comm.compression.resolve(compression) != strategy.compression:
            raise app.UsageError(
                f"--compression={FLAGS.compression}, but the workers' strategy was made at startup "
                f"with compression={strategy.compression!r}: give it to the launcher, "
                f"python -m tfpar.launch --compression={FLAGS.compression} ...")
        # Made at startup, from the launcher's options: micro-batches are
        # read only when fit_distributed trains, so a flag can still set them.
        if FLAGS.microbatches is not None:
            strategy.microbatches = FLAGS.microbatches
        return strategy
    if FLAGS.virtual_devices:
        tfpar.configure_devices(cpu=FLAGS.virtual_devices)
    if FLAGS.strategy == "mirrored":
        try:
            return tfpar.strategies.DataParallel(
                FLAGS.devices, microbatches=FLAGS.microbatches or 1,
                compression=None if FLAGS.compression == "none" else FLAGS.compression,
                shard=None if FLAGS.shard == "none" else FLAGS.shard)
        except ValueError as error:
            raise app.UsageError(f"--devices: {error}{_VIRTUAL_HINT}") from error
    return None  # PIPELINES and auto: made once the model is known


def _data(tfpar):
    try:
        return tfpar.datasets.load(FLAGS.dataset, seed=FLAGS.seed)
    except ValueError as error:
        raise app.UsageError(f"--dataset: {error}") from error


def _model_kind(x) -> str:
    """Which reference model fits the data (checked against --model)."""
    natural = "transformer" if isinstance(x, (list, tuple)) else ("cnn" if x.ndim == 4 else "mlp")
    kind = natural if FLAGS.model == "auto" else FLAGS.model
    fits = {
        "transformer": isinstance(x, (list, tuple)),
        "cnn": not isinstance(x, (list, tuple)) and (x.ndim == 4 or _square_side(x) is not None),
        "mlp": not isinstance(x, (list, tuple)),
    }
    if not fits[kind]:
        raise app.UsageError(
            f"--model={kind} does not fit --dataset={FLAGS.dataset} (samples shaped "
            f"{_shape_of(x)}). Use --model={natural} or --model=auto."
        )
    return kind


def _model(tfpar, kind: str, x, y):
    import numpy as np

    classes = int(np.max(y)) + 1
    if kind == "transformer":
        vocab = int(max(np.max(x[0]), np.max(x[1]), np.max(y))) + 1
        return tfpar.models.transformer(vocab, x[0].shape[1], x[1].shape[1])
    if kind == "cnn":
        return tfpar.models.residual_cnn(x.shape[1:], classes)
    return tfpar.models.mlp(x.shape[1], classes)


def _shape_for(kind: str, x):
    """Samples as the model takes them: flat for the MLP, HxWxC for the CNN
    (a square feature vector such as digits' 64 becomes 8x8x1)."""
    if kind == "mlp":
        return x.reshape(len(x), -1)
    if kind == "cnn" and x.ndim == 2:
        side = _square_side(x)
        return x.reshape(len(x), side, side, 1)
    return x


def _pipeline(tfpar, model, kind: str):
    """The split / gpipe strategy, with the balance the flags ask for."""
    balance = FLAGS.balance
    devices = FLAGS.devices
    if balance == "auto":
        stages = (devices or len(tfpar.core.devices.local_devices())) // FLAGS.data_parallel
        two = stages == 2
        balance = tfpar.models.encoder_decoder_balance(model) if kind == "transformer" and two else "params"
    elif balance not in ("params", "flops", "time"):
        balance = [int(v) for v in balance.split(",")]
    try:
        if FLAGS.strategy == "split":
            strategy = tfpar.strategies.ModelSplit(devices, balance=balance,
                                                   data_parallel=FLAGS.data_parallel)
        else:
            strategy = tfpar.strategies.GPipe(
                devices, microbatches=FLAGS.microbatches or 4, balance=balance, schedule=FLAGS.schedule,
                rematerialize=FLAGS.rematerialize, record_timeline=bool(FLAGS.timeline),
                data_parallel=FLAGS.data_parallel)
        strategy.sizes(model)  # a balance that does not fit the model fails here, not mid-run
    except ValueError as error:
        raise app.UsageError(f"--balance / --devices / --data_parallel: {error}") from error
    return strategy


def _print_setup(strategy, pipelined: bool) -> None:
    """Devices and the batch each of them sees."""
    if pipelined:
        devices = list(strategy.devices)
        replicas, microbatches = strategy.data_parallel, strategy.microbatches
    else:
        devices = list(strategy.extended.worker_devices)
        replicas, microbatches = strategy.num_replicas_in_sync, strategy.microbatches
    if FLAGS.batch_size % (replicas * microbatches):
        raise app.UsageError(
            f"--batch_size must be divisible by {replicas} replica(s) x {microbatches} "
            f"micro-batch(es) = {replicas * microbatches}. Received: {FLAGS.batch_size}."
        )
    print(f"strategy: {strategy!r}")
    print(f"devices: {', '.join(devices)}")
    per_replica = FLAGS.batch_size // replicas
    print(f"batch: global {FLAGS.batch_size}, per replica {per_replica} ({replicas} "
          f"replica{'s' if replicas > 1 else ''}), per micro-batch {per_replica // microbatches} "
          f"({microbatches} micro-batch{'es' if microbatches > 1 else ''})")


def _optimizer(keras):
    return {
        "adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW,
        "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop,
    }[FLAGS.optimizer](FLAGS.learning_rate)


def _square_side(x):
    if x.ndim != 2:
        return None
    side = math.isqrt(x.shape[1])
    return side if side * side == x.shape[1] else None


def _shape_of(x) -> str:
    if isinstance(x, (list, tuple)):
        return " and ".join(str(tuple(v.shape[1:])) for v in x)
    return str(tuple(x.shape[1:]))


# The binary's own way to more devices than the machine has.
_VIRTUAL_HINT = " With this binary: --virtual_devices=N splits each CPU into N logical devices."


def _main_with_clear_errors(argv: list[str]) -> None:
    # absl prints a bad flag combination found in main under the whole
    # flag list; the error alone, with where the flags are, reads better.
    try:
        main(argv)
    except app.UsageError as error:
        sys.exit(f"FATAL: {error}\nThe flags: python -m tfpar.train --helpshort")


def run() -> None:
    """Console-script entry point."""
    app.run(_main_with_clear_errors)


if __name__ == "__main__":
    run()
