"""Whether an embedding lookup is per sample, read from the graph.

A lookup's gradient is an `IndexedSlices` with one row per id looked up.
One device's tape makes one row per sample for ids that come from the batch
(tokens, segment ids), and one row per position for ids made inside the
model (keras.io's `TokenAndPositionEmbedding` looks up `arange(maxlen)`
once for the whole batch). Where the batch is split (replicas, micro-batches),
the first kind's rows are each split's own and side by side make one
device's; the second kind is looked up once per split, and only the rows'
sum is one device's row. Which kind a gradient is, the graph says when it
is traced: whether its ids depend on the batch's tensors. Keras' optimizers
treat the rows one by one (a global norm counts each row's square, Adam
squares each row's entries), so the two kinds must be combined as one
device has them, not guessed from their values.

Example:
    >>> found = []
    >>> @tf.function
    ... def trace(tokens):
    ...     found.extend([depends_on_batch(tf.reshape(tokens, [-1]), [tokens]),  # token ids
    ...                   depends_on_batch(tf.range(3), [tokens])])  # positions
    ...     return tokens
    >>> _ = trace(tf.constant([[1, 2]]))
    >>> found
    [True, False]
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf


def depends_on_batch(tensor: tf.Tensor, batch: Sequence[tf.Tensor]) -> bool:
    """True when `tensor` (a lookup's ids, in a graph being traced) is
    computed from any of the `batch` tensors, through any op (a shape read
    counts: ids built from the batch's size are per sample).

    Args:
      tensor: a symbolic tensor of the graph being traced.
      batch: the step's input tensors, in the same graph.

    Raises:
      ValueError: `tensor` is an eager tensor, which has no graph to read.
    """
    if not tf.is_symbolic_tensor(tensor):
        raise ValueError(
            "Whether an embedding lookup's ids are per sample is read from the train step's "
            "graph, and a step that runs eagerly has none. Received: an eager tensor of ids "
            f"(shape {tensor.shape}), as under model.compile(run_eagerly=True). Compile the model "
            "with run_eagerly=False (Keras' default) to train it with micro-batches or replicas.")
    sources = {t.ref() for t in batch if isinstance(t, tf.Tensor)}
    stack, seen = [tensor], set()
    while stack:
        current = stack.pop()
        if current.ref() in sources:
            return True
        if current.ref() in seen:
            continue
        seen.add(current.ref())
        stack.extend(current.op.inputs)
    return False
