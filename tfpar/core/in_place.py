"""The caller's model trained in place under a `tf.distribute` strategy.

tf.distribute trains the variables it created: a model built outside a
strategy's scope holds plain variables. Rather than rebuild the model from
its config (which not every model round-trips: keras_hub Task models,
subclassed models, `Lambda` layers), `Adoption` re-creates each of the
model's variables inside the strategy's scope with its own value (a Keras 3
variable re-created so is a MirroredVariable) and, when training ends,
re-creates them outside it with the trained values. The model object, its
layers, their lookup tables and its methods stay the caller's own, so
callbacks see the caller's model, and a model plain `model.fit` trains is
trained whatever its `get_config` does.

The optimizer is the one part made anew, from its config: the twin
`internals.summed_update_optimizer` makes clips and accumulates the
replicas' summed gradient (Keras' own clips each replica's share). It
starts from the caller's optimizer state and gives it back, so the caller's
optimizer object keeps its identity and ends as `model.fit` would leave it.

Example:
    >>> strategy = tfpar.strategies.DataParallel(2)
    >>> adoption = Adoption(model, strategy)
    >>> trained = adoption.adopt()           # the same object, in the scope
    >>> trained is model, model.distribute_strategy is strategy
    (True, True)
    >>> adoption.release(trained=False)      # back as it was
    >>> model.distribute_strategy is strategy
    False

A pipeline rebuilds the caller's model as stage sub-models on their
devices, each layer from its config (`replica.clone_layer`). A layer whose
config does not round-trip is trained itself instead (`OwnLayers`): its
variables are re-created on its stage's device and back.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfpar.core import internals, replica


class Adoption:
    """Moves a model's variables into a strategy's scope and back.

    Args:
      model: the caller's model, built outside any strategy scope.
      strategy: the `tf.distribute.Strategy` to train it under.
      communication: how the twin optimizer sums the replicas' gradients
        (a `tfpar.comm.all_reduce.GradientSum`); None: as Keras does.
      shards: None, or a callable making the replicas' shares of the
        optimizer state from (the caller's optimizer, the weights), outside
        the scope (`tfpar.replication.optimizer_shards`, ZeRO-1).
    """

    def __init__(self, model: keras.Model, strategy: tf.distribute.Strategy, communication=None,
                 shards=None):
        self.model, self.strategy, self.communication = model, strategy, communication
        self.make_shards = shards
        self.optimizer = getattr(model, "optimizer", None) if getattr(model, "compiled", False) else None
        self._before = None

    def adopt(self) -> keras.Model:
        """Re-creates the model's variables in the strategy's scope, with a
        twin optimizer holding the caller's optimizer state; returns the model."""
        model = self.model
        variables = state_variables(model)
        self._before = [(v, np.array(v.numpy())) for v in variables]
        with self.strategy.scope():
            for variable in variables:
                internals.recreate_variable(variable)
            internals.set_home_strategy(model, self.strategy)
            if self.optimizer is not None:
                twin = internals.summed_update_optimizer(self.optimizer, self.communication)
                model.optimizer = twin
        if self.optimizer is not None:
            inner = _inner(twin)
            if self.make_shards is not None:
                inner.shards = self.make_shards(_inner(self.optimizer), model.trainable_variables)
            if self.optimizer.built:
                with self.strategy.scope():
                    twin.build(model.trainable_variables)
                replica.copy_values(*_own_state(self.optimizer, twin), "optimizer state")
                if inner.shards is not None:
                    inner.shards.load(_inner(self.optimizer))
        forget_functions(model)
        return model

    def release(self, *, trained: bool) -> None:
        """Re-creates the variables outside any scope. With `trained`, they
        keep their values and the caller's optimizer gets the twin's state;
        otherwise (training failed, or only predicted) everything is as
        before `adopt`."""
        model = self.model
        twin = model.optimizer if self.optimizer is not None else None
        for variable in state_variables(model):
            internals.recreate_variable(variable)
        internals.set_home_strategy(model, None)
        if twin is not None:
            model.optimizer = self.optimizer
            if trained and twin.built:
                if not self.optimizer.built:
                    self.optimizer.build(model.trainable_variables)
                replica.copy_values(*reversed(_own_state(self.optimizer, twin)), "optimizer state")
                shards = _inner(twin).shards
                if shards is not None:
                    shards.store(_inner(self.optimizer))
        internals.refresh_variable_keys(self.optimizer)
        if not trained:
            for variable, value in self._before:
                variable.assign(value)
        forget_functions(model)


def _inner(optimizer):
    """The optimizer a LossScaleOptimizer wraps, or the optimizer."""
    return optimizer.inner_optimizer if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) else optimizer


def _own_state(optimizer, twin) -> tuple[list, list]:
    """The caller's optimizer variables and the twin's that pair with them:
    all of them, or, when the twin's slots are in shards, those the twin
    holds itself (the step count, the learning rate, accumulators)."""
    if _inner(twin).shards is None:
        return list(optimizer.variables), list(twin.variables)
    # Paired by name within the optimizer (the same weights name the same slots).
    names = {v.path.split("/", 1)[-1]: v for v in twin.variables}
    pairs = [(v, names[v.path.split("/", 1)[-1]]) for v in optimizer.variables
             if v.path.split("/", 1)[-1] in names]
    return [a for a, _ in pairs], [b for _, b in pairs]


class OwnLayers:
    """Layers of the caller's model that a pipeline trains themselves, in
    its twin, because they cannot be rebuilt from their config.

    Example:
        >>> own = OwnLayers()
        >>> with tf.device("/cpu:1"):
        ...     layer = own.take(model.layers[1])   # the same object, on /cpu:1
        >>> own.release(model, trained=False)       # back, with its values
    """

    def __init__(self):
        self._taken = []  # (layer, its Keras node counts, [(variable, value)])

    def take(self, layer: keras.layers.Layer) -> keras.layers.Layer:
        """Re-creates the layer's variables in the current device scope;
        returns the layer."""
        variables = [v for v in layer.variables if internals.is_initialized(v)]
        self._taken.append((layer, internals.node_counts(layer),
                            [(v, np.array(v.numpy())) for v in variables]))
        for variable in variables:
            internals.recreate_variable(variable)
        return layer

    def release(self, model: keras.Model, *, trained: bool) -> None:
        """Re-creates the variables outside any device scope (keeping the
        trained values, or those from before `take`), forgets the calls the
        twin made and the functions `model` traced over the old variables."""
        if not self._taken:
            return
        with tf.device(None):
            for layer, counts, before in self._taken:
                for variable, value in before:
                    internals.recreate_variable(variable)
                    if not trained:
                        variable.assign(value)
                internals.forget_calls_after(layer, counts)
        self._taken = []
        internals.refresh_variable_keys(getattr(model, "optimizer", None))
        forget_functions(model)


def state_variables(model: keras.Model) -> list:
    """Every variable the model holds: its weights (trainable or not, seed
    states included) and its metrics' and loss tracker's state."""
    seen, out = set(), []
    for variable in [*model.variables, *model.metrics_variables]:
        if id(variable) not in seen and internals.is_initialized(variable):
            seen.add(id(variable))
            out.append(variable)
    return out


def forget_functions(model: keras.Model) -> None:
    """Drops the model's traced train / test / predict functions, which
    captured its variables as they were before they were re-created."""
    model.train_function = model.test_function = model.predict_function = None
