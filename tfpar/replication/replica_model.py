"""How data parallel takes over Keras' step: one subclass of the model's class.

`fit_distributed` trains the caller's own model object under a
`tf.distribute` strategy (`tfpar.core.in_place`). For the duration of its
fit or evaluate, `replicated` makes that object an instance of a subclass
of its own class, made for the call (as `torch.nn.utils.parametrize` does
for a module), and gives it back its class afterwards. The subclass
overrides only what tfpar changes:

- `train_step` and `test_step`: `ReplicaSteps` (padding marks,
  micro-batches, per-sample lookups), unless the model has steps of its
  own, which run as they are;
- `make_train_function` and `make_test_function`: `StepFunction`, across
  workers or with `steps_per_execution > 1` (`train_function`);
- the first-batch build: from one replica's share of the first batch.

It keeps the class's name and module, and its registered name if the
caller registered the class (`internals.serialized_as`), so what a callback
saves during fit loads as the caller's class. Pipelines do the same with a Model subclass of
their own (`tfpar.pipeline.engine.PipelineModel`).

Example:
    >>> strategy, own = tfpar.strategies.DataParallel(2), type(model)
    >>> with strategy.scope(), replicated(model, strategy):
    ...     print(type(model) is own, isinstance(model, own), type(model).__name__ == own.__name__)
    False True True
    >>> type(model) is own
    True
"""

from __future__ import annotations

import contextlib
import warnings

import keras
import tensorflow as tf

from tfpar.core import checks, internals, microbatch
from tfpar.replication import epoch_stream, input_shares, replica_steps, train_function


@contextlib.contextmanager
def replicated(model: keras.Model, strategy: tf.distribute.Strategy, fit=None, *, microbatches: int = 1):
    """For the duration, `model` trains and evaluates with tfpar's replica
    steps and functions under `strategy` (see the module).

    Args:
      model: the caller's model, its variables in the strategy's scope.
      strategy: the strategy it runs under.
      fit: None (evaluate), or fit's `(x, y, fit_kwargs)`.
      microbatches: sequential micro-batches of each replica's share.

    Yields:
      None, or the `(x, y, fit_kwargs)` to give fit instead: under
      MultiWorker, array inputs as one stream (`epoch_stream`), and an
      `EpochSteps` callback whenever tfpar's functions run.
    """
    replicas = strategy.num_replicas_in_sync
    custom = checks.overridden(model, ["train_step", "test_step"])
    methods, steps, marked, scale_real = {}, None, False, None
    if custom and replicas > 1:
        warnings.warn(
            f"Model {model.name!r} overrides {custom}: tfpar runs its steps as they "
            "are, as tf.distribute does. Two consequences: under tf.distribute Keras' "
            "compute_loss returns the loss scaled by 1/replicas (gradients are summed "
            "across replicas), so a step that reports it shows the loss divided by "
            f"{replicas}; and a batch the replicas do not divide is split unevenly "
            "(use a batch size that divides the sample count).",
            stacklevel=4,
        )
    if not custom and (replicas > 1 or microbatches > 1):
        marked = isinstance(strategy, input_shares.SharedInput)
        scale_real = not microbatch.unaveraged_losses(model)
        steps = replica_steps.ReplicaSteps(model, microbatches, marked=marked)
        methods.update(train_step=_train_step, test_step=_test_step)
    if replicas > 1 or steps is not None:
        methods[internals.SYMBOLIC_BUILD_HOOK] = _first_batch_build
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    epoch = None
    if multi_worker or getattr(model, "steps_per_execution", 1) > 1:
        epoch = train_function.EpochSteps()
        methods.update(make_train_function=_make_train_function, make_test_function=_make_test_function)
        if fit is not None:
            streamed = epoch_stream.fit_arguments(*fit) if multi_worker else None
            x, y, fit_kwargs = streamed or fit
            fit = x, y, epoch.added_to(fit_kwargs, exact=streamed is not None)
    own = made = type(model)
    if methods:
        methods.update(__module__=own.__module__, __qualname__=own.__qualname__,
                       _replication=_Replication(strategy, steps, marked, epoch))
        made = type(own.__name__, (own,), methods)
        model.__class__ = made
    try:
        with internals.serialized_as(made, own), \
                input_shares.sharing(strategy, scale_real=scale_real if marked else None):
            yield fit
    finally:
        model.__class__ = own
        # Keras caches the functions traced from the steps.
        model.train_function = model.test_function = None


class _Replication:
    """What the subclass's methods read: the call's strategy and steps."""

    def __init__(self, strategy, steps, marked: bool, epoch):
        self.strategy, self.steps, self.marked, self.epoch = strategy, steps, marked, epoch


def _train_step(self, data):
    return self._replication.steps.train_step(data)


def _test_step(self, data):
    return self._replication.steps.test_step(data)


def _make_train_function(self, force=False):
    if self.train_function is None or force:
        replication = self._replication
        self.train_function = train_function.StepFunction(
            self, replication.strategy, "train_step", replication.epoch)
    return self.train_function


def _make_test_function(self, force=False):
    if self.test_function is None or force:
        self.test_function = train_function.StepFunction(self, self._replication.strategy, "test_step")
    return self.test_function


def _first_batch_build(self, iterator=None, data_batch=None):
    # Keras reduces the replicas' shares into one batch first, which fails
    # when their shapes differ (an uneven batch) and, across workers,
    # always (keras-team/keras#20585): built from one replica's share.
    strategy = self._replication.strategy
    data_batch = internals.first_batch(iterator, data_batch)
    data_batch = keras.tree.map_structure(
        lambda v: strategy.experimental_local_results(v)[0] if v is not None else None, data_batch)
    if self._replication.marked and data_batch is not None:
        data_batch = replica_steps.unpack(data_batch, marked=True)[:3]
    with strategy.scope():
        internals.symbolic_build(self, data_batch)
