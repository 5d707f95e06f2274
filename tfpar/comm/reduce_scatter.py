"""Reduce-scatter: each replica receives the replicas' sum of its own row.

ZeRO-2 (`DataParallel(shard="gradients")`) keeps only a replica's share of
the summed gradient, so it needs a reduce-scatter, not an all-reduce.
TensorFlow has the op (`CollectiveReduceScatterV2`) but registers it only
for NCCL: on CPUs it fails with "CollectiveRegistry::Lookup did not find
collective implementation" (measured, TF 2.21). Its CPU collectives do have
an all-to-all (`CollectiveAllToAllV2`, one exchange in which replica i
sends row j of its tensor to replica j), and a reduce-scatter is exactly
that exchange followed by each replica adding the rows it received: every
replica sends and receives (R-1)/R of the buffer, as a ring reduce-scatter
does, half of an all-reduce's traffic. The collective runs with the
strategy's own group and instance keys (its launchers), so it orders with
the strategy's all-reduces and all-gathers like one of them.

Example:
    >>> strategy = tfpar.strategies.DataParallel(2)
    >>> def replica():  # replica r sends row j to replica j
    ...     r = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.float32)
    ...     return reduce_scatter(tf.stack([tf.fill([2], r + 1), tf.fill([2], 10 * (r + 1))]))
    >>> step = tf.function(lambda: strategy.run(replica))
    >>> [t.numpy().tolist() for t in strategy.experimental_local_results(step())]
    [[3.0, 3.0], [30.0, 30.0]]
"""

from __future__ import annotations

import tensorflow as tf

from tfpar.core import internals


def reduce_scatter(rows: tf.Tensor, sum_dtype: tf.DType | None = None) -> tf.Tensor:
    """In replica context: `rows` has one row per replica (shape [R, ...]);
    returns the sum over replicas of this replica's row, added in
    `sum_dtype` (default: the rows' dtype) after the exchange.

    Raises:
      ValueError: the strategy's collectives are not TensorFlow's
        collective ops (a reduction to one device), or `rows` does not have
        one row per replica.
    """
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync
    if rows.shape[0] != replicas:
        raise ValueError(f"reduce_scatter needs one row per replica ({replicas}). "
                         f"Received: rows of shape {rows.shape}.")
    if replicas == 1:
        received = rows
    else:
        received = internals.collective_launcher(context.strategy, context).all_to_all(rows)
    if sum_dtype is not None:
        received = tf.cast(received, sum_dtype)
    # Added in replica order, the same on every replica.
    return tf.reduce_sum(received, axis=0)
