"""A `tf.distribute.CrossDeviceOps` that changes what an inner one reduces.

Mirrored-family strategies send every reduction through one CrossDeviceOps
(`internals.cross_device_ops`). tfpar's compressions wrap it: they change
the values on their way in and out, and TensorFlow's own collectives (ring,
NCCL, reduction to one device, gRPC across workers) do the exchange.

Example:
    >>> strategy = tfpar.strategies.DataParallel(2, compression="bf16")
    >>> isinstance(tfpar.core.internals.cross_device_ops(strategy.extended), WrappingAllReduce)
    True
"""

from __future__ import annotations

import tensorflow as tf

from tfpar.core import internals


class WrappingAllReduce(tf.distribute.CrossDeviceOps):
    """Delegates everything to `inner`; subclasses override what they change.

    Args:
      inner: the implementation that performs the reductions.
    """

    def __init__(self, inner: tf.distribute.CrossDeviceOps):
        super().__init__()
        self._inner = inner
        self._canonicalize_devices = internals.canonicalize_devices(inner)

    @property
    def _num_between_graph_workers(self):
        # TensorFlow's batch_reduce skips the exchange when this is 1 and a
        # process has one replica: a multi-worker wrapper must say how many.
        return internals.between_graph_workers(self._inner)

    def reduce_implementation(self, reduce_op, per_replica_value, destinations, options):
        return self._inner.reduce(reduce_op, per_replica_value, destinations, options)

    def batch_reduce_implementation(self, reduce_op, value_destination_pairs, options):
        return self._inner.batch_reduce(reduce_op, value_destination_pairs, options)

    def broadcast_implementation(self, tensor, destinations):
        return self._inner.broadcast(tensor, destinations)

    def _gather(self, value, destinations, axis, options=None):
        return internals.gather(self._inner, value, destinations, axis, options)


def per_part(fn, value, wrap):
    """`fn` of each replica's part of `value`, on that part's device, the
    results joined by `wrap` (`internals.per_replica` or
    `internals.mirrored`); `fn(value)` for a plain tensor (a worker with one
    replica hands those over)."""
    if not isinstance(value, tf.distribute.DistributedValues):
        return fn(value)
    parts = []
    for part in value.values:
        with tf.device(part.device):
            parts.append(fn(part))
    return wrap(parts)
