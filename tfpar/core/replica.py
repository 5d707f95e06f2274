"""A compiled Keras model recreated inside a scope, and its state copied back.

Keras creates a model's variables where the model is built: a model built
outside any strategy has ordinary variables that a strategy cannot train.
`recreate` builds a twin of the caller's model inside a scope (a strategy's,
or later a device's) with the same architecture, weights, optimizer
configuration and state, loss and metrics; `write_back` copies the trained
weights and optimizer state into the caller's model, so that what the user
holds afterwards is what `model.fit` would have left.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import tempfile
from collections.abc import Callable

import keras
import numpy as np

from tfpar.core import internals

_COMPILE_KEYS = (
    "loss",
    "loss_weights",
    "metrics",
    "weighted_metrics",
    "run_eagerly",
    "steps_per_execution",
    "jit_compile",
)


def check_compiled(model) -> None:
    """Raises a clear error unless `model` is a compiled Keras model."""
    if not isinstance(model, keras.Model):
        raise TypeError(
            "fit_distributed trains a keras.Model. "
            f"Received: model of type {type(model).__name__}."
        )
    if not getattr(model, "compiled", False) or getattr(model, "optimizer", None) is None:
        raise ValueError(
            f"Model {model.name!r} must be compiled before training: call "
            "model.compile(optimizer=..., loss=...) first, as for model.fit. "
            "Received: an uncompiled model."
        )


def recreate(
    model: keras.Model,
    scope: contextlib.AbstractContextManager,
    *,
    clone_function: Callable | None = None,
    call_function: Callable | None = None,
    wrap: Callable[[keras.Model], keras.Model] | None = None,
) -> keras.Model:
    """Returns a twin of `model` whose variables live in `scope`, compiled
    like `model` (an uncompiled model's twin, for prediction, is not).

    Args:
      model: the caller's model.
      scope: where the twin's variables are created (a strategy's scope).
      clone_function: builds each layer's twin (placement passes one that
        creates each layer's variables on its stage's device).
      call_function: calls each cloned layer of a functional model (placement
        calls it under its stage's device).
      wrap: turns the twin into the model that trains (a pipeline).

    Raises:
      ValueError: the model cannot be rebuilt from its config.
    """
    with scope:
        twin = clone(model, clone_function, call_function)
        trained = wrap(twin) if wrap else twin
        if not getattr(model, "compiled", False):
            return trained  # for prediction, which needs no compile
        trained.compile(optimizer=_fresh_optimizer(model.optimizer), **_compile_args(model))
        if _copies(trained) > 1:  # identical pipeline replicas: one's norm
            internals.clip_norm_over(trained.optimizer, trained.primary.trainable_variables)
        if model.optimizer.built:
            trained.optimizer.build(trained.trainable_variables)
            _copy_optimizer_state(model.optimizer, trained.optimizer, _copies(trained))
    return trained


def clone(model: keras.Model, clone_function: Callable | None = None,
          call_function: Callable | None = None) -> keras.Model:
    """A twin of `model` (uncompiled) with a copy of its weights; with
    `clone_function` / `call_function` as for `recreate`."""
    twin = _clone(model, clone_function, call_function)
    if model.built and not twin.built:
        twin.build_from_config(model.get_build_config())
    if twin.built:
        copy_values(model.weights, twin.weights, "weights")
    return twin


def write_back(trained: keras.Model, model: keras.Model) -> None:
    """Copies weights and optimizer state from `trained` into `model`.

    A model that trains replicas of the caller's (a pipeline trained data
    parallel) names the one to copy as its `primary`."""
    if not model.built:
        model.build_from_config(trained.get_build_config())
    copy_values(getattr(trained, "primary", trained).weights, model.weights, "weights")
    if trained.optimizer.built:
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        _copy_optimizer_state(trained.optimizer, model.optimizer, _copies(trained))


@contextlib.contextmanager
def written_to(model: keras.Model, trained: keras.Model):
    """For the duration, the caller's `model` holds `trained`'s weights and
    optimizer state (`write_back`), so that it can be saved in its own
    architecture mid-training; afterwards it holds what it held before.
    Variables the two share (layers a pipeline trains itself) keep their
    training values."""
    optimizer = model.optimizer
    if trained.optimizer.built and not optimizer.built:
        optimizer.build(model.trainable_variables)  # as unbuilt: its initial state
    shared = {id(v) for v in getattr(trained, "primary", trained).weights}
    before = [(v, np.array(v.numpy())) for v in [*model.weights, *optimizer.variables]
              if id(v) not in shared]
    write_back(trained, model)
    try:
        yield model
    finally:
        for variable, value in before:
            variable.assign(value)


def _copies(trained: keras.Model) -> int:
    """How many replicas of the caller's model `trained` trains."""
    return 1 + len(getattr(trained, "replicas", [])) if hasattr(trained, "primary") else 1


