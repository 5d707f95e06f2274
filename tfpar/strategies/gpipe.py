"""GPipe pipeline parallelism: micro-batches flowing through stages.

Like `ModelSplit`, but the global batch is cut into M micro-batches: while
stage 1 works on micro-batch 0, stage 0 already runs micro-batch 1. Gradients
are accumulated over the micro-batches and applied once per batch, so the
training is the same as on one device (Huang et al., GPipe, 2019).
"""

from __future__ import annotations

from tfpar.strategies.pipeline_strategy import PipelineStrategy


class GPipe(PipelineStrategy):
    """Pipeline-parallel training over stages on devices.

    Args:
      devices: as for `ModelSplit`: an int, a list of names, or None.
      microbatches: M, the number of micro-batches per global batch; the
        ideal speedup over `ModelSplit` is K*M/(M+K-1) for K stages (rule of
        thumb: M >= 4K).
      balance: "flops" | "params" | "time" | a list of layer counts.
      schedule: "gpipe" (all forwards, then all backwards), "1f1b"
        (PipeDream-flush: stage s holds at most K-s micro-batches'
        activations instead of M) or "zb1" (zero bubble, ZB-H1: each
        backward split into its input half B, sent upstream at once, and
        its weight half W, run where the stage would wait; each stage holds
        at most K micro-batches); the result is the same.
      rematerialize: keep only each stage's boundary activations and
        recompute the rest during the backward pass, trading compute for
        memory.
      device_speeds: relative speed of each stage's device, as for ModelSplit.
      record_timeline: record when each stage ran each micro-batch's forward
        and backward in the last step; read it from a callback with
        `self.model.last_timeline()` (seconds) and `self.model.task_order`.
      data_parallel: R replicas of the pipeline trained data parallel, as
        for ModelSplit: `devices` holds R x K devices, the batch R x M
        micro-batches, and each stage's all-reduce starts once its last
        backward is done.

    BatchNormalization normalises each micro-batch with its own statistics in
    training, as in the GPipe paper, and updates its moving statistics once
    per micro-batch; evaluation and prediction use the moving statistics.
    With M > 1 a model with BatchNormalization therefore trains slightly
    differently from one device (exact when M = 1). Dropout and other random
    layers draw fresh randomness per micro-batch: the masks differ from a
    one-device run, their distribution does not, and with rematerialisation
    the recomputed pass repeats the first pass's masks exactly.

    Example:
        >>> devices = tfpar.configure_devices(cpu=2)
        >>> strategy = tfpar.strategies.GPipe(2, microbatches=8, schedule="1f1b")
        >>> history = tfpar.fit_distributed(model, x, y, batch_size=256, strategy=strategy,
        ...                                 verbose=0)
    """

    def __repr__(self) -> str:
        return (
            f"GPipe(devices={self.devices}, microbatches={self.microbatches}, "
            f"balance={self.balance!r}, schedule={self.schedule!r}, "
            f"rematerialize={self.rematerialize}" + self._data_parallel_repr() + ")"
        )
