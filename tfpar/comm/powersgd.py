"""PowerSGD: gradients all-reduced as rank-r factors (Vogels et al., 2019).

Each weight matrix's gradient M (a kernel of shape (..., m) is read as a
(n, m) matrix) travels as two thin factors instead of n*m numbers:

1. M += e, this replica's error feedback: what earlier steps' compression
   left out of its gradient.
2. P = M Q, all-reduced (sum over replicas), then orthonormalized. Q (m, r)
   is the last step's (a warm start: one power iteration per step refines
   it), the same on every replica.
3. Q = M^T P, all-reduced. The sum of the replicas' gradients is then
   approximated by P Q^T, the same on every replica, so weights stay
   identical everywhere.
4. e = M - P Q^T / replicas: each replica keeps its part of what was lost.

Bytes per matrix: r (n + m) instead of n m (512 x 512 at r = 2: 128x
fewer). Vectors (biases, normalization scales) and small matrices, where
r (n + m) >= n m, travel as they are, in the same all-reduce as the
factors Q. Two all-reduces per step instead of one: P's, then Q's with the
uncompressed tensors.

It runs where the replicas' gradients are summed with their variables
(`all_reduce.GradientSum`, in tfpar's optimizer twin), so the state (Q and
e of each weight matrix, each replica its own) is the variable's: `prepare`
makes it before training, in the strategy's scope, for the model's
trainable weights. Other all-reduces (metrics, a custom step's own) travel
as they are.

Example:
    >>> PowerSGD(rank=4)
    PowerSGD(rank=4)
    >>> PowerSGD(rank=0)
    Traceback (most recent call last):
    ...
    ValueError: rank must be a whole number >= 1 (PowerSGD: the rank of each gradient's approximation). Received: rank=0.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tfpar.comm.all_reduce import GradientSum, nbytes
from tfpar.core import checks


class PowerSGD:
    """The compression option: `compression=PowerSGD(rank=r)`, or
    `compression="powersgd"` for rank 2.

    Args:
      rank: r, the rank of each matrix's approximation; more is closer to
        the uncompressed gradient and sends more bytes.
      seed: seeds the first Q of every matrix (the same on every replica
        and worker).
    """

    def __init__(self, rank: int = 2, *, seed: int = 0):
        checks.whole_number("rank", rank, minimum=1,
                            meaning=" (PowerSGD: the rank of each gradient's approximation)")
        self.rank, self.seed = rank, seed

    def __repr__(self) -> str:
        return f"PowerSGD(rank={self.rank})"

    def __eq__(self, other) -> bool:
        return isinstance(other, PowerSGD) and (self.rank, self.seed) == (other.rank, other.seed)


def compressed_shape(shape, rank: int) -> tuple[int, int] | None:
    """The (n, m) matrix a gradient of `shape` is compressed as, or None
    when r (n + m) would not be fewer numbers than n m.

    Example:
        >>> compressed_shape((3, 3, 16, 32), 2)
        (144, 32)
        >>> compressed_shape((512,), 2) is None
        True
    """
    if len(shape) < 2:
        return None
    n, m = math.prod(shape[:-1]), shape[-1]
    return (n, m) if rank * (n + m) < n * m else None


class PowerSGDSum(GradientSum):
    """The replicas' gradients summed with weight matrices' gradients as
    PowerSGD factors, through TensorFlow's own collectives.

    Args:
      options: the `PowerSGD` settings.
    """

    def __init__(self, options: PowerSGD):
        super().__init__()
        self.options = options
        # Per compressed variable (by identity): its (n, m) matrix shape,
        # Q and the error feedback e, each replica's own (ON_READ).
        self._state = {}
        self._variables = []  # kept alive, so that their ids stay theirs

    def prepare(self, variables) -> None:
        """Makes fresh state for the trainable `variables`, in the
        strategy's scope (before training)."""
        rng = np.random.default_rng(self.options.seed)
        self._state, self._variables = {}, list(variables)
        for variable in self._variables:
            shape, dtype = tuple(variable.shape), tf.as_dtype(variable.dtype)
            matrix = compressed_shape(shape, self.options.rank) if dtype.is_floating else None
            if matrix is None:
                continue
            n, m = matrix
            start = rng.standard_normal((m, self.options.rank)).astype(dtype.as_numpy_dtype)
            local = dict(trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                         aggregation=tf.VariableAggregation.NONE)
            self._state[id(variable)] = (matrix, tf.Variable(start, name="powersgd_q", **local),
                                         tf.Variable(tf.zeros((n, m), dtype), name="powersgd_error", **local))

    def sum(self, context, pairs) -> list:
        # Sparse gradients (embedding lookups) travel as they are: densified,
        # Adam would update them differently.
        compressed = {i: self._state_of(v) for i, (g, v) in enumerate(pairs)
                      if not isinstance(g, tf.IndexedSlices) and self._compressible(g)}
        if not compressed:
            return super().sum(context, pairs)
        replicas = context.num_replicas_in_sync
        # Round 1: P = (M + e) Q for every compressed matrix.
        matrices = {i: tf.reshape(pairs[i][0], (n, m)) + error
                    for i, ((n, m), _, error) in compressed.items()}
        ps = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                [tf.matmul(matrices[i], q) for i, (_, q, _) in compressed.items()])
        # Round 2: Q = M^T P (P orthonormalized), with the uncompressed values.
        bases = {i: tf.linalg.qr(p)[0] for i, p in zip(compressed, ps)}
        plain = [i for i in range(len(pairs)) if i not in compressed]
        reduced = context.all_reduce(
            tf.distribute.ReduceOp.SUM,
            [tf.matmul(matrices[i], bases[i], transpose_a=True) for i in compressed]
            + [pairs[i][0] for i in plain])
        results = [None] * len(pairs)
        for (i, (_, q, error)), q_sum in zip(compressed.items(), reduced):
            total = tf.matmul(bases[i], q_sum, transpose_b=True)  # ~ the sum over replicas
            error.assign(matrices[i] - total / replicas)
            q.assign(q_sum)  # the next step's warm start
            results[i] = tf.reshape(total, tf.shape(pairs[i][0]))
        for i, value in zip(plain, reduced[len(compressed):]):
            results[i] = value
        self._count_bytes(pairs, compressed)
        return results

    def _compressible(self, grad) -> bool:
        return compressed_shape(tuple(grad.shape), self.options.rank) is not None

    def _state_of(self, variable):
        state = self._state.get(id(variable))
        if state is None:
            raise ValueError(
                f"PowerSGD has no state for variable {variable.path!r} ({tuple(variable.shape)}): "
                "its state is made for the model's trainable weights when fit_distributed "
                "starts, and this gradient belongs to another variable. Train the variable as "
                "one of the model's weights, or use compression=None.")
        return state

    def _count_bytes(self, pairs, compressed) -> None:
        rank = self.options.rank
        self.raw_bytes = sum(nbytes(g) for g, _ in pairs)
        self.sent_bytes = sum(rank * sum(compressed[i][0]) * g.dtype.size if i in compressed else nbytes(g)
                              for i, (g, _) in enumerate(pairs))
