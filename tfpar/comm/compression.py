"""How gradients travel: the all-reduce options both data-parallel
strategies take (`check_options`), and compression (`communication_hook`):
gradients all-reduced in half precision (`Casting`), or as PowerSGD's
low-rank factors (`powersgd`).

Both act on the gradients with their variables (`all_reduce.GradientSum`),
in tfpar's optimizer twin: `Casting` casts floating gradients wider than the
wire dtype down before the exchange and back up after, halving the bytes
that cross the interconnect. The sum itself is TensorFlow's own collectives
(ring, NCCL, reduction to one device, gRPC across workers), so this adds no
transport of its own. Other reductions (metrics, the loss) travel as they
are.

Example:
    >>> strategy = tfpar.strategies.DataParallel(2, compression="fp16")
    >>> tfpar.strategies.DataParallel(2, compression="powersgd").compression
    PowerSGD(rank=2)
"""

from __future__ import annotations

import tensorflow as tf

from tfpar.comm.all_reduce import GradientSum, nbytes
from tfpar.comm.powersgd import PowerSGD, PowerSGDSum
from tfpar.core import checks

WIRE_DTYPES = {"fp16": tf.float16, "bf16": tf.bfloat16}
NAMES = [None, *WIRE_DTYPES, "powersgd"]


def check_options(all_reduce: str, choices, compression: str | None, bytes_per_pack: int) -> None:
    """Checks a data-parallel strategy's collective options.

    Raises:
      ValueError: `all_reduce` not among `choices`, an unknown compression,
        or `bytes_per_pack` not a whole number >= 0.

    Example:
        >>> check_options("ring", ("auto", "ring"), "bf16", 0)
        >>> check_options("tree", ("auto", "ring"), None, 0)
        Traceback (most recent call last):
        ...
        ValueError: all_reduce must be one of ['auto', 'ring']. Received: all_reduce='tree'.
    """
    if all_reduce not in choices:
        raise ValueError(f"all_reduce must be one of {list(choices)}. Received: all_reduce={all_reduce!r}.")
    resolve(compression)
    checks.whole_number("bytes_per_pack", bytes_per_pack, minimum=0, meaning=" (0 = one pack)")


def resolve(compression):
    """The compression option as tfpar uses it: None, a wire dtype name
    ("fp16", "bf16"), or a `PowerSGD` ("powersgd" is `PowerSGD()`).

    Raises:
      ValueError: an unknown compression (the valid ones are listed).
    """
    if compression is None or isinstance(compression, PowerSGD) or compression in WIRE_DTYPES:
        return compression
    if compression == "powersgd":
        return PowerSGD()
    raise ValueError(
        f"compression must be one of {NAMES} or tfpar.strategies.PowerSGD(rank=...). "
        f"Received: compression={compression!r}."
    )


def communication_hook(compression) -> GradientSum | None:
    """The gradient sum a resolved `compression` makes (None: Keras' own
    all-reduce, uncompressed)."""
    if compression is None:
        return None
    if isinstance(compression, PowerSGD):
        return PowerSGDSum(compression)
    return Casting(WIRE_DTYPES[compression])


class Casting(GradientSum):
    """Floating gradients wider than the wire dtype are cast to it for the
    all-reduce and back after.

    Args:
      dtype: the dtype on the wire, `tf.float16` or `tf.bfloat16`.
    """

    def __init__(self, dtype: tf.DType):
        super().__init__()
        self._dtype = dtype

    def sum(self, context, pairs) -> list:
        grads = [g for g, _ in pairs]
        wide = [_dtype(g) if self._compressible(_dtype(g)) else None for g in grads]
        narrow = [g if w is None else tf.cast(g, self._dtype) for g, w in zip(grads, wide)]
        self.raw_bytes = sum(nbytes(g) for g in grads)
        self.sent_bytes = sum(nbytes(g) for g in narrow)
        summed = context.all_reduce(tf.distribute.ReduceOp.SUM, narrow)
        return [s if w is None else tf.cast(s, w) for s, w in zip(summed, wide)]

    def _compressible(self, dtype: tf.DType) -> bool:
        return dtype.is_floating and dtype.size > self._dtype.size


def _dtype(grad) -> tf.DType:
    return tf.as_dtype(grad.dtype)
