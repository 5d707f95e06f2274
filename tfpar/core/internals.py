"""The one door to Keras' and TensorFlow's private attributes.

tfpar needs a few things neither library makes public: the compiled loss
configuration, the hook through which Keras builds metric state from a first
batch, the logits a softmax leaves on its output, the options a
MirroredStrategy merges into its collectives. Each is reached here and
nowhere else in tfpar, so that a release which moves one breaks a single
named test (tests/test_internals.py, which names the versions it was
checked on) instead of silently changing what tfpar trains.

Checked on TensorFlow 2.21.0 and Keras 3.15.1 (setup.py caps TensorFlow
below the next minor release for this reason).
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.ops import gen_collective_ops
from keras.src.backend.tensorflow.trainer import reduce_per_replica as _reduce_per_replica
from keras.src.losses.loss import unscale_loss_for_distribution
from keras.src.saving import object_registration as _object_registration
from keras.src.trainers.data_adapters import array_data_adapter as _array_data_adapter
from keras.src.trainers.data_adapters import array_slicing as _array_slicing

CHECKED_ON = {"tensorflow": "2.21.0", "keras": "3.15.1"}

__all__ = [
    "CHECKED_ON",
    "add_control_inputs",
    "added_losses",
    "builds_by_running",
    "call_has_training_arg",
    "clip_norm_over",
    "communication_options",
    "compile_config",
    "compute_loss",
    "home_strategy",
    "inbound_node_count",
    "is_initialized",
    "is_functional",
    "keras_logits",
    "loss_tracker",
    "output_structure",
    "recreate_variable",
    "set_collective_key_base",
    "set_communication_options",
    "serialized_as",
    "set_home_strategy",
    "standardize_inputs",
    "sublayers",
    "summed_update_optimizer",
    "symbolic_build",
    "unscale_loss_for_distribution",
]


# --- compiled models ----------------------------------------------------


def array_batches(x, y=None, *, sample_weight=None, batch_size=None, shuffle=False, class_weight=None):
    """Keras' own `ArrayDataAdapter`: how fit batches, shuffles and weights
    array inputs. Its `get_tf_dataset()`, `num_batches`, and the packed
    `(x, y, sample_weight)` it slices: `array_inputs(adapter)`."""
    return _array_data_adapter.ArrayDataAdapter(x, y, sample_weight=sample_weight, batch_size=batch_size,
                                                shuffle=shuffle, class_weight=class_weight)


def array_inputs(adapter) -> tuple:
    """An `array_batches` adapter's packed inputs, as the values it gathers
    its batches from (dtypes converted for TensorFlow; class weights made
    sample weights)."""
    return keras.tree.lists_to_tuples(
        _array_slicing.convert_to_sliceable(adapter._inputs, target_backend="tensorflow"))


def array_count(adapter) -> int:
    """How many samples an `array_batches` adapter holds."""
    return adapter._num_samples


def compile_config(model: keras.Model) -> dict:
    """The arguments `model.compile` was called with (loss, metrics, ...);
    {} for an uncompiled model."""
    config = getattr(model, "_compile_config", None)
    return {} if config is None else config.config


def home_strategy(model: keras.Model):
    """The tf.distribute strategy whose scope built `model`, or None."""
    return getattr(model, "_distribute_strategy", None)


@contextlib.contextmanager
def serialized_as(cls: type, own: type):
    """For the duration, Keras saves instances of `cls` (a subclass made of
    `own`, of the same name and module) under `own`'s registered name
    (`keras.saving.register_keras_serializable`), so that what is saved
    loads as `own`. Keras reads that name by class object."""
    names = _object_registration.GLOBAL_CUSTOM_NAMES
    if cls is own or own not in names:
        yield
        return
    names[cls] = names[own]
    try:
        yield
    finally:
        names.pop(cls, None)


def set_home_strategy(model: keras.Model, strategy) -> None:
    """Makes `strategy` the one `model` trains under (None: the default),
    as if the model had been built in its scope."""
    model._distribute_strategy = strategy  # pylint: disable=protected-access


def recreate_variable(variable: keras.Variable) -> None:
    """Re-creates a Keras variable's TensorFlow variable with its current
    value, in the current scope: inside a strategy's, a distributed
    variable of that strategy; outside, a plain one. The Keras variable
    object, which layers and optimizers hold, stays the same."""
    variable._initialize(np.asarray(variable.value.numpy()))  # pylint: disable=protected-access


def refresh_variable_keys(optimizer) -> None:
    """Re-reads which slot belongs to which variable after its variables
    were re-created: a Keras optimizer on TensorFlow keys them by the
    underlying tf.Variable, and would refuse them as unknown."""
    if optimizer is not None and optimizer.built:
        optimizer._trainable_variables_indices = {  # pylint: disable=protected-access
            optimizer._var_key(v): i  # pylint: disable=protected-access
            for i, v in enumerate(optimizer._trainable_variables)}  # pylint: disable=protected-access


def is_initialized(variable) -> bool:
    """False for a Keras variable whose value is not created yet (deferred)."""
    return getattr(variable, "_value", True) is not None


def loss_tracker(model: keras.Model) -> keras.metrics.Metric:
    """The `Mean` behind History's "loss"."""
    return model._loss_tracker  # pylint: disable=protected-access


