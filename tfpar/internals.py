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
import tensorflow as tf
from keras.src.backend.tensorflow.trainer import reduce_per_replica as _reduce_per_replica
from keras.src.losses.loss import unscale_loss_for_distribution
from keras.src.trainers.data_adapters import array_data_adapter as _array_data_adapter
from keras.src.trainers.data_adapters import array_slicing as _array_slicing
from tensorflow.python.distribute import values as tf_values

CHECKED_ON = {"tensorflow": "2.21.0", "keras": "3.15.1"}

__all__ = [
    "CHECKED_ON",
    "add_control_inputs",
    "added_losses",
    "builds_by_running",
    "call_has_training_arg",
    "communication_options",
    "compile_config",
    "compute_loss",
    "cross_device_ops",
    "home_strategy",
    "inbound_node_count",
    "is_functional",
    "keras_logits",
    "loss_tracker",
    "mirrored",
    "output_structure",
    "override_symbolic_build",
    "per_replica",
    "set_collective_key_base",
    "set_communication_options",
    "set_cross_device_ops",
    "standardize_inputs",
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
# step; PipelineModel overrides it, `override_symbolic_build` replaces it.
SYMBOLIC_BUILD_HOOK = "_maybe_symbolic_build"


def first_batch(iterator=None, data_batch=None):
    """The batch the first-batch build hook receives: `data_batch`, or the
    first batch of Keras' epoch iterator, whose items are (_, _, batches)."""
    if iterator is not None:
        for _, _, batches in iterator:
            return next(batches)
    return data_batch


@contextlib.contextmanager
def override_symbolic_build(model: keras.Model, build):
    """Makes `fit`/`evaluate` call `build(iterator=..., data_batch=...)`
    instead of Keras' own first-batch build, for the duration."""
    setattr(model, SYMBOLIC_BUILD_HOOK, build)
    try:
        yield
    finally:
        delattr(model, SYMBOLIC_BUILD_HOOK)


# --- functional graphs ----------------------------------------------------


def is_functional(model: keras.Model) -> bool:
    """True for a model with a layer graph (functional API)."""
    return hasattr(model, "operations") and getattr(model, "_inputs_struct", None) is not None


def standardize_inputs(model: keras.Model, inputs) -> list:
    """`inputs` (a tensor, list or dict) as the flat list of the functional
    model's inputs, in order."""
    return model._standardize_inputs(inputs)  # pylint: disable=protected-access


def output_structure(model: keras.Model):
    """The nesting of a functional model's outputs (a tensor, list or dict)."""
    return getattr(model, "_outputs_struct", model.outputs)


def inbound_node_count(op) -> int:
    """How many times a layer or op was called in building graphs."""
    return len(getattr(op, "_inbound_nodes", []))


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


def cross_device_ops(extended) -> tf.distribute.CrossDeviceOps:
    """The implementation every reduction of a Mirrored-family strategy goes through."""
    return extended._cross_device_ops  # pylint: disable=protected-access


def set_cross_device_ops(extended, ops: tf.distribute.CrossDeviceOps) -> None:
    extended._cross_device_ops = ops  # pylint: disable=protected-access


def between_graph_workers(ops: tf.distribute.CrossDeviceOps):
    """How many processes a CrossDeviceOps reduces across (1 on one host).
    A wrapper must report its inner implementation's: with 1, TensorFlow's
    `batch_reduce` skips the exchange when a process has one replica."""
    return ops._num_between_graph_workers  # pylint: disable=protected-access


def canonicalize_devices(ops: tf.distribute.CrossDeviceOps) -> bool:
    return ops._canonicalize_devices  # pylint: disable=protected-access


def gather(ops: tf.distribute.CrossDeviceOps, value, destinations, axis, options):
    """`ops`' all-gather, which strategies call on it directly."""
    return ops._gather(value, destinations=destinations, axis=axis, options=options)  # pylint: disable=protected-access


def reduce_per_replica(value, strategy, reduction: str):
    """Keras' reduction of a step's per-replica outputs (its train function's)."""
    return _reduce_per_replica(value, strategy, reduction=reduction)


def per_replica(values: list):
    """A PerReplica value of one tensor per local replica, as reductions take."""
    return tf_values.PerReplica(values)


def mirrored(values: list):
    """A Mirrored value (the same tensor on every replica), as reductions return."""
    return tf_values.Mirrored(values)


# --- graphs being traced --------------------------------------------------


def add_control_inputs(op, ops: list) -> None:
    """Makes `op`, already in the graph being traced, also wait for `ops`
    (`tf.control_dependencies` reaches only ops created inside it)."""
    op._add_control_inputs(ops)
