"""The small contract every strategy meets inside `fit_distributed`.

A strategy object knows how to check the fit arguments against its layout,
make the model that trains from the caller's (the caller's own under a
`tf.distribute` strategy, a placed twin for a pipeline), run Keras' fit,
predict and evaluate on it, and leave the caller's model trained (or, after
a failure, untouched). tfpar's own strategies that are not `tf.distribute`
strategies (ModelSplit, GPipe) implement these methods; `for_strategy`
adapts any `tf.distribute.Strategy` to them.
"""

from __future__ import annotations

import warnings
from typing import Protocol

import keras
import tensorflow as tf

from tfpar.comm import compression as compression_lib
from tfpar.core import in_place, inputs
from tfpar.replication import input_shares, optimizer_shards, replica_steps, speed_shares
from tfpar.replication.replica_model import replicated


class Runner(Protocol):
    """What `fit_distributed` and the planner read of a strategy.

    Attributes:
      microbatches: micro-batches per replica's share (1: none).
      compression: how gradients travel between replicas: None, "fp16",
        "bf16" or a `PowerSGD`.
      is_chief: True on the process that writes checkpoints, logs and
        saved models (every process but one is a worker's, under a
        multi-worker job).
      shard: None, or what each replica holds only its share of
        ("optimizer": the optimizer state).
    """

    microbatches: int
    compression: object
    is_chief: bool
    shard: str | None

    def check_fit(self, x, fit_kwargs: dict) -> None: ...

    def recreate(self, model: keras.Model) -> keras.Model:
        """The model that trains: the caller's own, moved into the
        strategy's scope, or a twin (a pipeline) built from it."""

    def write_back(self, trained: keras.Model, model: keras.Model) -> None:
        """After training: the caller's `model` holds the trained state."""

    def discard(self, trained: keras.Model, model: keras.Model) -> None:
        """After a failed fit, or a prediction: `model` is as it was."""

    def fit(self, model: keras.Model, x, y, fit_kwargs: dict) -> keras.callbacks.History: ...

    def predict(self, model: keras.Model, x, predict_kwargs: dict): ...

    def evaluate(self, model: keras.Model, x, y, evaluate_kwargs: dict): ...


def for_strategy(strategy) -> Runner:
    """The runner of a strategy: itself, or an adapter for tf.distribute."""
    if isinstance(strategy, tf.distribute.Strategy):
        return _Distribute(strategy)
    return strategy