def compute_loss(model: keras.Model, **kwargs):
    """`model.compute_loss` as Keras' own steps call it (it also handles a
    user override's signature)."""
    return model._compute_loss(**kwargs)  # pylint: disable=protected-access


def call_has_training_arg(model: keras.Model) -> bool:
    return model._call_has_training_arg  # pylint: disable=protected-access


def symbolic_build(model: keras.Model, data_batch) -> None:
    """Builds metric, loss and optimizer state from one batch, as `fit` does
    before its first step under a strategy."""
    model._symbolic_build(data_batch=data_batch)  # pylint: disable=protected-access


# The method `fit` and `evaluate` call to build state before the first
# step; PipelineModel and data parallel's replica model override it.
SYMBOLIC_BUILD_HOOK = "_maybe_symbolic_build"


def first_batch(iterator=None, data_batch=None):
    """The batch the first-batch build hook receives: `data_batch`, or the
    first batch of Keras' epoch iterator, whose items are (_, _, batches)."""
    if iterator is not None:
        for _, _, batches in iterator:
            return next(batches)
    return data_batch


# --- functional graphs ----------------------------------------------------


def is_functional(model: keras.Model) -> bool:
    """True for a model with a layer graph (functional API)."""
    return hasattr(model, "operations") and getattr(model, "_inputs_struct", None) is not None


def standardize_inputs(model: keras.Model, inputs) -> list:
    """`inputs` (a tensor, list or dict) as the flat list of the functional
    model's inputs, in order."""
    return model._standardize_inputs(inputs)  # pylint: disable=protected-access


def input_batch(model: keras.Model, make) -> object:
    """`make(t)` for each of the model's inputs, in the structure its call
    takes: a dict for a model built on a dict of inputs (keras_hub's), the
    one tensor for one input, else a list."""
    flat = [make(t) for t in model.inputs]
    structure = getattr(model, "_inputs_struct", None)
    if isinstance(structure, dict):
        return keras.tree.pack_sequence_as(structure, flat)
    return flat[0] if len(flat) == 1 else flat


def output_structure(model: keras.Model):
    """The nesting of a functional model's outputs (a tensor, list or dict)."""
    return getattr(model, "_outputs_struct", model.outputs)


def inbound_node_count(op) -> int:
    """How many times a layer or op was called in building graphs."""
    return len(getattr(op, "_inbound_nodes", []))


def node_counts(layer) -> tuple[int, int]:
    """How many Keras nodes record the layer's calls (in, out)."""
    return len(layer._inbound_nodes), len(layer._outbound_nodes)  # pylint: disable=protected-access


