"""Where compression acts: the replicas' gradients summed with their variables.

tfpar's optimizer twin (`tfpar.core.internals.summed_update_optimizer`)
sums the replicas' gradients in one place, in each replica, with every
gradient still paired with its variable, as PyTorch DDP's communication
hooks see a bucket of gradients. A `GradientSum` is that sum: this base
all-reduces them as Keras does (`ReplicaContext.all_reduce`, which packs
them by the strategy's `bytes_per_pack` into TensorFlow's own collectives);
the compressions change what travels (`compression.Casting`,
`powersgd.PowerSGDSum`) and keep any state they need by variable.

Example:
    >>> strategy = tfpar.strategies.DataParallel(2, compression="bf16")
    >>> isinstance(strategy.communication_hook, GradientSum)
    True
"""

from __future__ import annotations

import tensorflow as tf


class GradientSum:
    """The sum over replicas of each gradient, in replica context.

    Attributes:
      sent_bytes, raw_bytes: numbers each replica handed to the all-reduce
        in the last traced sum, and what they would have been uncompressed.
    """

    def __init__(self):
        self.sent_bytes = self.raw_bytes = 0

    def prepare(self, variables) -> None:
        """Makes the state the sum keeps per variable (in the strategy's
        scope, before training); none here."""

    def __call__(self, grads_and_vars) -> list:
        """The summed gradients, in order; None stays None."""
        pairs = [(g, v) for g, v in grads_and_vars if g is not None]
        context = tf.distribute.get_replica_context()
        summed = iter(self.sum(context, pairs) if pairs else [])
        return [None if g is None else next(summed) for g, _ in grads_and_vars]

    def sum(self, context: tf.distribute.ReplicaContext, pairs) -> list:
        """The sums of `pairs`' gradients (none is None)."""
        grads = [g for g, _ in pairs]
        self.sent_bytes = self.raw_bytes = sum(nbytes(g) for g in grads)
        return context.all_reduce(tf.distribute.ReduceOp.SUM, grads)


def nbytes(grad) -> int:
    """Bytes of a gradient (of an IndexedSlices: its rows)."""
    values = grad.values if isinstance(grad, tf.IndexedSlices) else grad
    return (values.shape.num_elements() or 0) * values.dtype.size
