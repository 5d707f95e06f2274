"""Uneven batches under data parallel: every replica gets an equal share.

`tf.distribute` splits a batch that the replicas do not divide unevenly
(103 samples on 2 replicas: 52 and 51; 1 sample: 1 and 0). Keras then fails
before training (its first-batch build reduces the replicas' batches, whose
shapes differ), a replica with no sample crashes some kernels, and the
gradient is the mean of the replicas' means instead of the batch mean.

`pad_dataset` pads each such batch at its end, by repeating its first
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

import keras
import tensorflow as tf


def pad_dataset(dataset: tf.data.Dataset, replicas: int, *, scale_real: bool = True) -> tf.data.Dataset:
    """Pads each `(x, y[, sample_weight])` batch to a multiple of `replicas`.

    Each element becomes `(x, y[, sample_weight], marks)`: `marks` is the
    loss weight of each row, 0 for padding and, with `scale_real`,
    `padded_size / real_size` for real rows (1 when nothing was padded).
    Elements without targets pass unchanged.
    """
    if not has_targets(dataset):
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


def has_targets(dataset: tf.data.Dataset) -> bool:
    """True for batches `(x, y[, sample_weight])`, which shares mark; a
    dataset without targets (prediction) is split as tf.distribute does."""
    spec = dataset.element_spec
    return isinstance(spec, tuple) and 2 <= len(spec) <= 3