def forget_calls_after(layer, counts: tuple[int, int]) -> None:
    """Drops the Keras nodes made since `node_counts(layer)` gave `counts`:
    the calls of a discarded graph (a pipeline's twin of the caller's model,
    built around the caller's own layer), which would keep it alive."""
    del layer._inbound_nodes[counts[0]:]  # pylint: disable=protected-access
    del layer._outbound_nodes[counts[1]:]  # pylint: disable=protected-access


def call_arguments(layer) -> tuple[tuple, dict]:
    """The (args, kwargs) of the layer's first call in its model, with
    KerasTensors for the tensors: Keras records each call as a node."""
    node = layer._inbound_nodes[0]
    return tuple(node.arguments.args), dict(node.arguments.kwargs)


def added_losses(model: keras.Model) -> list:
    """The losses the model's layers added in their last call (`add_loss`,
    activity regularizers), without the weight regularizers."""
    return [loss for layer in model._flatten_layers()  # pylint: disable=protected-access
            for loss in layer._get_own_losses()]  # pylint: disable=protected-access


def builds_by_running(layer) -> bool:
    """True for a layer without its own `build()` whose sublayers are not
    built yet: Keras builds it by running its `call` symbolically, and
    warns when `build()` is called on it instead."""
    return getattr(layer.build, "_is_default", False) and any(not sub.built for sub in layer._layers)  # pylint: disable=protected-access


def lambda_output_shape(layer: keras.layers.Lambda):
    """The `output_shape` a Lambda layer was made with (a shape, a function or None)."""
    return layer._output_shape  # pylint: disable=protected-access


def keras_logits(tensor):
    """The logits a Keras softmax/sigmoid attached to its output, or None.

    Keras' TensorFlow crossentropies compute from these instead of the
    probabilities (keras/src/backend/tensorflow/nn.py `_get_logits`).
    """
    return getattr(tensor, "_keras_logits", None)


# --- tf.distribute's Mirrored family -------------------------------------


def set_collective_key_base(strategy, base: int) -> None:
    """Sets the first collective key a MirroredStrategy about to be
    initialised will use (read by MirroredExtended.__init__)."""
    strategy._collective_key_base = base  # pylint: disable=protected-access


def communication_options(extended) -> tf.distribute.experimental.CommunicationOptions:
    """The options MirroredExtended merges into every reduction it launches."""
    return extended._communication_options  # pylint: disable=protected-access


def set_communication_options(extended, options) -> None:
    extended._communication_options = options  # pylint: disable=protected-access


class _Launcher:
    """One replica's launcher of the strategy's collective ops, for the
    collectives tf.distribute has no API for (an all-to-all)."""

    def __init__(self, launcher):
        self._launcher = launcher

    def all_to_all(self, rows: tf.Tensor) -> tf.Tensor:
        launcher = self._launcher
        key = launcher._next_instance_key()  # pylint: disable=protected-access
        token = launcher._get_ordering_token()  # pylint: disable=protected-access
        with tf.device(launcher._device):  # pylint: disable=protected-access
            return gen_collective_ops.collective_all_to_all_v2(
                rows, group_size=launcher._group_size, group_key=launcher._group_key,  # pylint: disable=protected-access
                instance_key=key, ordering_token=[] if token is None else [token],
                communication_hint="auto", timeout_seconds=0, is_stateless=False)


def collective_launcher(strategy, context) -> _Launcher:
    """The launcher of this replica's collectives (MirroredStrategy and
    MultiWorkerMirroredStrategy keep one per local device).

    Raises:
      ValueError: the strategy does not reduce with TensorFlow's collective
        ops (e.g. `all_reduce="reduce_to_one"`).
    """
    ops = strategy.extended._cross_device_ops  # pylint: disable=protected-access
    launchers = getattr(ops, "_launchers", None)
    if not launchers:
        raise ValueError(
            f"This needs TensorFlow's collective ops, but the strategy reduces with "
            f"{type(ops).__name__}. Use all_reduce='auto' or 'ring'.")
    local = tf.get_static_value(context.replica_id_in_sync_group) % len(launchers)
    return _Launcher(launchers[local])


