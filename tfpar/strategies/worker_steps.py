"""The train and test functions Keras calls under data parallel: always
across workers, and on one host with `steps_per_execution > 1`.

Keras' own functions (TensorFlow trainer, Keras 3.15) reduce every log
value across workers after every step, one collective each, and run
`steps_per_execution > 1` as a `tf.while_loop` around the step, whose
collectives then sit inside TensorFlow control flow: that fails under
`MultiWorkerMirroredStrategy`, and under `MirroredStrategy` too ("You must
feed a value for placeholder tensor 'while/body/...'"). These functions
instead:

- take up to `steps_per_execution` batches from the iterator (each worker
  agrees whether one is left, as tf.distribute's iterator does) and run
  them as that many steps unrolled in one traced function: no collective
  inside control flow, one call per `steps_per_execution` steps;
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

import contextlib

import keras
import tensorflow as tf

from tfpar import internals


@contextlib.contextmanager
def worker_steps_installed(model: keras.Model, strategy: tf.distribute.Strategy):
    """For the duration, `model`'s train and test functions are these,
    under a multi-worker strategy, or any strategy with several steps per
    execution (otherwise: Keras' own)."""
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    if not multi_worker and getattr(model, "steps_per_execution", 1) == 1:
        yield
        return
    model.make_train_function = lambda force=False: _make(model, strategy, "train", force)
    model.make_test_function = lambda force=False: _make(model, strategy, "test", force)
    try:
        yield
    finally:
        del model.make_train_function, model.make_test_function
        model.train_function = model.test_function = None


def _make(model, strategy, kind: str, force: bool):
    attribute = f"{kind}_function"
    if getattr(model, attribute) is None or force:
        # Looked up when traced: ReplicaSteps may have replaced the step.
        setattr(model, attribute, StepFunction(model, strategy, f"{kind}_step"))
    return getattr(model, attribute)


class StepFunction:
    """Runs up to `steps_per_execution` steps per call; see the module.

    Args:
      model: the model whose step runs.
      strategy: the multi-worker strategy it runs under.
      step: "train_step" or "test_step".
    """

    def __init__(self, model: keras.Model, strategy: tf.distribute.Strategy, step: str):
        self.model, self.strategy, self.step = model, strategy, step
        self._traced = {}  # steps per call -> traced function

    def __call__(self, iterator):
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
