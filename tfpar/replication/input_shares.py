"""Each replica's share of every batch, made where tf.distribute makes it.

Keras' fit hands every epoch's dataset to its strategy's
`experimental_distribute_dataset`. tfpar's data-parallel strategies
(`DataParallel`, `MultiWorker`) inherit `SharedInput`, whose method of that
name shapes the shares while `fit_distributed` runs (`sharing`): equal,
padded shares of a batch the replicas do not divide (`equal_shares`), or
shares by device speed (`speed_shares`), each row marked with its loss
weight for the replica steps (`replica_steps`). Outside `fit_distributed`
(plain Keras in the strategy's scope) datasets are distributed as
tf.distribute does, with a warning when an option only `fit_distributed`
applies was given.

Example:
    >>> strategy = tfpar.strategies.DataParallel(2)
    >>> with strategy.sharing(scale_real=True):
    ...     dataset = strategy.experimental_distribute_dataset(
    ...         tf.data.Dataset.from_tensor_slices((tf.ones((3, 1)), tf.ones(3))).batch(3))
    >>> x, y, marks = next(iter(dataset))  # 3 rows padded to 4: real rows weigh 4/3
    >>> [[round(float(v), 3) for v in m] for m in strategy.experimental_local_results(marks)]
    [[1.333, 1.333], [1.333, 0.0]]
"""

from __future__ import annotations

import contextlib
import warnings

import tensorflow as tf

from tfpar.replication import equal_shares, speed_shares

_PLAIN = object()  # sharing(scale_real=None): distributed as tf.distribute does


class SharedInput:
    """Mixin of tfpar's data-parallel strategies: shapes the replicas'
    shares during `fit_distributed` (a `tf.distribute.Strategy` subclass
    lists it first among its bases).

    Attributes:
      microbatches: sequential micro-batches of each replica's share.
      device_speeds: None (equal shares), or one relative speed per replica.
      compression: None, "fp16", "bf16" or a `PowerSGD`.
      communication_hook: the gradient sum that `compression` makes
        (`tfpar.comm`), which tfpar's optimizer twin calls; None: Keras'
        own all-reduce.
      shard: None, or "optimizer": each replica holds its share of the
        optimizer state (`optimizer_shards`).
    """

    microbatches = 1
    device_speeds = None
    compression = None
    communication_hook = None
    shard = None
    _scale_real = None  # None: plain Keras; _PLAIN, True or False: sharing

    @contextlib.contextmanager
    def sharing(self, *, scale_real):
        """For the duration, datasets with targets are distributed as marked
        shares; `scale_real`: real rows weigh padded / real (losses averaged
        over the batch), or 1 (summed losses); None: as tf.distribute does,
        without the plain-Keras warning (a model running its own steps)."""
        previous, self._scale_real = self._scale_real, _PLAIN if scale_real is None else scale_real
        try:
            yield
        finally:
            self._scale_real = previous

    @property
    def shares_marked(self) -> bool:
        """True while datasets are distributed as marked shares."""
        return self._scale_real is not None and self._scale_real is not _PLAIN

    def experimental_distribute_dataset(self, dataset, options=None):
        if self._scale_real is None:
            self._warn_plain_keras()
        elif self._scale_real is not _PLAIN:
            if self.device_speeds is not None:
                split = speed_shares.split_dataset(dataset, self.device_speeds, scale_real=self._scale_real)
                if split is not dataset:  # one element per replica
                    return self.distribute_datasets_from_function(lambda context: split, options)
            else:
                dataset = equal_shares.pad_dataset(dataset, self.num_replicas_in_sync,
                                                   scale_real=self._scale_real)
        return super().experimental_distribute_dataset(dataset, options)

    def _warn_plain_keras(self) -> None:
        if self.microbatches > 1:
            warnings.warn(
                f"{type(self).__name__}(microbatches={self.microbatches}) cuts each "
                "replica's share into micro-batches only in tfpar.fit_distributed; plain "
                "model.fit in the strategy's scope runs Keras' own step on whole shares.",
                stacklevel=3,
            )
        if self.compression is not None:
            warnings.warn(
                f"{type(self).__name__}(compression={self.compression!r}) compresses the "
                "gradients in tfpar.fit_distributed, whose optimizer sums them; plain model.fit "
                "in the strategy's scope runs uncompressed.",
                stacklevel=3,
            )
        if self.shard is not None:
            warnings.warn(
                f"{type(self).__name__}(shard={self.shard!r}) shares the optimizer state in "
                "tfpar.fit_distributed, whose optimizer updates the shares; plain model.fit in the "
                "strategy's scope keeps every replica's full state.",
                stacklevel=3,
            )
        if self.device_speeds is not None:
            warnings.warn(
                f"{type(self).__name__}(device_speeds={self.device_speeds!r}) gives "
                "replicas shares by speed only in tfpar.fit_distributed and "
                "evaluate_distributed; plain Keras in the strategy's scope splits each batch "
                "equally.",
                stacklevel=3,
            )


@contextlib.contextmanager
def sharing(strategy: tf.distribute.Strategy, *, scale_real):
    """`strategy.sharing(...)` for tfpar's strategies; nothing for others
    (a plain `tf.distribute` strategy distributes batches as it does)."""
    if not isinstance(strategy, SharedInput):
        yield
        return
    with strategy.sharing(scale_real=scale_real):
        yield
