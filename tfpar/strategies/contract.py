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

from tfpar.comm import compression
from tfpar.core import in_place, inputs
from tfpar.replication import replica_steps, speed_shares
from tfpar.replication.equal_shares import equal_shares
from tfpar.replication.train_function import train_function_installed


class Runner(Protocol):
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
    its variables moved into the strategy's scope (`in_place`)."""

    def __init__(self, strategy: tf.distribute.Strategy):
        self.strategy = strategy
        self._adoption = None

    def check_fit(self, x, fit_kwargs: dict) -> None:
        replicas = self.strategy.num_replicas_in_sync
        check_divisible(
            x, fit_kwargs, replicas, "replicas",
            # A short batch is padded to equal shares and stays exact
            # (equal_shares), or, for a model with its own train_step,
            # warned about there.
            uneven_note=None,
        )
        check_share_divisible(inputs.global_batch(x, fit_kwargs), replicas,
                           getattr(self.strategy, "microbatches", 1))

    def recreate(self, model: keras.Model) -> keras.Model:
        self._adoption = in_place.Adoption(model, self.strategy)
        return self._adoption.adopt()

    def write_back(self, trained: keras.Model, model: keras.Model) -> None:
        self._adoption.release(trained=True)

    def discard(self, trained: keras.Model, model: keras.Model) -> None:
        self._adoption.release(trained=False)

    def fit(self, model: keras.Model, x, y, fit_kwargs: dict) -> keras.callbacks.History:
        replica_steps.check_own_train_step(model, getattr(self.strategy, "microbatches", 1))
        speed_shares.prepare(self.strategy, model, inputs.global_batch(x, fit_kwargs))
        compression.prepare(self.strategy, model)  # PowerSGD's state, outside the scope
        with self.strategy.scope(), equal_shares(model, self.strategy), \
                train_function_installed(model, self.strategy, (x, y, fit_kwargs)) as (x, y, fit_kwargs):
            return model.fit(x, y, **fit_kwargs)

    def predict(self, model: keras.Model, x, predict_kwargs: dict):
        with self.strategy.scope(), replica_steps.active(self.strategy):
            return model.predict(x, **predict_kwargs)

    def evaluate(self, model: keras.Model, x, y, evaluate_kwargs: dict):
        speed_shares.prepare(self.strategy, model, inputs.global_batch(x, evaluate_kwargs))
        with self.strategy.scope(), equal_shares(model, self.strategy), \
                train_function_installed(model, self.strategy):
            return model.evaluate(x, y, **evaluate_kwargs)
