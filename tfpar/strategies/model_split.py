"""Naive model parallel: a model's layers split into stages on devices.

The whole batch flows stage to stage; at any moment one device works and the
others wait. It lets a model that does not fit on one device train, and it
is the baseline a pipeline (`GPipe`) is measured against.
"""

from __future__ import annotations

from collections.abc import Sequence

from tfpar.strategies.pipeline_strategy import PipelineStrategy


class ModelSplit(PipelineStrategy):
    """Splits a model's layers into contiguous stages, one per device.

    Args:
      devices: an int N (the first N local devices), a list of names, or None
        (every local device of the fastest kind). One stage per device, in
        order; remote devices such as "/job:worker/task:1/device:CPU:0" work
        once the cluster is connected.
      balance: how layers are divided: "flops" (estimated forward FLOPs),
        "params", "time" (measured forward time), or an explicit list of
        layer counts per stage.
      device_speeds: relative speed of each stage's device for mixed devices
        (e.g. [8, 1] when the first is a GPU 8x the CPU); None means equal.
      data_parallel: R, how many replicas of the pipeline train data
        parallel. `devices` is then read as R groups of K = len(devices) / R
        consecutive devices, one replica each (stage s of replica r on
        `devices[r * K + s]`); each replica gets an equal share of the
        global batch, and each stage's gradients are summed across the
        replicas with TensorFlow's collective ops before one update. Or
        "workers": in a multi-worker job, each worker trains one replica on
        its own `devices`, and the sums cross the workers.

    Example:
        >>> devices = tfpar.configure_devices(cpu=2)
        >>> strategy = tfpar.strategies.ModelSplit(2, balance="params")
        >>> history = tfpar.fit_distributed(model, x, y, strategy=strategy, verbose=0)
    """

    def __init__(
        self,
        devices: int | Sequence[str] | None = None,
        *,
        balance: str | Sequence[int] = "flops",
        device_speeds: Sequence[float] | None = None,
        data_parallel: int | str = 1,
    ):
        super().__init__(devices, microbatches=1, balance=balance, device_speeds=device_speeds,
                         data_parallel=data_parallel)

    def __repr__(self) -> str:
        return f"ModelSplit(devices={self.devices}, balance={self.balance!r}" + self._data_parallel_repr() + ")"