def reduce_per_replica(value, strategy, reduction: str):
    """Keras' reduction of a step's per-replica outputs (its train function's)."""
    return _reduce_per_replica(value, strategy, reduction=reduction)


# --- graphs being traced --------------------------------------------------


def add_control_inputs(op, ops: list) -> None:
    """Makes `op`, already in the graph being traced, also wait for `ops`
    (`tf.control_dependencies` reaches only ops created inside it)."""
    op._add_control_inputs(ops)


# --- optimizers: updates from the whole batch's gradient -------------------


def summed_update_optimizer(optimizer: keras.optimizers.Optimizer,
                            communication=None) -> keras.optimizers.Optimizer:
    """A fresh optimizer like `optimizer` (same class and configuration, no
    state) that clips and accumulates the whole batch's gradient, summing
    the replicas' gradients with `communication` (called with the
    (gradient, variable) pairs in replica context; None: as Keras does).

    Keras clips each replica's gradient before `_backend_update_step` sums
    the replicas (keras/src/optimizers/base_optimizer.py
    `_backend_apply_gradients`), so under tf.distribute `clipnorm`,
    `clipvalue` and `global_clipnorm` act on a replica's share instead of
    the batch; and its `gradient_accumulation_steps` calls `merge_call`
    inside a `cond` in replica context, which tf.distribute refuses
    (keras-team/keras#20582). The returned optimizer's class is
    `_SummedUpdates` over the user's class: it clips after the sum and,
    across replicas, runs accumulation's `cond` in cross-replica context as
    Keras' own LossScaleOptimizer does. Its serialized form names the
    user's class, so a saved twin reloads as the user's optimizer.
    A LossScaleOptimizer keeps its wrapper; its inner optimizer is made so.
    """
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        config = optimizer.get_config()
        return keras.optimizers.LossScaleOptimizer(
            summed_update_optimizer(optimizer.inner_optimizer, communication),
            initial_scale=config["initial_scale"], dynamic_growth_steps=config["dynamic_growth_steps"],
            name=config["name"])
    twin = _summed_class(type(optimizer)).from_config(optimizer.get_config())
    twin.communication = communication
    return twin


def optimized_variables(optimizer: keras.optimizers.Optimizer) -> list:
    """The weights a built optimizer updates, in the order it was built with."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    return list(optimizer._trainable_variables)  # pylint: disable=protected-access


def clip_norm_over(optimizer: keras.optimizers.Optimizer, variables) -> None:
    """Makes a `summed_update_optimizer`'s `global_clipnorm` measure the
    norm of these variables' gradients only: an optimizer over several
    identical pipeline replicas (each holding the summed gradient) would
    otherwise count the norm once per replica."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    optimizer.norm_keys = {optimizer._var_key(v) for v in variables}  # pylint: disable=protected-access


@contextlib.contextmanager
def rows_added_across_replicas(optimizer: keras.optimizers.Optimizer, variables):
    """For the duration (a train step's `apply`), the gradients of
    `variables` are lookups made once per replica with ids that do not
    depend on the batch (`tfpar.core.lookups`): a `summed_update_optimizer` adds
    up the replicas' rows after the all-reduce (which puts them side by
    side), leaving one device's rows. Other optimizers (a model built in a
    strategy's scope, trained as native Keras trains it) are left alone."""
    inner = (optimizer.inner_optimizer if isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
             else optimizer)
    if not isinstance(inner, _SummedUpdates):
        yield
        return
    inner.shared_rows = frozenset(inner._var_key(v) for v in variables)  # pylint: disable=protected-access
    try:
        yield
    finally:
        inner.shared_rows = frozenset()


@contextlib.contextmanager
def presummed(optimizer: keras.optimizers.Optimizer, variables):
    """For the duration (a train step's `apply`), the gradients of
    `variables` are already the replicas' sum (a micro-batched step's
    reduce-scattered shares, ZeRO-2): a `summed_update_optimizer` uses them
    as they are."""
    inner = (optimizer.inner_optimizer if isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
             else optimizer)
    inner.presummed = frozenset(inner._var_key(v) for v in variables)  # pylint: disable=protected-access
    try:
        yield
    finally:
        inner.presummed = frozenset()


