"""How gradients travel: the all-reduce options both data-parallel
strategies take (`check_options`), and compression: all-reduce in half
precision (`CastingAllReduce`), or as PowerSGD's low-rank factors
(`powersgd`).

`CastingAllReduce` wraps any `tf.distribute.CrossDeviceOps`: floating values
wider than the wire dtype are cast down before the exchange and back up after,
halving the bytes that cross the interconnect. The sum itself is done by the
wrapped implementation (ring collectives, NCCL, reduction to one device), so
this adds no transport of its own.

Example:
    >>> strategy = tfpar.strategies.DataParallel(2, compression="fp16")
    >>> tfpar.strategies.DataParallel(2, compression="powersgd").compression
    PowerSGD(rank=2)
"""

from __future__ import annotations

import tensorflow as tf

from tfpar.comm.all_reduce import WrappingAllReduce, per_part
from tfpar.comm.powersgd import PowerSGD, PowerSGDAllReduce
from tfpar.core import checks, internals

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


def install(strategy) -> None:
    """Makes a Mirrored-family strategy's reductions travel as its
    `compression` says.

    MirroredExtended (and its multi-worker subclass) send every reduction
    through `_cross_device_ops`; wrapping it is how the cast, or PowerSGD,
    reaches TensorFlow's own collectives.
    """
    compression, extended = strategy.compression, strategy.extended
    if compression is None:
        return
    inner = internals.cross_device_ops(extended)
    if isinstance(compression, PowerSGD):
        wrapper = PowerSGDAllReduce(inner, compression, extended.worker_devices,
                                    strategy.num_replicas_in_sync)
    else:
        wrapper = CastingAllReduce(inner, WIRE_DTYPES[compression])
    internals.set_cross_device_ops(extended, wrapper)


def prepare(strategy, model) -> None:
    """Gives a strategy's PowerSGD fresh state for `model`'s weights,
    before training."""
    internals.cross_device_ops(strategy.extended).prepare(model.trainable_weights)


class CastingAllReduce(WrappingAllReduce):
    """A `CrossDeviceOps` that reduces floating values in a narrower dtype.

    Args:
      inner: the implementation that performs the reduction.
      dtype: the dtype on the wire, `tf.float16` or `tf.bfloat16`.
    """

    def __init__(self, inner: tf.distribute.CrossDeviceOps, dtype: tf.DType):
        super().__init__(inner)
        self._dtype = dtype

    def reduce_implementation(self, reduce_op, per_replica_value, destinations, options):
        narrow, wide = self._narrow(per_replica_value)
        reduced = self._inner.reduce(reduce_op, narrow, destinations, options)
        return self._widen(reduced, wide)

    def batch_reduce_implementation(self, reduce_op, value_destination_pairs, options):
        pairs, wides = [], []
        for value, destinations in value_destination_pairs:
            narrow, wide = self._narrow(value)
            pairs.append((narrow, destinations))
            wides.append(wide)
        reduced = self._inner.batch_reduce(reduce_op, pairs, options)
        return [self._widen(r, w) for r, w in zip(reduced, wides)]

    def _narrow(self, value):
        """Casts each replica's component down; returns it and the old dtype."""
        parts = value.values if isinstance(value, tf.distribute.DistributedValues) else None
        dtype = tf.as_dtype((parts[0] if parts else value).dtype)
        if not self._compressible(dtype):
            return value, None
        return per_part(lambda part: tf.cast(part, self._dtype), value, internals.per_replica), dtype

    def _widen(self, value, dtype):
        if dtype is None:
            return value
        return per_part(lambda part: tf.cast(part, dtype), value, internals.mirrored)

    def _compressible(self, dtype: tf.DType) -> bool:
        return dtype.is_floating and dtype.size > self._dtype.size
