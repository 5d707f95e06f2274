"""Data parallel across processes and hosts, on TensorFlow's gRPC runtime.

`MultiWorker` is `tf.distribute.MultiWorkerMirroredStrategy`: each worker
process (one per host, or several per host) holds a replica per local
device; gradients are all-reduced with TensorFlow's collective ops over gRPC.
The cluster comes from the `TF_CONFIG` environment variable, the convention
Kubernetes TFJob sets, checked up front with clear errors.

TensorFlow configures collectives when the first MultiWorkerMirroredStrategy
is created, and only if no TensorFlow op has run yet: create the strategy
(or call `fit_distributed(..., strategy="multi_worker")` through a strategy
made at startup) before building the model.
"""

from __future__ import annotations

import tensorflow as tf

from tfpar.cluster import peers, startup, tf_config
from tfpar.comm import compression as compression_lib
from tfpar.core import checks, devices as devices_lib
from tfpar.replication import input_shares

_Implementation = tf.distribute.experimental.CommunicationImplementation
# TensorFlow allows one set of collectives per process: the first
# MultiWorker made is the one `strategy="multi_worker"` means.
_CURRENT = []
# How long a worker waits for the others to start when no timeout is given.
_STARTUP_SECONDS = 300.0
ALL_REDUCE = {"auto": _Implementation.AUTO, "ring": _Implementation.RING, "nccl": _Implementation.NCCL}


class MultiWorker(input_shares.SharedInput, tf.distribute.MultiWorkerMirroredStrategy):
    """Synchronous data parallel over the workers that TF_CONFIG describes.

    Args:
      all_reduce: "auto", "ring" or "nccl" (GPUs): the collective
        implementation.
      compression: None, "fp16" or "bf16": gradients travel in that dtype;
        "powersgd" or `PowerSGD(rank=r)`: as low-rank factors (see
        `DataParallel`).
      bytes_per_pack: pack collectives into chunks of about this many bytes
        (0: one pack).
      microbatches: k sequential micro-batches per replica, gradients summed
        locally, one all-reduce per step (see `DataParallel`).
      timeout_seconds: a collective that has not completed after this long
        fails with an error instead of hanging (a dead or stuck peer); also
        how long to wait for every worker in TF_CONFIG to start (default 300
        s). None lets collectives wait forever.
      virtual_devices: split each worker's CPU into this many logical devices
        first (the stages of `GPipe(..., data_parallel="workers")` on CPUs).

    Raises:
      ValueError: a malformed TF_CONFIG, a task index out of range, a port
        in use, workers missing from the cluster, or a bad argument, each
        with the values seen.

    Example:
        In each worker, with TF_CONFIG set (`python -m tfpar.launch` sets it):

        >>> strategy = tfpar.strategies.MultiWorker(timeout_seconds=60)  # doctest: +SKIP
        >>> history = tfpar.fit_distributed(model, x, y, batch_size=64,  # doctest: +SKIP
        ...                                 strategy=strategy)
    """

    def __init__(
        self,
        *,
        all_reduce: str = "auto",
        compression=None,
        bytes_per_pack: int = 0,
        microbatches: int = 1,
        timeout_seconds: float | None = None,
        virtual_devices: int | None = None,
    ):
        if _CURRENT:  # first: the port in use is this process's own, not another's
            message = ("A MultiWorker strategy already exists in this process and TensorFlow "
                       "configures collectives once per process. Reuse it: "
                       "tfpar.strategies.MultiWorker.current() or strategy='multi_worker'.")
            if startup.worker_options() is not None:
                message += (" Under `python -m tfpar.launch`, `import tfpar` made it from the "
                            "launcher's flags: pass the arguments there (--compression, "
                            "--microbatches, --timeout-seconds, --virtual-devices). Received: "
                            f"MultiWorker(all_reduce={all_reduce!r}, compression={compression!r}, "
                            f"bytes_per_pack={bytes_per_pack!r}, microbatches={microbatches!r}, "
                            f"timeout_seconds={timeout_seconds!r}).")
            raise ValueError(message)
        compression_lib.check_options(all_reduce, ALL_REDUCE, compression, bytes_per_pack)
        checks.whole_number("microbatches", microbatches, minimum=1)
        if virtual_devices is not None:
            # Before TensorFlow starts: each worker's CPU as N logical
            # devices, the stages of a pipeline replica (data_parallel="workers").
            devices_lib.split_cpus(virtual_devices)
        self.virtual_devices = virtual_devices
        if timeout_seconds is not None and not timeout_seconds > 0:
            raise ValueError(
                f"timeout_seconds must be > 0 or None. Received: timeout_seconds={timeout_seconds!r}."
            )
        self.config = tf_config.from_environment()
        if self.config.num_workers > 1:
            peers.wait_for_peers(self.config, timeout_seconds or _STARTUP_SECONDS)
        self.all_reduce, self.compression = all_reduce, compression_lib.resolve(compression)
        self.bytes_per_pack, self.timeout_seconds = bytes_per_pack, timeout_seconds
        self.microbatches = microbatches
        options = tf.distribute.experimental.CommunicationOptions(
            bytes_per_pack=bytes_per_pack, timeout_seconds=timeout_seconds,
            implementation=ALL_REDUCE[all_reduce],
        )
        try:
            super().__init__(communication_options=options)
        except RuntimeError as error:
            raise RuntimeError(
                "MultiWorker must be created before any other TensorFlow work "
                "(TensorFlow configures collective ops at program startup). "
                "Create tfpar.strategies.MultiWorker(...) first thing in the "
                "program, before building the model, or start the job with "
                "`python -m tfpar.launch`, which makes it when tfpar is imported."
            ) from error
        _CURRENT.append(self)
        self.communication_hook = compression_lib.communication_hook(self.compression)

    def reduce(self, reduce_op, value, axis):
        # Keras 3 averages each step's scalar metrics with axis=0 under this
        # strategy, which TensorFlow rejects for rank-0 values ("Invalid
        # reduction dimension 0"); for a scalar the intended reduction is
        # across replicas only.
        if axis == 0:
            parts = self.experimental_local_results(value)
            if parts and all(getattr(p, "shape", None) is not None and p.shape.rank == 0 for p in parts):
                axis = None
        return super().reduce(reduce_op, value, axis)

    @classmethod
    def start_from_environment(cls, environ=None) -> "MultiWorker | None":
        """Makes the strategy a launched worker asks for (TFPAR_MULTI_WORKER,
        see `tfpar.cluster.startup`); None in any other process.

        `import tfpar` calls this, so that a worker's strategy exists before
        the program's first TensorFlow op.
        """
        options = startup.worker_options(environ)
        if options is None or _CURRENT:
            return None
        return cls(**options)

    @classmethod
    def existing(cls) -> "MultiWorker | None":
        """The process's MultiWorker strategy, or None if none was made."""
        return _CURRENT[0] if _CURRENT else None

    @classmethod
    def current(cls) -> "MultiWorker":
        """The process's MultiWorker strategy, made now if there is none."""
        return _CURRENT[0] if _CURRENT else cls()

    @property
    def is_chief(self) -> bool:
        """True on the task that writes checkpoints, logs and saved models."""
        return self.config.is_chief

    def __repr__(self) -> str:
        return (
            f"MultiWorker(task={self.config.task_type}:{self.config.task_index} of "
            f"{self.config.num_workers}, all_reduce={self.all_reduce!r}, "
            f"compression={self.compression!r}, microbatches={self.microbatches}, "
            f"timeout_seconds={self.timeout_seconds})"
        )