_SUMMED_CLASSES = {}


def _summed_class(base: type) -> type:
    if base not in _SUMMED_CLASSES:
        _SUMMED_CLASSES[base] = type(base.__name__, (_SummedUpdates, base), {
            "__module__": base.__module__, "__qualname__": base.__qualname__})
    return _SUMMED_CLASSES[base]


class _SummedUpdates:
    """Clipping and gradient accumulation on the summed gradient (mixed
    into the user's optimizer class by `summed_update_optimizer`)."""

    norm_keys = None  # global_clipnorm over all variables
    shared_rows = frozenset()  # see rows_added_across_replicas
    communication = None  # see summed_update_optimizer
    # ZeRO-1 (tfpar.replication.optimizer_shards): the weights' slots and
    # updates live in the replicas' shares; this optimizer keeps its own
    # variables (step count, learning rate, accumulators) and clips.
    shards = None
    # Keys of weights whose gradients reach `apply` already summed across
    # the replicas (see presummed).
    presummed = frozenset()

    def build(self, variables):
        if self.shards is None:
            return super().build(variables)
        return keras.optimizers.Optimizer.build(self, variables)  # no slots: the shards hold them

    def _clip_gradients(self, grads):
        # Deferred: `_backend_update_step` clips once the replicas are summed.
        return grads

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        self._update_summed(self._summed(grads, trainable_variables), trainable_variables, learning_rate)

    def _summed(self, grads, trainable_variables):
        """The replicas' sum of each gradient, as one device computes it.
        At shard="gradients", a dense gradient is summed only in the replica
        that owns its weight (reduce-scattered; None in the others)."""
        context = tf.distribute.get_replica_context()
        summed = list(grads)
        todo = [i for i, v in enumerate(trainable_variables) if self._var_key(v) not in self.presummed]
        if self.shards is not None and self.shards.scatters and context is not None:
            dense = [i for i in todo if not isinstance(grads[i], tf.IndexedSlices)]
            for i, g in zip(dense, self.shards.summed_shares([grads[i] for i in dense],
                                                             [trainable_variables[i] for i in dense])):
                summed[i] = g
            todo = [i for i in todo if i not in set(dense)]
        if not todo:
            return summed
        grads, trainable_variables = [grads[i] for i in todo], [trainable_variables[i] for i in todo]
        if self.communication is not None and context is not None:
            reduced = self.communication(list(zip(grads, trainable_variables)))
        else:
            variables = [v.value if isinstance(v, keras.Variable) else v for v in trainable_variables]
            reduced = [g for g, _ in self._all_reduce_sum_gradients(list(zip(grads, variables)))]
        replicas = context.num_replicas_in_sync if context is not None else 1
        for i, g, local, v in zip(todo, reduced, grads, trainable_variables):
            summed[i] = (_rows_added(g, local, replicas)
                         if replicas > 1 and isinstance(g, tf.IndexedSlices) and self._var_key(v) in self.shared_rows
                         else g)
        return summed

    def _update_summed(self, grads, trainable_variables, learning_rate):
        grads = self._clip_summed(grads, trainable_variables)
        if self.shards is not None:
            return self.shards.update(grads, trainable_variables, learning_rate, self.iterations)
        variables = [v.value if isinstance(v, keras.Variable) else v for v in trainable_variables]
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._distributed_tf_update_step, self._distribution_strategy,
            list(zip(grads, variables)), learning_rate)

    def _clip_summed(self, grads, trainable_variables):
        scattered = self.shards is not None and self.shards.scatters
        if not (self.global_clipnorm and self.global_clipnorm > 0) or (self.norm_keys is None and not scattered):
            return super()._clip_gradients(grads)
        # Keras' clip_by_global_norm, with the norm of one replica's
        # gradients, or (shards) of every replica's share.
        counted = [g for g, v in zip(grads, trainable_variables) if g is not None and (
            self.shards.owns(v) if scattered else self._var_key(v) in self.norm_keys)]
        squares = (keras.ops.sum(keras.ops.stack([keras.ops.sum(keras.ops.square(g)) for g in counted]))
                   if counted else keras.ops.zeros((), "float32"))  # a replica that owns no gradient
        context = tf.distribute.get_replica_context()
        if scattered and context is not None:
            squares = context.all_reduce(tf.distribute.ReduceOp.SUM, squares)
        norm = keras.ops.sqrt(squares)
        clip = self.global_clipnorm
        scale = clip * keras.ops.minimum(1.0 / norm, 1.0 / clip) + (norm - norm)
        return [g * scale if g is not None else g for g in grads]

    def _backend_apply_gradients(self, grads, trainable_variables):
        context = tf.distribute.get_replica_context()
        if (not self.gradient_accumulation_steps or context is None
                or context.num_replicas_in_sync == 1):
            return super()._backend_apply_gradients(grads, trainable_variables)
        # Summed once, outside control flow; the update-or-accumulate cond
        # runs in cross-replica context, each branch back in the replicas.
        grads = self._summed(grads, trainable_variables)
        context.merge_call(self._accumulate_or_update, args=(grads, trainable_variables))
        if self.use_ema:
            self._update_model_variables_moving_average(self._trainable_variables)
            if self.ema_overwrite_frequency:
                keras.ops.cond(
                    (self.iterations + 1) % self.ema_overwrite_frequency == 0,
                    lambda: self._overwrite_model_variables_with_average_value(self._trainable_variables),
                    lambda: None)

    def _accumulate_or_update(self, distribution, grads, trainable_variables):
        steps = self.gradient_accumulation_steps

        def update(grads, trainable_variables):
            accumulated = self._accumulators(trainable_variables)
            grads = [(g + a) / steps for g, a in zip(grads, accumulated)]
            self._apply_weight_decay(trainable_variables)
            self._update_summed(grads, trainable_variables, self.learning_rate)
            tf.__internal__.distribute.interim.maybe_merge_call(
                lambda strategy: [strategy.extended.update(a.value, lambda a: a.assign(tf.zeros_like(a)),
                                                           group=False) for a in accumulated],
                self._distribution_strategy)

        def accumulate(grads, trainable_variables):
            self._backend_increment_gradient_accumulators(grads, self._accumulators(trainable_variables))

        keras.ops.cond(
            (self._iterations + 1) % steps == 0,
            lambda: distribution.extended.call_for_each_replica(update, args=(grads, trainable_variables)),
            lambda: distribution.extended.call_for_each_replica(accumulate, args=(grads, trainable_variables)))

    def _accumulators(self, trainable_variables):
        return [self._accumulated_gradients[self._get_variable_index(v)] for v in trainable_variables]


def graph_nodes(model: keras.Model) -> list:
    """The calls (Keras nodes) of a functional model's own graph, in the
    order the model runs them (deepest first). A layer called twice in it
    (shared) has a node for each call; of a layer also called in another
    graph (inside a nested model), only this graph's calls are listed.
    Each node has `operation`, `input_tensors` and `outputs`."""
    by_depth = model._nodes_by_depth  # pylint: disable=protected-access
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]


def sublayers(layer: keras.layers.Layer) -> list:
    """`layer` and every layer inside it, depth first (Keras' own walk)."""
    return list(layer._flatten_layers(include_self=True, recursive=True))  # pylint: disable=protected-access


def _rows_added(summed: tf.IndexedSlices, local: tf.IndexedSlices, replicas: int) -> tf.IndexedSlices:
    """The all-reduce's `replicas` blocks of the same ids, added up."""
    rows = tf.shape(local.indices)[0]
    values = tf.reduce_sum(tf.reshape(summed.values, tf.concat([[replicas, rows], tf.shape(summed.values)[1:]], 0)),
                           axis=0)
    return tf.IndexedSlices(values, summed.indices[:rows], summed.dense_shape)
