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

The state (Q and e per matrix and local replica) is made by `prepare`
before training, outside any tf.function: `fit_distributed` calls it with
the model's trainable weights. Gradients are matched to it by shape (the
k-th gradient of a shape in an all-reduce takes that shape's k-th state):
any consistent match is the algorithm (the state only has to follow
the same tensor from step to step). So every all-reduce of tensors shaped
like the weights is compressed: a custom `train_step` that all-reduces
other matrices of those shapes should not use this compression.

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
import warnings

import numpy as np
import tensorflow as tf

from tfpar.comm.all_reduce import WrappingAllReduce, per_part
from tfpar.core import checks, internals


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


class PowerSGDAllReduce(WrappingAllReduce):
    """A `CrossDeviceOps` that all-reduces gradient matrices as PowerSGD
    factors through `inner` (TensorFlow's own collectives).

    Args:
      inner: the implementation that performs every reduction.
      options: the `PowerSGD` settings.
      devices: this process's replica devices, in replica order.
      replicas: all replicas in sync (every worker's).
    """

    def __init__(self, inner: tf.distribute.CrossDeviceOps, options: PowerSGD, devices, replicas: int):
        super().__init__(inner)
        self.options = options
        self._devices, self._replicas = list(devices), replicas
        self._state = []  # per prepared matrix: (shape, (n, m), [Q per device], [e per device])
        self._warned = False
        # Numbers handed to the inner all-reduce by the last gradient
        # reduction, and what it would have sent uncompressed (read by the
        # bench; fixed when the step is traced).
        self.sent_bytes = self.raw_bytes = 0

    def prepare(self, variables) -> None:
        """Makes fresh state for the trainable `variables` (before training)."""
        rng = np.random.default_rng(self.options.seed)
        self._state = []
        for variable in variables:
            shape, dtype = tuple(variable.shape), tf.as_dtype(variable.dtype)
            matrix = compressed_shape(shape, self.options.rank) if dtype.is_floating else None
            if matrix is None:
                continue
            n, m = matrix
            start = rng.standard_normal((m, self.options.rank)).astype(dtype.as_numpy_dtype)
            qs, errors = [], []
            for device in self._devices:
                with tf.device(device):
                    qs.append(tf.Variable(start, trainable=False, name="powersgd_q"))
                    errors.append(tf.Variable(tf.zeros((n, m), dtype), trainable=False,
                                              name="powersgd_error"))
            self._state.append((shape, matrix, qs, errors))

    def batch_reduce_implementation(self, reduce_op, value_destination_pairs, options):
        values = [value for value, _ in value_destination_pairs]
        # Sparse gradients (embedding lookups) travel as they are: densified,
        # Adam would update them differently.
        compressed = self._match([None if isinstance(_parts(v)[0], tf.IndexedSlices)
                                  else _parts(v)[0].shape for v in values])
        if compressed is None:
            return self._inner.batch_reduce(reduce_op, value_destination_pairs, options)
        # Round 1: P = (M + e) Q for every compressed matrix.
        matrices, ps = {}, []
        for i, (_, (n, m), qs, errors) in compressed.items():
            parts = _parts(values[i])
            matrices[i] = []
            p_parts = []
            for part, q, error, device in zip(parts, qs, errors, self._devices):
                with tf.device(device):
                    matrix = tf.reshape(part, (n, m)) + error
                    matrices[i].append(matrix)
                    p_parts.append(tf.matmul(matrix, q))
            ps.append(_like(values[i], p_parts))
        reduced_p = self._inner.batch_reduce(tf.distribute.ReduceOp.SUM, [(p, p) for p in ps], options)
        # Round 2: Q = M^T P (P orthonormalized), with the uncompressed values.
        bases, second = {}, []
        for (i, _), p in zip(compressed.items(), reduced_p):
            bases[i] = []
            q_parts = []
            for matrix, p_part, device in zip(matrices[i], _parts(p), self._devices):
                with tf.device(device):
                    basis = tf.linalg.qr(p_part)[0]
                    bases[i].append(basis)
                    q_parts.append(tf.matmul(matrix, basis, transpose_a=True))
            second.append(_like(values[i], q_parts))
        plain = [i for i in range(len(values)) if i not in compressed]
        second += [values[i] for i in plain]
        reduced = self._inner.batch_reduce(tf.distribute.ReduceOp.SUM, [(v, v) for v in second], options)
        results = [None] * len(values)
        for (i, (shape, _, qs, errors)), q_sum in zip(compressed.items(), reduced):
            parts = []
            for matrix, basis, q_part, q, error, device in zip(
                    matrices[i], bases[i], _parts(q_sum), qs, errors, self._devices):
                with tf.device(device):
                    total = tf.matmul(basis, q_part, transpose_b=True)  # ~ the sum over replicas
                    error.assign(matrix - total / self._replicas)
                    q.assign(q_part)  # the next step's warm start
                    parts.append(tf.reshape(total, shape))
            results[i] = _reduced(values[i], parts)
        for i, value in zip(plain, reduced[len(compressed):]):
            results[i] = value
        if reduce_op == tf.distribute.ReduceOp.MEAN:
            results = [_scaled(r, 1 / self._replicas) for r in results]
        self._count_bytes(values, compressed)
        return results

    def _match(self, shapes) -> dict | None:
        """Which prepared state each compressible gradient takes (index ->
        state), matching shapes in order; None when there is no state."""
        def compressible(shape):
            return shape is not None and compressed_shape(tuple(shape), self.options.rank) is not None

        if not any(compressible(s) for s in shapes):
            return None
        if not self._state:
            if not self._warned:
                self._warned = True
                warnings.warn(
                    "compression='powersgd' compresses gradients in tfpar.fit_distributed, which "
                    "prepares its state; this all-reduce (plain Keras in the strategy's scope?) "
                    "runs uncompressed.", stacklevel=2)
            return None
        # Each shape's states, taken in order: the same gradient gets the
        # same state at every step, whatever order the gradients come in.
        free = {}
        for state in self._state:
            free.setdefault(state[0], []).append(state)
        match = {}
        for i, shape in enumerate(shapes):
            if not compressible(shape):
                continue
            states = free.get(tuple(shape))
            if not states:
                warnings.warn(
                    f"PowerSGD holds state for gradients shaped {[s[0] for s in self._state]}, but "
                    f"this all-reduce brings {[None if s is None else tuple(s) for s in shapes]}: "
                    "it runs uncompressed.", stacklevel=2)
                return None
            match[i] = states.pop(0)
        return match

    def _count_bytes(self, values, compressed) -> None:
        rank = self.options.rank
        sent = raw = 0
        for i, value in enumerate(values):
            part = _parts(value)[0]
            size, width = part.shape.num_elements(), part.dtype.size
            raw += size * width
            if i in compressed:
                n, m = compressed[i][1]
                sent += rank * (n + m) * width
            else:
                sent += size * width
        self.sent_bytes, self.raw_bytes = sent, raw


def _parts(value) -> list:
    # A worker with one replica hands over plain tensors.
    return list(value.values) if isinstance(value, tf.distribute.DistributedValues) else [value]


def _like(value, parts):
    """Parts shaped as `value` was: a PerReplica, or one tensor."""
    return internals.per_replica(parts) if isinstance(value, tf.distribute.DistributedValues) else parts[0]


def _reduced(value, parts):
    """Reduced parts as the inner implementation returns them."""
    return internals.mirrored(parts) if isinstance(value, tf.distribute.DistributedValues) else parts[0]


def _scaled(value, factor):
    return per_part(lambda part: part * tf.cast(factor, part.dtype), value, internals.mirrored)
