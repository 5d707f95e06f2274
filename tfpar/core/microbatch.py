"""A batch cut into M micro-batches, and put back together (with their
sparse gradients, `combine_slices`): shared by the pipeline and data parallel.

Micro-batch m holds a near-equal slice of the batch and counts by its share
n_m / n, so that the micro-batches' summed gradients are the gradient of the
batch's mean loss: the same training as one device. A batch smaller than M
(an epoch's last) would leave micro-batches empty, which some kernels reject
(a convolution's backward): each real sample then gets a micro-batch of its
own, and the others repeat sample 0 with a share of 0.

Example:
    >>> parts = MicroBatches([tf.range(5.0)], tf.range(5), None, 2)
    >>> [p[0].numpy().tolist() for p in parts.x]
    [[0.0, 1.0, 2.0], [3.0, 4.0]]
    >>> [float(parts.share(m, tf.float64)) for m in range(2)]
    [0.6, 0.4]
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfpar.core import internals, lookups

# Keras' reductions that divide a batch's summed loss by its row count: the
# batch's loss is then its parts' losses weighted by their share of rows.
AVERAGED = ("sum_over_batch_size", "mean")


class MicroBatches:
    """One batch's inputs, targets and sample weights, split M ways.

    Args:
      flat_x: the model's inputs, one tensor per input, batch first.
      y: the targets (any structure, or None).
      sample_weight: the sample weights (any structure, or None).
      parts: M, the number of micro-batches.
      total: the size of the batch that shares are taken of, when this
        batch is one worker's part of a larger one (default: this batch).

    Attributes:
      batch: the batch's real size (a scalar tensor).
      x: per micro-batch, the list of its input tensors.
      y, sample_weight: per micro-batch, its structure of targets / weights.
      real: per micro-batch, how many of its samples are real (not padding).
    """

    def __init__(self, flat_x: list, y, sample_weight, parts: int, total=None):
        self.batch = tf.shape(flat_x[0])[0]
        self.total = self.batch if total is None else total
        extra = tf.maximum(parts - self.batch, 0) if parts > 1 else 0
        sizes = split_sizes(self.batch + extra, parts)
        starts = tf.cumsum(sizes, exclusive=True)
        self.real = tf.unstack(tf.clip_by_value(self.batch - starts, 0, sizes), num=parts)

        def grow(t):
            if parts == 1:
                return t
            # Copied only when padding is needed, not on every step.
            return tf.cond(extra > 0, lambda: tf.concat([t, tf.repeat(t[:1], extra, axis=0)], axis=0),
                           lambda: t)

        split = lambda t: tf.split(grow(t), sizes, num=parts, axis=0)  # noqa: E731
        xs = [split(t) for t in flat_x]
        self.x = [[pieces[i] for pieces in xs] for i in range(parts)]
        self.y = split_structure(y, split, parts)
        self.sample_weight = split_structure(sample_weight, split, parts)

    def share(self, micro: int, dtype):
        """Micro-batch `micro`'s share of the batch: its real samples / n."""
        return tf.cast(self.real[micro], dtype) / tf.cast(self.total, dtype)

    def merge(self, pieces: list):
        """The batch's tensor from its micro-batches' (padding dropped)."""
        return tf.concat(pieces, axis=0)[: self.batch]


def split_sizes(batch, parts: int):
    """Near-equal sizes: the first batch % parts micro-batches get one more.

    Example:
        >>> split_sizes(tf.constant(7), 3).numpy().tolist()
        [3, 2, 2]
    """
    base = batch // parts
    extra = batch - base * parts
    return base + tf.cast(tf.range(parts) < extra, batch.dtype)


def split_structure(structure, split, parts: int) -> list:
    """Splits every tensor of a structure; returns one structure per part."""
    if structure is None:
        return [None] * parts
    pieces = [split(t) for t in keras.tree.flatten(structure)]
    return [keras.tree.pack_sequence_as(structure, [p[i] for p in pieces]) for i in range(parts)]


