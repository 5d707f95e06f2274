"""Mirrored data parallel: one replica per device, gradients averaged.

`DataParallel` is `tf.distribute.MirroredStrategy` with the choices a user
tunes exposed as plain arguments: which all-reduce, whether gradients travel
in half precision, and how collectives are packed. Being a real
`tf.distribute.Strategy`, it also works with plain Keras
(`with strategy.scope(): ... model.fit(...)`).
"""

from __future__ import annotations

from collections.abc import Sequence

import itertools

import tensorflow as tf

from tfpar.comm import compression as compression_lib
from tfpar.core import checks, devices as devices_lib, internals
from tfpar.replication import input_shares, optimizer_shards, speed_shares

_Implementation = tf.distribute.experimental.CommunicationImplementation
ALL_REDUCE = ("auto", "ring", "nccl", "reduce_to_one")

# TensorFlow's collective executor caches each (group key, instance key) with
# its shape and dtype for the life of the process. Every MirroredStrategy
# starts its keys from the same class-wide base, so a second strategy in one
# process (a notebook, a test suite) reuses the first one's keys and aborts
# with "Collective instance ... expected ...". Each DataParallel therefore
# takes a fresh, widely spaced base.
_KEY_BASES = itertools.count(start=100_000, step=100_000)


class DataParallel(input_shares.SharedInput, tf.distribute.MirroredStrategy):
    """Synchronous data parallel over local devices.

    Each device holds a full copy of the model and takes an equal slice of the
    global batch; gradients are summed across replicas (Keras scales each
    replica's loss by 1/replicas, so the sum is the global-batch mean) and one
    identical update is applied everywhere.

    Args:
      devices: None (every local device of the fastest kind), an int N (the
        first N of them), or a list of names such as ["/gpu:0", "/gpu:1"].
      all_reduce: "auto" (TensorFlow's choice: ring collectives on CPUs, NCCL
        on GPUs), "ring", "nccl" (GPUs only) or "reduce_to_one" (sum on one
        device and broadcast back).
      compression: None, "fp16" or "bf16": floating gradients are cast to that
        dtype for the all-reduce and back afterwards, halving the bytes
        exchanged at the cost of that dtype's rounding. "powersgd" (rank 2)
        or `PowerSGD(rank=r)`: weight matrices' gradients travel as rank-r
        factors with error feedback (`tfpar.comm.powersgd`), other tensors
        as they are. Both act in `fit_distributed`, where tfpar's optimizer
        sums the gradients with their variables (`communication_hook`);
        other all-reduces (metrics, plain Keras in the scope) travel as
        they are.
      bytes_per_pack: collectives are packed into chunks of about this many
        bytes; 0 packs everything into one (TensorFlow's default).
      microbatches: k: in `fit_distributed`, each replica runs its share of
        the batch as k micro-batches one after another and sums their
        gradients locally; the optimizer all-reduces once per step. The
        same training as one device at the same global batch, with about
        1/k of the activation memory (BatchNormalization then normalizes
        over each micro-batch and updates its moving statistics once per
        micro-batch, as in a pipeline). k must divide each replica's share
        of `batch_size`; a model with its own `train_step` is refused.
      device_speeds: None (equal shares), one relative speed per device
        (e.g. [3, 1]) or "measure": in `fit_distributed` and
        `evaluate_distributed`, each replica takes a share of every batch
        proportional to its device's speed, with the loss weighted so that
        training stays the one-device training (`speed_shares`). "measure"
        times the model's forward and backward on each device when
        training starts (`device_speeds`). Not with microbatches > 1.
      shard: None (every replica holds the whole optimizer state),
        "optimizer" (ZeRO-1): in `fit_distributed`, each replica holds the
        optimizer state (Adam's moments, any slot) of its share of the
        weights, balanced by bytes, and updates only those; one all-gather
        per step brings the updated weights to every replica; or
        "gradients" (ZeRO-2): in addition, the gradients are
        reduce-scattered, so each replica keeps only its share's sum (with
        micro-batches, its running sum too). Training is unchanged
        (`tfpar.replication.optimizer_shards`). Not with PowerSGD.

    Example:
        >>> devices = tfpar.configure_devices(cpu=2)
        >>> strategy = tfpar.strategies.DataParallel(2, compression="bf16")
        >>> strategy.num_replicas_in_sync
        2
    """

    def __init__(
        self,
        devices: int | str | Sequence[str] | None = None,
        *,
        all_reduce: str = "auto",
        compression=None,
        bytes_per_pack: int = 0,
        microbatches: int = 1,
        device_speeds: Sequence[float] | str | None = None,
        shard: str | None = None,
    ):
        compression_lib.check_options(all_reduce, ALL_REDUCE, compression, bytes_per_pack)
        optimizer_shards.check_shard(shard, compression_lib.resolve(compression), all_reduce)
        checks.whole_number("microbatches", microbatches, minimum=1)
        names = devices_lib.resolve(devices)
        speed_shares.check_speeds(device_speeds, len(names))
        if device_speeds is not None and microbatches > 1:
            raise ValueError(
                "device_speeds gives replicas shares of different sizes, which micro-batches "
                f"cannot cut alike. Received: device_speeds={device_speeds!r}, "
                f"microbatches={microbatches}. Use one of the two.")
        if all_reduce == "nccl" and not all("GPU" in n.upper() for n in names):
            raise ValueError(
                "all_reduce='nccl' needs every device to be a GPU. "
                f"Received: devices={names}. Use all_reduce='ring' or 'auto'."
            )
        cross_device_ops = (
            tf.distribute.ReductionToOneDevice() if all_reduce == "reduce_to_one" else None
        )
        # Read by MirroredExtended.__init__ when it creates the collective keys.
        internals.set_collective_key_base(self, next(_KEY_BASES))
        super().__init__(names, cross_device_ops=cross_device_ops)
        self.all_reduce = all_reduce
        self.compression = compression_lib.resolve(compression)
        self.bytes_per_pack = bytes_per_pack
        self.microbatches = microbatches
        self.device_speeds = (device_speeds if device_speeds in (None, "measure")
                              else [float(s) for s in device_speeds])
        self.shard = shard
        _configure_collectives(self.extended, all_reduce, bytes_per_pack)
        self.communication_hook = compression_lib.communication_hook(self.compression)

    def __repr__(self) -> str:
        return (
            f"DataParallel(devices={list(self.extended.worker_devices)}, "
            f"all_reduce={self.all_reduce!r}, compression={self.compression!r}, "
            f"bytes_per_pack={self.bytes_per_pack}, microbatches={self.microbatches}"
            + (f", device_speeds={self.device_speeds!r}" if self.device_speeds is not None else "")
            + (f", shard={self.shard!r})" if self.shard is not None else ")")
        )


def _configure_collectives(extended, all_reduce, bytes_per_pack) -> None:
    """Applies the user's choices through MirroredStrategy's options hook:
    MirroredExtended merges `_communication_options` into every reduction it
    launches, so they reach TensorFlow's own collectives."""
    options = internals.communication_options(extended)
    implementation = {
        "ring": _Implementation.RING,
        "nccl": _Implementation.NCCL,
    }.get(all_reduce, options.implementation)
    internals.set_communication_options(extended, tf.distribute.experimental.CommunicationOptions(
        bytes_per_pack=bytes_per_pack, implementation=implementation
    ))