def _clone(model: keras.Model, clone_function: Callable | None,
           call_function: Callable | None) -> keras.Model:
    # clone_model also re-compiles a compiled model from its serialized
    # config, which fails for unregistered custom losses and would build an
    # optimizer we discard. The twin is compiled from the live objects
    # instead, so the flag is lowered for the duration of the clone.
    compiled = model.compiled
    model.compiled = False
    try:
        if clone_function is None:
            twin = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
        else:
            twin = keras.models.clone_model(model, clone_function=clone_function,
                                            call_function=call_function)
    except RecreateError:
        raise
    except Exception as error:  # Keras raises many types for a bad config.
        raise _not_recreated(model, error) from error
    finally:
        model.compiled = compiled
    _check_same_class(model, twin)
    return twin


def _check_same_class(model: keras.Model, twin: keras.Model) -> None:
    """Keras clones a Sequential subclass as a plain Sequential, which would
    train without the subclass's methods (its own train_step, say)."""
    cls = type(model)
    if not issubclass(cls, keras.Sequential) or cls is keras.Sequential or isinstance(twin, cls):
        return
    own = sorted(name for name, value in vars(cls).items() if callable(value) and not name.startswith("__"))
    if not own:
        return
    raise RecreateError(
        f"tfpar could not recreate model {model.name!r} under the strategy: keras.models.clone_model "
        f"rebuilds its class {type(model).__name__} as a plain {type(twin).__name__}, which would "
        f"train without the methods it defines ({own}). Train it data parallel (DataParallel, "
        "MultiWorker), which trains the model object itself, or subclass keras.Model with the "
        "functional API (MyModel(inputs, outputs)), which Keras clones as its own class.")


class RecreateError(ValueError):
    """A model or layer that tfpar cannot rebuild from its config."""


def _not_recreated(model: keras.Model, error: Exception) -> RecreateError:
    subclassed = not isinstance(model, keras.Sequential) and not hasattr(model, "operations")
    return RecreateError(
        f"tfpar could not recreate model {model.name!r} under the strategy: "
        f"{type(error).__name__}: {' '.join(str(error).split())[:2000]} "
        + ("A subclassed model needs get_config()/from_config(); alternatively "
           if subclassed else "Check that each custom layer's get_config() returns "
           "its constructor arguments; alternatively ")
        + "train it data parallel (DataParallel, MultiWorker), which trains the model "
        "object itself and never rebuilds it."
    )


def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
    """A fresh, unbuilt-or-built twin of `layer` with the same config.

    Keras' `from_config` passes `name`, `trainable` and `dtype` to the
    constructor; a custom layer whose `__init__` takes no `**kwargs` (as in
    several keras.io examples) rejects them, so the twin is then made from
    the arguments its constructor does take and given the three after.

    Raises:
      RecreateError: the layer cannot be rebuilt from its config.
    """
    if not isinstance(layer, keras.layers.Layer):  # a plain op: no state
        return layer.__class__.from_config(layer.get_config())
    if isinstance(layer, keras.layers.Lambda):
        # Its config holds the function's bytecode, which Keras refuses to
        # load (safe mode); the twin calls the same function object.
        return keras.layers.Lambda(layer.function, output_shape=internals.lambda_output_shape(layer),
                                   mask=layer.mask, arguments=layer.arguments, name=layer.name,
                                   trainable=layer.trainable, dtype=layer.dtype_policy)
    config = layer.get_config()
    try:
        twin = layer.__class__.from_config(config)
    except TypeError as error:
        twin = _from_own_arguments(layer, config, error)
    if layer.built and not twin.built and not internals.builds_by_running(twin):
        twin.build_from_config(layer.get_build_config())
    copy_assets(layer, twin)
    return twin