def combine_slices(slices: list, *, per_sample: bool) -> tf.IndexedSlices:
    """The IndexedSlices gradient one device would compute from the
    micro-batches' (or replicas') gradients of one embedding table.

    A lookup per sample (token ids, segment ids: ids that come from the
    batch) gives one row per sample, so the batch's gradient is the
    micro-batches' rows side by side. A lookup made inside the model
    (positions, `ops.arange`) gives the same ids in every micro-batch, each
    row already summed over its samples, so the batch's gradient is those
    ids with the rows summed. The two differ for Adam and RMSprop, which
    square each row, and for a global norm. Which kind a gradient is, the
    graph says (`tfpar.core.lookups.depends_on_batch` of its ids, read when the
    step is traced), never the ids' values: segment ids that are all 0 in
    every micro-batch are still one row per sample.

    Args:
      slices: one IndexedSlices per micro-batch (or replica), in batch order.
      per_sample: whether the lookup's ids come from the batch.

    Example:
        >>> a = tf.IndexedSlices(tf.constant([[1.0]]), tf.constant([3]), tf.constant([5, 1]))
        >>> b = tf.IndexedSlices(tf.constant([[2.0]]), tf.constant([3]), tf.constant([5, 1]))
        >>> combine_slices([a, b], per_sample=False).values.numpy().tolist()  # positions: summed
        [[3.0]]
        >>> combine_slices([a, b], per_sample=True).indices.numpy().tolist()  # tokens: side by side
        [3, 3]
    """
    if len(slices) == 1:
        return slices[0]
    if per_sample:
        return tf.IndexedSlices(tf.concat([s.values for s in slices], axis=0),
                                tf.concat([s.indices for s in slices], axis=0), slices[0].dense_shape)
    # Ids made inside the model are the same in every micro-batch (the
    # same ops on the same shapes), so the first's stand for all.
    return tf.IndexedSlices(tf.add_n([s.values for s in slices]), slices[0].indices,
                            slices[0].dense_shape)


def combine_lookup(slices: list, batch) -> tf.IndexedSlices:
    """`combine_slices`, the kind of lookup read from the graph: whether the
    ids depend on the `batch` tensors (the step's inputs).

    Example:
        >>> @tf.function
        ... def step(tokens):
        ...     halves = tf.split(tokens, 2)
        ...     rows = [tf.IndexedSlices(tf.ones((2, 1)), ids, [9, 1]) for ids in halves]
        ...     return combine_lookup(rows, [tokens]).indices
        >>> step(tf.constant([4, 4, 4, 4])).numpy().tolist()  # equal ids, still one row each
        [4, 4, 4, 4]
    """
    return combine_slices(slices, per_sample=lookups.depends_on_batch(slices[0].indices, list(batch)))


def summed_gradient(dense, sparse: list, batch):
    """One weight's gradient summed over micro-batches, as one device
    computes it: `dense`, the sum of its dense parts (or None), and
    `sparse`, its IndexedSlices parts (lookups), kept sparse as one device
    hands them to the optimizer (Keras applies IndexedSlices row by row:
    Adam squares each entry, so densifying would change the update where
    ids repeat) and combined as `combine_lookup` says. A weight with both
    gets them summed into a dense one, as one tape does; None: no gradient.

    Example:
        >>> @tf.function  # the kind of lookup is read from the step's graph
        ... def step(ids):
        ...     rows = tf.IndexedSlices(tf.ones((1, 2)), ids, tf.constant([3, 2]))
        ...     return summed_gradient(tf.ones((3, 2)), [rows], batch=[])
        >>> step(tf.constant([1])).numpy().tolist()
        [[1.0, 1.0], [2.0, 2.0], [1.0, 1.0]]
    """
    if not sparse:
        return dense
    combined = combine_lookup(sparse, batch)
    return combined if dense is None else dense + tf.convert_to_tensor(combined)


def unaveraged_losses(model: keras.Model) -> list:
    """The model's compiled losses whose reduction is not an average over
    the batch (`AVERAGED`): weighting parts of a batch by their rows, as
    micro-batches and padded replica shares do, is exact only for those.

    Example:
        >>> model.compile(optimizer="sgd", loss=keras.losses.MeanSquaredError(reduction="sum"))
        >>> [loss.reduction for loss in unaveraged_losses(model)]
        ['sum']
    """
    losses = keras.tree.flatten(internals.compile_config(model).get("loss"))
    return [loss for loss in losses if isinstance(loss, keras.losses.Loss)
            and getattr(loss, "reduction", AVERAGED[0]) not in AVERAGED]
