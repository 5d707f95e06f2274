"""The train and test functions Keras calls under data parallel: always
across workers, and on one host with `steps_per_execution > 1`.

Keras' own functions (TensorFlow trainer, Keras 3.15) reduce every log
value across workers after every step, one collective each, and run
`steps_per_execution > 1` as a `tf.while_loop` around the step, whose
collectives then sit inside TensorFlow control flow: that fails under
`MultiWorkerMirroredStrategy`, and under `MirroredStrategy` too ("You must
feed a value for placeholder tensor 'while/body/...'"). These functions
instead:

- run `steps_per_execution` steps unrolled in one traced function: no
  collective inside control flow, one call per `steps_per_execution` steps;
- take the batches inside that function when fit knows how many the epoch
  holds (`EpochSteps`, from Keras' own count): each worker's agreement on
  whether a batch is left (tf.distribute's partial-batch check, a
  collective) then runs in the step's graph, not as a host round trip per
  batch, which cost 20 ms of a 280 ms two-worker step on loopback. When the
  count is unknown (a dataset of unknown size, `steps_per_epoch`), the
  batches are taken first, one check each, and as many steps run as there
  were batches;
- reduce the logs once per call, the last step's, all in one collective
  (the mean over replicas, as Keras' `reduce_per_replica` gives). The
  epoch's History comes from the metrics' state, summed across replicas
  at the epoch's end by Keras itself, so it is unchanged.

Example:
    >>> strategy = tfpar.strategies.DataParallel(2)
    >>> logs = strategy.run(lambda: {"loss": tf.cast(
    ...     tf.distribute.get_replica_context().replica_id_in_sync_group, tf.float32)})
    >>> float(reduce_logs(strategy, logs)["loss"])  # the mean over replicas
    0.5
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfpar.core import internals


class EpochSteps(keras.callbacks.Callback):
    """How many batches are left in this epoch of fit, from Keras' own
    count (`params["steps"]`, the epoch iterator's batch count); None when
    unknown: a dataset of unknown size, or the user's `steps_per_epoch`,
    with which Keras keeps one iterator across epochs and the data may run
    out mid-epoch."""

    def __init__(self):
        super().__init__()
        self.known, self.left = False, None

    def added_to(self, fit_kwargs: dict, *, exact: bool = False) -> dict:
        """`fit_kwargs` with this callback added; `exact`: the data holds
        exactly `steps_per_epoch` batches per epoch (`epoch_stream`)."""
        callbacks = fit_kwargs.get("callbacks")
        if (fit_kwargs.get("steps_per_epoch") and not exact) or not (
                callbacks is None or isinstance(callbacks, list)):
            return fit_kwargs  # a CallbackList given: left as it is, count unknown
        return {**fit_kwargs, "callbacks": [*(callbacks or []), self]}

    def on_train_begin(self, logs=None):
        self.known = isinstance(self.params.get("steps"), int) and self.params["steps"] > 0

    def on_epoch_begin(self, epoch, logs=None):
        self.left = self.params["steps"] if self.known else None

    def on_train_end(self, logs=None):
        self.known, self.left = False, None

    def take(self, most: int) -> int | None:
        """Up to `most` of the batches left (counted as taken); None when unknown."""
        if self.left is None:
            return None
        count = min(most, self.left)
        self.left -= count
        return count


class StepFunction:
    """Runs up to `steps_per_execution` steps per call; see the module.

    Args:
      model: the model whose step runs.
      strategy: the multi-worker strategy it runs under.
      step: "train_step" or "test_step".
      epoch: the batches left in fit's epoch, or None (unknown).
    """

    def __init__(self, model: keras.Model, strategy: tf.distribute.Strategy, step: str,
                 epoch: EpochSteps | None = None):
        self.model, self.strategy, self.step, self.epoch = model, strategy, step, epoch
        self._traced = {}  # steps per call -> traced function
        self._fetching = {}  # steps per call -> traced function that takes its batches

    def __call__(self, iterator):
        count = self.epoch.take(self.model.steps_per_execution) if self.epoch else None
        if count is not None:
            if count == 0:
                raise StopIteration
            if count not in self._fetching:
                self._fetching[count] = tf.function(
                    lambda it: self._steps(tuple(it.get_next() for _ in range(count))),
                    reduce_retracing=True)
            return self._fetching[count](iterator)
        batches = []
        for _ in range(self.model.steps_per_execution):
            optional = iterator.get_next_as_optional()
            if not optional.has_value():
                break
            batches.append(optional.get_value())
        if not batches:
            raise StopIteration
        count = len(batches)
        if count not in self._traced:
            self._traced[count] = tf.function(self._steps, reduce_retracing=True)
        return self._traced[count](tuple(batches))

    def _steps(self, batches):
        step = getattr(self.model, self.step)
        logs = None
        for data in batches:  # unrolled: each step's collectives outside control flow
            logs = self.strategy.run(step, args=(data,))
        return reduce_logs(self.strategy, logs)


def reduce_logs(strategy: tf.distribute.Strategy, logs: dict) -> dict:
    """The mean over replicas of each log value; the float scalars (the
    usual metric results) in one collective."""
    names = sorted(logs)
    scalars = [n for n in names if _is_float_scalar(strategy, logs[n])]
    reduced = {}
    if scalars:
        stacked = strategy.run(lambda *values: tf.stack([tf.cast(v, tf.float32) for v in values]),
                               args=tuple(logs[n] for n in scalars))
        means = tf.unstack(strategy.reduce(tf.distribute.ReduceOp.MEAN, stacked, axis=None),
                           num=len(scalars))
        for name, mean in zip(scalars, means):
            reduced[name] = tf.cast(mean, _parts(strategy, logs[name])[0].dtype)
    for name in names:
        if name not in reduced:
            reduced[name] = internals.reduce_per_replica(logs[name], strategy, "auto")
    return {name: reduced[name] for name in logs}


def _parts(strategy, value) -> list:
    return list(strategy.experimental_local_results(value))


def _is_float_scalar(strategy, value) -> bool:
    parts = _parts(strategy, value)
    return all(isinstance(p, tf.Tensor) and p.shape.rank == 0 and p.dtype.is_floating for p in parts)