def copy_assets(layer: keras.layers.Layer, twin: keras.layers.Layer) -> None:
    """Gives `twin` the state of `layer` that neither its config nor its
    weights hold: an adapted vocabulary (TextVectorization, StringLookup,
    IntegerLookup, keras_hub tokenizers), through the layer's own
    `save_assets` / `load_assets`, as `keras.models.load_model` restores it.

    Without it the twin's lookup table is never initialised, and its first
    lookup fails (FailedPreconditionError at LookupTableFindV2). Like
    Keras' loading, each layer of the tree with assets (a
    TextVectorization and the StringLookup inside it) loads its own, after
    its own variables (a TF-IDF lookup's weights, which its assets use).

    Example:
        >>> lookup = keras.layers.StringLookup()
        >>> lookup.adapt(["b", "a", "b"])
        >>> twin = keras.layers.StringLookup.from_config(lookup.get_config())
        >>> copy_assets(lookup, twin)
        >>> [str(word) for word in twin.get_vocabulary()]
        ['[UNK]', 'b', 'a']

    Raises:
      RecreateError: the twin's layers with assets do not pair up with the
        layer's (a layer that makes them on its first call).
    """
    sources = [l for l in internals.sublayers(layer) if hasattr(l, "load_assets")]
    if not sources:
        return
    targets = [l for l in internals.sublayers(twin) if hasattr(l, "load_assets")]
    if [type(l) for l in sources] != [type(l) for l in targets]:
        raise RecreateError(
            f"tfpar could not give the twin of layer {layer.name!r} its assets (vocabulary): "
            "the layers with assets inside it and inside its twin rebuilt from get_config() "
            "must pair up. Received: "
            f"{[l.name for l in sources]} and {[l.name for l in targets]}. Make the layer "
            "create its sublayers in __init__, or train it data parallel (DataParallel, "
            "MultiWorker), which trains the model object itself.")
    for source, target in zip(sources, targets):
        store = {}
        source.save_own_variables(store)
        target.load_own_variables(store)
        with tempfile.TemporaryDirectory(prefix="tfpar-assets-") as directory:
            source.save_assets(directory)
            target.load_assets(directory)


_BASE_ARGUMENTS = ("name", "trainable", "dtype")


def _from_own_arguments(layer, config: dict, error: TypeError):
    parameters = inspect.signature(layer.__class__.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()) or any(
        key not in parameters and key not in _BASE_ARGUMENTS for key in config
    ):
        raise RecreateError(
            f"tfpar could not recreate layer {layer.name!r} of class "
            f"{type(layer).__name__} from its config: {' '.join(str(error).split())} Give the layer a "
            "get_config() that returns its constructor arguments (and accept "
            "**kwargs in __init__, passing them to super().__init__)."
        ) from error
    twin = layer.__class__(**{k: v for k, v in config.items() if k in parameters})
    twin.name = layer.name
    twin.trainable = layer.trainable
    twin.dtype_policy = layer.dtype_policy
    return twin


