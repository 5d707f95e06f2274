"""Measures what each layer of a model costs: the planner's input.

Each layer (in the pipeline's order, `placement.layers`) runs its forward,
and its forward and backward under a tape, as traced functions on random
inputs of its own shapes, at two batch sizes; a + b x rows is fitted to
each. Layer by layer, each call pays a dispatch the whole model does not,
so the layers' sums are rescaled to the whole model's forward and backward
measured the same way. The optimizer's update is timed on a copy of the
weights. Sizes come from the shapes: weights; per sample, each layer's
output (what crosses a stage boundary) and the tensors its traced forward
makes (what its backward may keep).

Example:
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    >>> model.compile(optimizer="adam", loss="mse")
    >>> profile = measure(model, batch_size=16, smallest_rows=2)
    >>> len(profile.layers), profile.optimizer_slots, profile.layers[0].weight_bytes   # 8 x 4 + 4, float32
    (2, 2, 144)
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from tfpar.core import internals, timing
from tfpar.pipeline import placement
from tfpar.planner.cost_model import LayerCost, ModelProfile


def measure(model: keras.Model, batch_size: int, *, smallest_rows: int = 1, device: str | None = None,
            repeats: int = 5) -> ModelProfile:
    """The model's `ModelProfile`, timed on `device` (default: the first
    local one) at `batch_size` rows and at `smallest_rows` (the smallest
    micro-batch a candidate uses).

    Raises:
      ValueError: the model has no functional graph (a subclassed model),
        which pipelines need too; or it is not built.
    """
    unbuilt = ValueError(f"tfpar.plan needs a built model (its input shapes). Received: model "
                         f"{model.name!r}, not built. Call model.build(input_shape) or fit it once.")
    if not model.built and isinstance(model, keras.Sequential):
        raise unbuilt
    try:  # first: a subclassed model cannot be planned, built or not
        layers = placement.layers(model)
    except ValueError as error:
        raise ValueError(f"tfpar.plan (and strategy='auto') measures and splits a model layer by layer. "
                         f"{error} Until then, choose a data-parallel strategy yourself, e.g. "
                         f"strategy='mirrored'.") from error
    if not model.built:
        raise unbuilt
    device = device or tf.config.list_logical_devices()[0].name
    rows = sorted({max(1, int(smallest_rows)), int(batch_size)})
    with tf.device(device):
        timed, kept = zip(*[_layer_seconds(layer, rows, repeats) for layer in layers]) if layers else ((), ())
        whole = _model_seconds(model, rows, repeats)
        update = _update_seconds(model, repeats)
    fits = [(_fit(rows, [f for f, _ in times]), _fit(rows, [b for _, b in times])) for times in timed]
    fits = _rescaled(fits, (_fit(rows, [f for f, _ in whole]), _fit(rows, [b for _, b in whole])))
    profiles = [
        LayerCost(layer.name, forward=forward, backward=backward,
                  weight_bytes=_bytes(layer.weights), trainable_bytes=_bytes(layer.trainable_weights),
                  activation_bytes=max(bytes_kept, _output_bytes(layer)), output_bytes=_output_bytes(layer))
        for layer, (forward, backward), bytes_kept in zip(layers, fits, kept)
    ]
    inputs = sum(_per_sample_bytes(t) for t in model.inputs)
    return ModelProfile(profiles, input_bytes=inputs, optimizer_slots=optimizer_slots(model),
                        step_overhead=update)


def optimizer_slots(model: keras.Model) -> int:
    """State tensors the compiled optimizer keeps per trainable weight,
    counted on a fresh copy built for one variable (Adam: 2; SGD with
    momentum: 1; plain SGD: 0)."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return 0
    copy = type(optimizer).from_config(optimizer.get_config())
    probe = keras.Variable(np.zeros((2, 2), "float32"))
    copy.build([probe])
    shaped = [v for v in copy.variables if tuple(v.shape) == (2, 2)]
    return len(shaped)


def _layer_seconds(layer, rows: list[int], repeats: int) -> tuple[list[tuple[float, float]], int]:
    """(forward, backward) seconds at each row count, and the bytes per
    sample of the tensors the layer's forward makes (`_forward_bytes`)."""
    args, kwargs = internals.call_arguments(layer)
    variables = layer.trainable_variables
    result, made = [], []
    for n in rows:
        inputs = keras.tree.map_structure(lambda t: _random(t, n), (args, kwargs))
        floats = [t for t in keras.tree.flatten(inputs) if tf.is_tensor(t) and t.dtype.is_floating]

        @tf.function
        def forward(inputs):
            # Training mode, whether or not the model's graph passed
            # `training` to this call itself (keras_hub's layers do).
            extra = {"training": True} if _takes_training(layer) else {}
            return keras.tree.flatten(layer(*inputs[0], **{**inputs[1], **extra}))

        @tf.function
        def forward_backward(inputs, floats):
            with tf.GradientTape() as tape:
                tape.watch(floats)
                outputs = forward.python_function(inputs)
                total = tf.add_n([tf.reduce_sum(tf.cast(o, tf.float32)) for o in outputs])
            return tape.gradient(total, variables + floats, unconnected_gradients="zero")

        f = timing.median_seconds(lambda: forward(inputs), repeats)
        fb = timing.median_seconds(lambda: forward_backward(inputs, floats), repeats)
        result.append((f, max(fb - f, 0.0)))
        made.append(_forward_bytes(forward.get_concrete_function(inputs).graph))
    per_sample = (made[-1] - made[0]) / (rows[-1] - rows[0]) if len(rows) > 1 else made[0] / rows[0]
    return result, int(max(per_sample, 0))


