"""Data parallel on devices of different speeds: shares by speed, exact.

`DataParallel(devices, device_speeds=[3, 1])` gives each replica a share of
every global batch proportional to its device's speed, so that a fast and
a slow device finish their shares together. tf.distribute only splits a
batch equally; here each batch of B rows becomes R consecutive per-replica
elements (`tf.distribute.Strategy.distribute_datasets_from_function` hands
element r to replica r) of n_r rows, n_r ~ B x speed_r / sum(speeds).

Exactness. Keras computes each replica's loss as the mean over its own
rows scaled by 1/R, and sums the replicas' gradients. A replica's rows
carry the loss weight R x n_r / B (the padding marks of `equal_shares`),
so its contribution is n_r / B x its mean: the sum over replicas is the
mean over the whole batch, the one-device loss and gradient. The loss
tracker and metrics count real rows, as for padded batches. A replica
whose share of a short batch rounds to 0 rows gets one padding row of
weight 0 (kernels fail on empty batches).

The rows per replica follow `tfpar.core.shares.shares`, which the planner
uses without TensorFlow; `split_dataset` runs the same rule in the input
pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import tensorflow as tf

from tfpar.core import checks, inputs
from tfpar.replication import device_speeds as speeds_lib, equal_shares


def check_speeds(speeds, replicas: int) -> None:
    """Raises ValueError unless `speeds` is "measure" or one finite speed
    > 0 per replica."""
    if speeds is None or speeds == "measure":
        return
    valid = (isinstance(speeds, Sequence) and not isinstance(speeds, str) and len(speeds) == replicas
             and all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s > 0
                     for s in speeds))
    if not valid:
        raise ValueError(
            f"device_speeds must give one finite speed > 0 per device ({replicas} devices), "
            f"or be 'measure'. Received: device_speeds={speeds!r}. Example: device_speeds=[3, 1] "
            "for a first device three times as fast as the second.")


def prepare(strategy: tf.distribute.Strategy, model: keras.Model, batch_size: int | None) -> None:
    """Before training under a strategy with `device_speeds`: refuses a model whose own steps would ignore the
    shares' loss weights, and turns device_speeds="measure" into measured
    speeds (kept on the strategy for later calls).

    Raises:
      ValueError: the model overrides `train_step` or `test_step`.
    """
    speeds = strategy.device_speeds
    custom = checks.overridden(model, ["train_step", "test_step"])
    if custom:
        raise ValueError(
            f"device_speeds gives replicas shares of different sizes, weighted in Keras' own "
            f"train and test steps, but model {model.name!r} overrides {custom}, which tfpar runs "
            f"as they are. Received: device_speeds={speeds!r}. Use device_speeds=None (equal "
            "shares).")
    if speeds == "measure":
        devices = list(strategy.extended.worker_devices)
        per_replica = max(1, (batch_size or inputs.KERAS_DEFAULT_BATCH) // len(devices))
        strategy.device_speeds = speeds_lib.measure_device_speeds(model, devices, per_replica)


def split_dataset(dataset: tf.data.Dataset, speeds: Sequence[float], *,
                  scale_real: bool = True) -> tf.data.Dataset:
    """Cuts each `(x, y[, sample_weight])` batch into one element per replica.

    Element r of each batch holds replica r's `shares` rows, followed by
    `marks`: each real row's loss weight (R x n_r / B with `scale_real`,
    else 1) and 0 for a padding row. Elements without targets pass as they
    are (they are split equally by the strategy).
    """
    if not equal_shares.has_targets(dataset):
        return dataset
    replicas = len(speeds)
    cumulative = tf.constant([sum(speeds[:r]) / float(sum(speeds)) for r in range(replicas + 1)], tf.float64)

    def split(*element):
        count = tf.shape(keras.tree.flatten(element[0])[0])[0]
        bounds = tf.cast(tf.floor(tf.cast(count, tf.float64) * cumulative + 0.5), tf.int32)

        def replica_element(r):
            start, size = bounds[r], bounds[r + 1] - bounds[r]
            # An empty share gets one padding row (the batch's first).
            take = tf.maximum(size, 1)
            begin = tf.where(size > 0, start, 0)
            cut = lambda t: t[begin:begin + take]  # noqa: E731
            parts = keras.tree.map_structure(cut, element)
            weight = (tf.cast(replicas * size, tf.float32) / tf.cast(count, tf.float32)
                      if scale_real else tf.constant(1.0))
            marks = tf.fill([take], weight) * tf.cast(size > 0, tf.float32)
            return (*parts, marks)

        return tf.data.Dataset.range(replicas).map(lambda r: replica_element(tf.cast(r, tf.int32)))

    return dataset.flat_map(split)