def _fresh_optimizer(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    # A new instance: the original's variables belong outside the scope. It
    # clips (and accumulates) the gradient summed over replicas, as one
    # device does, where Keras would clip each replica's share.
    return internals.summed_update_optimizer(optimizer)


def _compile_args(model: keras.Model) -> dict:
    config = internals.compile_config(model)
    args = {key: config[key] for key in _COMPILE_KEYS if key in config}
    for key in ("metrics", "weighted_metrics"):
        args[key] = _fresh_metrics(args.get(key))
    return args


def _fresh_metrics(metrics):
    """Metric objects hold state variables; the twin needs its own."""
    if isinstance(metrics, keras.metrics.Metric):
        return metrics.__class__.from_config(metrics.get_config())
    if isinstance(metrics, dict):
        return {k: _fresh_metrics(v) for k, v in metrics.items()}
    if isinstance(metrics, (list, tuple)):
        return type(metrics)(_fresh_metrics(m) for m in metrics)
    return metrics


def _copy_optimizer_state(source, target, copies: int = 1) -> None:
    """Copies the state of optimizer `source` into optimizer `target`.

    With `copies` > 1 the optimizer with more variables is one over `copies`
    identical replicas' weights (a pipeline trained data parallel), the other
    over one model's. Which of its variables is which weight's slot is
    read from the optimizer itself: `slot_keys` builds a probe of the
    same class and configuration over stand-ins named after their position
    and reads each slot's owner from its name. Each replica's slot gets the
    single one's value; the single one gets replica 0's.
    """
    sources, targets = list(source.variables), list(target.variables)
    if copies == 1 or len(sources) == len(targets):
        copy_values(sources, targets, "optimizer state")
        return
    many, one = (source, target) if len(sources) > len(targets) else (target, source)
    weights = len(internals.optimized_variables(one))
    many_keys = slot_keys(many, internals.optimized_variables(many), weights)
    one_keys = slot_keys(one, internals.optimized_variables(one), weights)
    position = {key: index for index, key in enumerate(one_keys)}
    if set(many_keys) != set(one_keys) or len(one_keys) != len(position):
        raise ValueError(f"Cannot copy optimizer state between {len(sources)} and {len(targets)} "
                         f"variables for {copies} replicas: their slots do not pair up.")
    pairs = [(variable, one.variables[position[key]]) for variable, key in zip(many.variables, many_keys)]
    if many is source:  # back to the caller: replica 0's (the first of each key)
        firsts = {}
        for variable, single in pairs:
            firsts.setdefault(id(single), (variable, single))
        copy_values(*zip(*firsts.values()), "optimizer state")
        return
    copy_values([single for _, single in pairs], [variable for variable, _ in pairs], "optimizer state")


def slot_keys(optimizer, variables, weights: int) -> list:
    """For each of `optimizer`'s variables, in order: (index of its weight
    within one model's `weights` weights, the slot's name), or its own name
    for the optimizer's own variables (iterations, learning rate)."""
    probe = optimizer.__class__.from_config(optimizer.get_config())
    stand_ins = [keras.Variable(np.zeros([1] * len(v.shape), v.dtype), name=f"tfpar_probe_{j}_")
                 for j, v in enumerate(variables)]
    probe.build(stand_ins)
    keys = []
    for variable in probe.variables:
        found = re.search(r"tfpar_probe_(\d+)_+(.*)$", variable.path)
        keys.append((int(found.group(1)) % weights, found.group(2)) if found
                    else variable.path.split("/", 1)[-1])
    if len(keys) != len(optimizer.variables):
        raise ValueError(f"Cannot read the slots of optimizer {optimizer.name!r}: a probe of its class "
                         f"holds {len(keys)} variables, it holds {len(optimizer.variables)}.")
    return keys


def copy_values(sources, targets, what: str) -> None:
    """Assigns each source variable's value to the target in its place.

    Raises:
      ValueError: the two lists of variables have different shapes.
    """
    sources, targets = list(sources), list(targets)
    shapes = [tuple(v.shape) for v in sources], [tuple(v.shape) for v in targets]
    if shapes[0] != shapes[1]:
        raise ValueError(
            f"Cannot copy {what}: source and target hold different variables. Source shapes: "
            f"{shapes[0]}; target shapes: {shapes[1]}."
        )
    for source, target in zip(sources, targets):
        target.assign(np.asarray(source.numpy()))
