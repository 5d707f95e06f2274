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
flags.DEFINE_enum("strategy", "mirrored", ["mirrored"], "How to spread training.")
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

    if FLAGS.virtual_devices:
        tfpar.configure_devices(cpu=FLAGS.virtual_devices)
    strategy = tfpar.strategies.DataParallel(FLAGS.devices)
    replicas = strategy.num_replicas_in_sync
    logging.info("devices: %s", list(strategy.extended.worker_devices))
    logging.info(
        "batch: global %d, per replica %d (%d replicas)",
        FLAGS.batch_size, FLAGS.batch_size // replicas, replicas,
    )

    (x, y), (x_test, y_test) = tfpar.datasets.digits(seed=FLAGS.seed)
    logging.info("data: digits, %d train / %d test samples", len(x), len(x_test))

    keras.utils.set_random_seed(FLAGS.seed)
    model = tfpar.models.mlp(x.shape[1], 10)
    model.compile(
        optimizer=keras.optimizers.Adam(FLAGS.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    tfpar.fit_distributed(
        model, x, y, strategy=strategy, batch_size=FLAGS.batch_size,
        epochs=FLAGS.epochs, validation_split=0.1, verbose=2,
    )
    logging.info("trained in %.1f s", time.perf_counter() - start)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"held-out accuracy: {accuracy:.4f} on {len(x_test)} test digits")
    if FLAGS.save:
        model.save(FLAGS.save)
        print(f"saved model to {FLAGS.save}")


def _check_flags() -> None:
    """Rejects bad flag values before anything trains."""
    for name in ("batch_size", "epochs"):
        if getattr(FLAGS, name) < 1:
            raise app.UsageError(f"--{name} must be >= 1. Received: {getattr(FLAGS, name)}.")
    if FLAGS.learning_rate <= 0:
        raise app.UsageError(f"--learning_rate must be > 0. Received: {FLAGS.learning_rate}.")
    if FLAGS.virtual_devices is not None and FLAGS.virtual_devices < 1:
        raise app.UsageError(f"--virtual_devices must be >= 1. Received: {FLAGS.virtual_devices}.")
    if FLAGS.save and not FLAGS.save.endswith(".keras"):
        raise app.UsageError(f"--save must end in .keras. Received: {FLAGS.save}.")


def run() -> None:
    """Console-script entry point."""
    app.run(main)


if __name__ == "__main__":
    run()
