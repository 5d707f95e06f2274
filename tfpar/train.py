"""The tfpar training binary: `python -m tfpar.train` (absl flags).

Reads top to bottom in phases: devices, data, model, strategy, train,
evaluate, save. With no flags it trains an MLP on the UCI digits that ship
with scikit-learn, data parallel over every local device, and reports the
held-out accuracy.

    python -m tfpar.train --virtual_devices=2 --epochs=20 --save=/tmp/digits.keras
"""

from __future__ import annotations

import time

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_enum("strategy", "mirrored", ["mirrored", "split", "gpipe", "multi_worker"],
                  "How to spread training.")
flags.DEFINE_integer("microbatches", 4, "Micro-batches per batch (gpipe).")
flags.DEFINE_string("checkpoint_dir", None, "Save and resume training state here.")
flags.DEFINE_integer("checkpoint_every", 20, "Steps between checkpoints (with --checkpoint_dir).")
flags.DEFINE_integer("virtual_devices", None, "Split each CPU into this many logical devices.")
flags.DEFINE_integer("devices", None, "Use the first N local devices (default: all).")
flags.DEFINE_integer("batch_size", 64, "Global batch size.")
flags.DEFINE_integer("epochs", 30, "Passes over the training data.")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
flags.DEFINE_integer("seed", 0, "Seed for weights and data order.")
flags.DEFINE_string("save", None, "Write the trained model to this .keras path.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    _check_flags()
    import keras  # Late imports: devices must be configured before TF starts.

    import tfpar

    strategy = _strategy(tfpar)
    replicas = getattr(strategy, "num_replicas_in_sync", 1)
    logging.info("strategy: %r", strategy)
    logging.info(
        "batch: global %d, per replica %d (%d replicas), per micro-batch %d",
        FLAGS.batch_size, FLAGS.batch_size // replicas, replicas,
        FLAGS.batch_size // replicas // getattr(strategy, "microbatches", 1),
    )

    (x, y), (x_test, y_test) = tfpar.datasets.digits(seed=FLAGS.seed)
    logging.info("data: digits, %d train / %d test samples", len(x), len(x_test))

    keras.utils.set_random_seed(FLAGS.seed)
    model = tfpar.models.mlp(x.shape[1], 10)
    if FLAGS.strategy in ("split", "gpipe"):
        tfpar.describe_placement(model, strategy)
    model.compile(
        optimizer=keras.optimizers.Adam(FLAGS.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    tfpar.fit_distributed(
        model, x, y, strategy=strategy, batch_size=FLAGS.batch_size,
        epochs=FLAGS.epochs, validation_split=0.1, verbose=2, shuffle=not FLAGS.checkpoint_dir,
        checkpoint_dir=FLAGS.checkpoint_dir,
        checkpoint_every=FLAGS.checkpoint_every if FLAGS.checkpoint_dir else None,
    )
    logging.info("trained in %.1f s", time.perf_counter() - start)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"held-out accuracy: {accuracy:.4f} on {len(x_test)} test digits")
    if FLAGS.save and getattr(strategy, "is_chief", True):
        model.save(FLAGS.save)
        print(f"saved model to {FLAGS.save}")


def _strategy(tfpar):
    """Devices phase: the strategy the flags ask for."""
    if FLAGS.strategy == "multi_worker":
        # Before any other TensorFlow work: collectives are set at startup.
        return tfpar.strategies.MultiWorker.current()
    if FLAGS.virtual_devices:
        tfpar.configure_devices(cpu=FLAGS.virtual_devices)
    if FLAGS.strategy == "split":
        return tfpar.strategies.ModelSplit(FLAGS.devices)
    if FLAGS.strategy == "gpipe":
        return tfpar.strategies.GPipe(FLAGS.devices, microbatches=FLAGS.microbatches)
    return tfpar.strategies.DataParallel(FLAGS.devices)


def _check_flags() -> None:
    """Rejects bad flag values before anything trains."""
    for name in ("batch_size", "epochs"):
        if getattr(FLAGS, name) < 1:
            raise app.UsageError(f"--{name} must be >= 1. Received: {getattr(FLAGS, name)}.")
    if FLAGS.learning_rate <= 0:
        raise app.UsageError(f"--learning_rate must be > 0. Received: {FLAGS.learning_rate}.")
    if FLAGS.virtual_devices is not None and FLAGS.virtual_devices < 1:
        raise app.UsageError(f"--virtual_devices must be >= 1. Received: {FLAGS.virtual_devices}.")
    if FLAGS.microbatches < 1:
        raise app.UsageError(f"--microbatches must be >= 1. Received: {FLAGS.microbatches}.")
    if FLAGS.checkpoint_every < 1:
        raise app.UsageError(f"--checkpoint_every must be >= 1. Received: {FLAGS.checkpoint_every}.")
    if FLAGS.save and not FLAGS.save.endswith(".keras"):
        raise app.UsageError(f"--save must end in .keras. Received: {FLAGS.save}.")


def run() -> None:
    """Console-script entry point."""
    app.run(main)


if __name__ == "__main__":
    run()
