"""What each layer of a model costs, for balancing it into stages.

Three sources, as `balance=` names them: "params" (trainable and
non-trainable parameter count), "flops" (an estimate of forward FLOPs per
sample from the layer's shapes) and "time" (the layer's forward time,
measured on a random batch on this machine).
"""

from __future__ import annotations

import math

import keras
import numpy as np

from tfpar.core import timing

KINDS = ("params", "flops", "time")


def layer_costs(ops, kind: str, *, batch_size: int = 32) -> list[float]:
    """The cost of each operation in `ops` (a model's layers, in order).

    Raises:
      ValueError: an unknown cost kind (the valid ones are listed).
    """
    if kind == "params":
        return [float(params(op)) for op in ops]
    if kind == "flops":
        return [float(flops(op)) for op in ops]
    if kind == "time":
        return [measured_seconds(op, batch_size) for op in ops]
    raise ValueError(f"balance must be one of {list(KINDS)} or a list of layer counts. Received: balance={kind!r}.")


def params(op) -> int:
    """Number of weights (trainable and not) of a layer; 0 for plain ops."""
    return int(sum(size(w) for w in getattr(op, "weights", [])))


def size(weight) -> int:
    """Number of entries of one weight."""
    return int(np.prod(weight.shape))


def flops(op, outputs=None) -> int:
    """Estimated forward FLOPs per sample.

    A weight of rank >= 2 is a kernel applied at every output position (a
    dense layer per timestep, a convolution per pixel): 2 FLOPs per kernel
    entry per position, the position count being the output size over its
    last (channel) dimension. Attention adds its score and mix products;
    embeddings and weightless ops cost one FLOP per output element. A nested
    model is the sum of its layers.

    Args:
      outputs: the outputs of the call to cost, for a layer called more
        than once (shared); None: its first call's. An embedding called on
        floating inputs (a tied output projection) is a matrix product.
    """
    if isinstance(op, keras.Model) and hasattr(op, "operations"):
        return sum(flops(inner) for inner in op.operations)
    outputs = [t for t in keras.tree.flatten(_output(op) if outputs is None else outputs)
               if t is not None]
    elements = sum(_per_sample(t.shape) for t in outputs)
    if isinstance(op, keras.layers.Embedding) and not _projects(outputs, op):
        return elements
    kernel = sum(int(np.prod(w.shape)) for w in getattr(op, "trainable_weights", []) if len(w.shape) >= 2)
    channels = outputs[0].shape[-1] if outputs and len(outputs[0].shape) > 1 else 1
    positions = elements // max(channels or 1, 1) if outputs else 1
    total = 2 * kernel * max(positions, 1) + elements
    if isinstance(op, keras.layers.MultiHeadAttention):
        total += _attention_products(op)
    return int(total)


def measured_seconds(op, batch_size: int, repeats: int = 5) -> float:
    """Median forward time of `op` on a random batch (inference mode)."""
    inputs = [timing.random_batch(t, batch_size) for t in keras.tree.flatten(op.input)]
    call_args = inputs[0] if len(inputs) == 1 else inputs
    return timing.median_seconds(lambda: op(call_args), repeats)


def _projects(outputs, op) -> bool:
    """Whether an embedding's call projected onto its vocabulary (its
    output's last dimension is the table's row count, not its width)."""
    width = getattr(op, "output_dim", None)
    return bool(outputs) and outputs[0].shape[-1] not in (None, width)


def _output(op):
    try:
        return op.output
    except (AttributeError, ValueError):
        return []


def _per_sample(shape) -> int:
    return int(math.prod(d or 1 for d in shape[1:]))


def _attention_products(op) -> int:
    query = keras.tree.flatten(op.input)[0].shape
    length = query[1] if len(query) > 2 else 1
    heads, width = op.num_heads, op.key_dim
    return 4 * length * length * heads * width