def check_divisible(x, fit_kwargs: dict, parts: int, what: str, *, uneven_note: str | None) -> None:
    """Checks the global batch splits into `parts`; warns on a short last
    batch when `uneven_note` says what happens to it.

    Raises:
      ValueError: `batch_size` is not divisible by `parts`.
    """
    batch = inputs.global_batch(x, fit_kwargs)
    if batch is None or parts == 1:
        return
    if batch % parts:
        lower = max(parts, batch // parts * parts)
        raise ValueError(
            f"batch_size is the global batch and must be divisible by the "
            f"number of {what} ({parts}) so that each gets an equal share. "
            f"Received: batch_size={batch}. Use batch_size={lower} or {lower + parts}."
        )
    count = inputs.sample_count(x)
    if count is None or uneven_note is None:
        return
    train = inputs.training_count(count, fit_kwargs.get("validation_split"))
    if train % batch:
        warnings.warn(
            f"{train} training samples do not divide into batches of {batch}: "
            f"the last batch of each epoch is smaller. {uneven_note}",
            stacklevel=4,
        )


def check_share_divisible(batch: int | None, replicas: int, microbatches: int) -> None:
    """Checks each replica's share of the global batch cuts into
    `microbatches` equal micro-batches (an epoch's short last batch is cut
    as evenly as it goes).

    Raises:
      ValueError: the per-replica batch is not divisible by `microbatches`.

    Example:
        >>> check_share_divisible(64, 2, 4)
        >>> check_share_divisible(64, 2, 3)
        Traceback (most recent call last):
        ...
        ValueError: microbatches must divide each replica's share of the batch: batch_size=64 over 2 replicas is 32 per replica, which 3 micro-batches do not divide. Use batch_size=60 or 66, or microbatches=2.
    """
    if batch is None or microbatches == 1:
        return
    share = batch // replicas
    if share % microbatches:
        step = replicas * microbatches
        lower = max(step, batch // step * step)
        divisor = max(d for d in range(1, microbatches + 1) if share % d == 0)
        raise ValueError(
            "microbatches must divide each replica's share of the batch: "
            f"batch_size={batch} over {replicas} replica{'s' if replicas > 1 else ''} is "
            f"{share} per replica, which "
            f"{microbatches} micro-batches do not divide. Use batch_size={lower} or "
            f"{lower + step}, or microbatches={divisor}."
        )


class _Distribute:
    """A `tf.distribute.Strategy` as a runner: the caller's model itself,
    its variables moved into the strategy's scope (`in_place`), trained by
    tfpar's replica steps (`replica_model`). tfpar's own strategies
    (`input_shares.SharedInput`) also shape each replica's share."""

    def __init__(self, strategy: tf.distribute.Strategy):
        self.strategy = strategy
        self._adoption = None
        own = isinstance(strategy, input_shares.SharedInput)
        self.shaped = own
        self.microbatches = strategy.microbatches if own else 1
        self.compression = strategy.compression if own else None
        self.communication = strategy.communication_hook if own else None
        self.shard = strategy.shard if own else None

    @property
    def is_chief(self) -> bool:
        # tf.distribute's own answer: False on a multi-worker job's workers.
        return self.strategy.extended.should_checkpoint

    def check_fit(self, x, fit_kwargs: dict) -> None:
        replicas = self.strategy.num_replicas_in_sync
        check_divisible(
            x, fit_kwargs, replicas, "replicas",
            # tfpar's strategies pad a short batch to equal shares, exactly
            # (equal_shares); a model with its own train_step is warned
            # about in replica_model.
            uneven_note=None if self.shaped else (
                f"{type(self.strategy).__name__} splits it unevenly across the replicas, whose "
                "summed mean losses then differ from the batch's mean. "
                "tfpar.strategies.DataParallel pads it to equal shares and stays exact."),
        )
        check_share_divisible(inputs.global_batch(x, fit_kwargs), replicas, self.microbatches)

    def recreate(self, model: keras.Model) -> keras.Model:
        shards = None
        if self.shard is not None:
            wire = compression_lib.WIRE_DTYPES.get(self.compression) if isinstance(self.compression, str) else None
            shards = lambda optimizer, variables: optimizer_shards.OptimizerShards(  # noqa: E731
                optimizer, variables, self.strategy, level=self.shard, wire_dtype=wire)
        self._adoption = in_place.Adoption(model, self.strategy, self.communication, shards)
        return self._adoption.adopt()

    def write_back(self, trained: keras.Model, model: keras.Model) -> None:
        self._adoption.release(trained=True)

    def discard(self, trained: keras.Model, model: keras.Model) -> None:
        self._adoption.release(trained=False)

    def fit(self, model: keras.Model, x, y, fit_kwargs: dict) -> keras.callbacks.History:
        replica_steps.check_own_train_step(model, self.microbatches)
        self._prepare_speeds(model, x, fit_kwargs)
        if self.shard is not None and self._adoption is None:
            raise ValueError(
                f"shard={self.shard!r} shares the optimizer state through tfpar's optimizer, but "
                f"model {model.name!r} was built in the strategy's scope and trains with its own. "
                "Build the model outside the scope (fit_distributed moves it in).")
        if self._adoption is not None:
            optimizer_shards.check_optimizer(self.shard, self._adoption.optimizer, self.microbatches)
        if self.communication is not None:
            if self._adoption is None:
                warnings.warn(
                    f"compression={self.compression!r} compresses the gradients that tfpar's "
                    f"optimizer sums, but model {model.name!r} was built in the strategy's scope "
                    "and trains with its own optimizer, which all-reduces them uncompressed. Build "
                    "the model outside the scope (fit_distributed moves it in).", stacklevel=3)
            with self.strategy.scope():
                self.communication.prepare(model.trainable_weights)  # fresh state each fit
        with self.strategy.scope(), replicated(model, self.strategy, (x, y, fit_kwargs),
                                               microbatches=self.microbatches) as (x, y, fit_kwargs):
            return model.fit(x, y, **fit_kwargs)

    def predict(self, model: keras.Model, x, predict_kwargs: dict):
        # Without targets a dataset is split as tf.distribute splits it.
        with self.strategy.scope(), input_shares.sharing(self.strategy, scale_real=None):
            return model.predict(x, **predict_kwargs)

    def evaluate(self, model: keras.Model, x, y, evaluate_kwargs: dict):
        self._prepare_speeds(model, x, evaluate_kwargs)
        with self.strategy.scope(), replicated(model, self.strategy, microbatches=self.microbatches):
            return model.evaluate(x, y, **evaluate_kwargs)

    def _prepare_speeds(self, model: keras.Model, x, kwargs: dict) -> None:
        if self.shaped and self.strategy.device_speeds is not None:
            speed_shares.prepare(self.strategy, model, inputs.global_batch(x, kwargs))