# Ops whose outputs alias an input's buffer, or hold no batch data.
_NO_NEW_BUFFER = frozenset({
    "Placeholder", "Const", "ReadVariableOp", "Identity", "IdentityN", "Reshape", "Squeeze",
    "ExpandDims", "StopGradient", "Shape", "ShapeN", "Size", "Rank", "NoOp", "VarHandleOp"})


def _forward_bytes(graph) -> int:
    """Bytes of every tensor a traced forward makes. An upper bound on what
    it keeps for the backward (a layer's internals, such as attention's
    scores, can outweigh its output many times); taken at two batch sizes,
    the difference is per sample and leaves out the weights."""
    total = 0
    for op in graph.get_operations():
        if op.type in _NO_NEW_BUFFER:
            continue
        for output in op.outputs:
            shape = output.shape
            if shape.rank is not None and shape.is_fully_defined() and output.dtype != tf.resource:
                total += math.prod(shape) * output.dtype.size
    return total


def _model_seconds(model, rows: list[int], repeats: int) -> list[tuple[float, float]]:
    variables = model.trainable_variables
    result = []
    for n in rows:
        # In the structure the model takes (a dict for keras_hub's models).
        inputs = internals.input_batch(model, lambda t: timing.random_batch(t, n))

        @tf.function
        def forward(x):
            return keras.tree.flatten(model(x, training=True))

        @tf.function
        def forward_backward(x):
            with tf.GradientTape() as tape:
                outputs = forward.python_function(x)
                total = tf.add_n([tf.reduce_sum(tf.cast(o, tf.float32)) for o in outputs])
            return tape.gradient(total, variables, unconnected_gradients="zero")

        f = timing.median_seconds(lambda: forward(inputs), repeats)
        fb = timing.median_seconds(lambda: forward_backward(inputs), repeats)
        result.append((f, max(fb - f, 0.0)))
    return result


def _update_seconds(model, repeats: int) -> float:
    """One optimizer update of every trainable weight, on copies."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not model.trainable_variables:
        return 0.0
    copy = type(optimizer).from_config(optimizer.get_config())
    variables = [keras.Variable(np.zeros(v.shape, v.dtype)) for v in model.trainable_variables]
    copy.build(variables)
    grads = [tf.ones(v.shape, v.dtype) * 1e-6 for v in variables]

    @tf.function
    def apply():
        copy.apply_gradients(zip(grads, variables))
        return [variables[0].value]

    return timing.median_seconds(apply, repeats)


def _fit(rows: list[int], seconds: list[float]) -> tuple[float, float]:
    """(a, b) with a + b x rows through the measured points (b >= 0)."""
    if len(rows) == 1:
        return 0.0, seconds[0] / rows[0]
    (n1, n2), (t1, t2) = rows, seconds
    slope = max((t2 - t1) / (n2 - n1), 0.0)
    return max(t1 - slope * n1, 0.0), slope


def _rescaled(fits, whole):
    """Scales the layers' intercepts and slopes so that their sums equal the
    whole model's (the layers keep their shares)."""
    scaled = []
    sums = [[sum(fit[part][i] for fit in fits) for i in (0, 1)] for part in (0, 1)]
    for fit in fits:
        scaled.append(tuple(
            tuple(fit[part][i] * (whole[part][i] / sums[part][i]) if sums[part][i] > 0 else 0.0
                  for i in (0, 1))
            for part in (0, 1)))
    return scaled


def _random(value, rows: int):
    if isinstance(value, keras.KerasTensor):
        return timing.random_batch(value, rows)
    return value


def _takes_training(layer) -> bool:
    import inspect

    try:
        return "training" in inspect.signature(layer.call).parameters
    except (TypeError, ValueError):
        return False


def _bytes(variables) -> int:
    return int(sum(math.prod(v.shape) * tf.as_dtype(v.dtype).size for v in variables))


def _per_sample_bytes(tensor) -> int:
    return int(math.prod(d or 1 for d in tensor.shape[1:]) * tf.as_dtype(tensor.dtype).size)


def _output_bytes(layer) -> int:
    try:
        outputs = keras.tree.flatten(layer.output)
    except (AttributeError, ValueError):
        return 0
    return sum(_per_sample_bytes(t) for t in outputs if t is not None)
