"""Uneven batches under data parallel: every replica gets an equal share.

`tf.distribute` splits a batch that the replicas do not divide unevenly
(103 samples on 2 replicas: 52 and 51; 1 sample: 1 and 0). Keras then fails
before training (its first-batch build reduces the replicas' batches, whose
shapes differ), a replica with no sample crashes some kernels, and the
gradient is the mean of the replicas' means instead of the batch mean.

`equal_shares` pads each such batch at its end, by repeating its first
sample, up to a multiple of the replica count, and marks the rows: padding
rows get loss weight 0 and real rows `padded / real` (for losses averaged
over the batch), so every replica's mean, scaled by 1/replicas as Keras
does, adds up to the mean over the real samples: the same gradient and
loss as one device. Metrics are computed on the real rows only. Batches the
replicas divide are unchanged (weights of exactly 1).

What stays approximate on a padded batch: layers that look across the
batch (BatchNormalization's statistics, activity regularizers' batch
means) see the repeated rows.
"""

from __future__ import annotations

import contextlib
import warnings

import keras
import tensorflow as tf

from tfpar.core import checks, internals, microbatch
from tfpar.replication import replica_steps, speed_shares


@contextlib.contextmanager
def equal_shares(model: keras.Model, strategy: tf.distribute.Strategy):
    """Trains and evaluates `model` under `strategy` with padded batches.

    For the duration, the strategy's `experimental_distribute_dataset`
    pads batches (only those with targets: prediction is left alone), and
    the model's train and test steps read the padding marks and run the
    strategy's `microbatches` (`replica_steps`). A model that
    overrides `train_step` or `test_step` keeps its own steps and
    tf.distribute's uneven split (a warning says so).
    """
    with replica_steps.active(strategy), _equal_shares(model, strategy):
        yield


@contextlib.contextmanager
def _equal_shares(model: keras.Model, strategy: tf.distribute.Strategy):
    replicas = strategy.num_replicas_in_sync
    microbatches = getattr(strategy, "microbatches", 1)
    custom = checks.overridden(model, ["train_step", "test_step"])
    if replicas == 1 and (microbatches == 1 or custom):
        yield
        return
    if custom:
        warnings.warn(
            f"Model {model.name!r} overrides {custom}: tfpar runs its steps as they "
            "are, as tf.distribute does. Two consequences: under tf.distribute Keras' "
            "compute_loss returns the loss scaled by 1/replicas (gradients are summed "
            "across replicas), so a step that reports it shows the loss divided by "
            f"{replicas}; and a batch the replicas do not divide is split unevenly "
            "(use a batch size that divides the sample count).",
            stacklevel=4,
        )
        with _local_symbolic_build(model, strategy, marked=False):
            yield
        return
    scale = not microbatch.unaveraged_losses(model)
    speeds = getattr(strategy, "device_speeds", None)
    if speeds is not None:
        # Shares by speed: each element a replica's share, marked alike.
        strategy.experimental_distribute_dataset = lambda dataset, options=None: \
            speed_shares.distribute(strategy, dataset, speeds, scale_real=scale, options=options)
    else:
        distribute = strategy.experimental_distribute_dataset
        strategy.experimental_distribute_dataset = lambda dataset, options=None: distribute(
            pad_dataset(dataset, replicas, scale_real=scale), options)
    steps = replica_steps.ReplicaSteps(model, microbatches)
    steps.install()
    try:
        with _local_symbolic_build(model, strategy, marked=True):
            yield
    finally:
        del strategy.experimental_distribute_dataset
        steps.remove()


def pad_dataset(dataset: tf.data.Dataset, replicas: int, *, scale_real: bool = True) -> tf.data.Dataset:
    """Pads each `(x, y[, sample_weight])` batch to a multiple of `replicas`.

    Each element becomes `(x, y[, sample_weight], marks)`: `marks` is the
    loss weight of each row, 0 for padding and, with `scale_real`,
    `padded_size / real_size` for real rows (1 when nothing was padded).
    Elements without targets pass unchanged.
    """
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) < 2 or len(spec) > 3:
        return dataset

    def pad(*element):
        x, y = element[0], element[1]
        weights = element[2] if len(element) == 3 else None
        count = tf.shape(keras.tree.flatten(x)[0])[0]
        extra = (replicas - count % replicas) % replicas
        grow = lambda t: tf.concat([t, tf.repeat(t[:1], extra, axis=0)], axis=0)  # noqa: E731
        marks = tf.concat([tf.ones([count]), tf.zeros([extra])], axis=0)
        if scale_real:
            marks = marks * tf.cast(count + extra, tf.float32) / tf.cast(count, tf.float32)
        parts = (x, y) if weights is None else (x, y, weights)
        return (*[keras.tree.map_structure(grow, part) for part in parts], marks)

    return dataset.map(pad, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


@contextlib.contextmanager
def _local_symbolic_build(model: keras.Model, strategy, *, marked: bool):
    """Builds metric and optimizer state from one replica's share of the
    first batch. Keras reduces the replicas' shares into one batch first,
    which fails when their shapes differ (an uneven batch) and, across
    workers, always (keras-team/keras#20585)."""

    def build(iterator=None, data_batch=None):
        data_batch = internals.first_batch(iterator, data_batch)
        data_batch = keras.tree.map_structure(
            lambda v: strategy.experimental_local_results(v)[0] if v is not None else None, data_batch)
        if marked and data_batch is not None:
            data_batch = replica_steps.unpack(data_batch)[:3]
        with strategy.scope():
            internals.symbolic_build(model, data_batch)

    with internals.override_symbolic_build(model, build):
        yield
