"""Calling one stage's sub-model, and the tensors its loss may be taken through.

Example:
    >>> probabilities = keras.activations.softmax(tf.constant([[1.0, 2.0]]))
    >>> [kind for kind, _ in loss_sources(probabilities)]
    ['value', 'logits']
"""

from __future__ import annotations

import tensorflow as tf

from tfpar.core import internals

# The op types whose input Keras' losses read in place of their output when
# no `_keras_logits` is attached (keras/src/backend/tensorflow/nn.py
# `_get_logits`; checked on Keras 3.15).
_LOGIT_OPS = ("Softmax", "Sigmoid")


def run(stage, inputs: list, training: bool) -> list:
    """Calls a stage's sub-model; always returns a list of its outputs."""
    outputs = stage.model(inputs, training=training)
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def added_losses(stage):
    """The sum of the losses the stage's layers added in their last call
    (`add_loss`, activity regularizers), or None; weight regularizers are
    not among them (`PipelineModel.losses` counts those)."""
    return sum_losses(internals.added_losses(stage.model))


def sum_losses(losses: list):
    """The float32 sum of a list of losses, or None for none."""
    return tf.add_n([tf.cast(loss, "float32") for loss in losses]) if losses else None


def loss_sources(tensor) -> list[tuple[str, object]]:
    """The tensors a Keras loss may differentiate through for `tensor`.

    Itself ("value"), and the logits that Keras' crossentropies read instead
    of a softmax/sigmoid output: `tensor._keras_logits` ("logits") or, for a
    raw softmax/sigmoid op, that op's input ("op_input").
    """
    sources = [("value", tensor)]
    logits = internals.keras_logits(tensor)
    if logits is not None:
        sources.append(("logits", logits))
    elif getattr(getattr(tensor, "op", None), "type", None) in _LOGIT_OPS:
        sources.append(("op_input", tensor.op.inputs[0]))
    return sources


def differentiable(tensors) -> list:
    """The tensors a tape can differentiate (floating or complex)."""
    return [t for t in tensors if _is_differentiable(t)]


def differentiable_keyed(keys, tensors) -> tuple[list, list]:
    """`differentiable` keeping each tensor's key: (keys, tensors)."""
    pairs = [(k, t) for k, t in zip(keys, tensors) if _is_differentiable(t)]
    return [k for k, _ in pairs], [t for _, t in pairs]


def _is_differentiable(tensor) -> bool:
    return tensor.dtype.is_floating or tensor.dtype.is_complex
