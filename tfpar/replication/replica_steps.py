"""The train and test steps each data-parallel replica runs.

Keras' own steps (TensorFlow trainer, Keras 3.15) with three additions:

- Marked shares (tfpar's strategies, `input_shares`): each element carries a mark per row,
  the loss weight of that row (0 for padding). The loss weighs each row by
  its mark, the loss tracker counts the real rows only, and metrics see the
  real rows only (padding sits at the end of each replica's share).
- Micro-batches (`microbatches=k`): the replica's share runs as k
  micro-batches, one after another, each micro-batch's forward waiting for
  the previous one's gradients, so that one micro-batch's activations are
  alive at a time. Each micro-batch's mean loss counts by its share of the
  replica's rows, so the summed gradient is the share's: the optimizer then
  all-reduces once per step, as without micro-batches.
- Sharded gradients (ZeRO-2, `optimizer_shards`) with micro-batches:
  each micro-batch's dense gradients are reduce-scattered as they are
  made, so the running sum a replica keeps is its own share's.
- Lookups (embeddings) whose ids do not depend on the batch: each
  replica's rows are added once, as one device has them (`lookups`).

The model runs them through `replica_model.replicated`.

Example:
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> steps = ReplicaSteps(model, microbatches=2, marked=True)
    >>> x, y, weights, marks = unpack((tf.ones((2, 4)), tf.ones((2, 2)), tf.ones(2)), marked=True)
    >>> weights is None, marks.shape
    (True, TensorShape([2]))
"""

from __future__ import annotations

import warnings

import keras
import tensorflow as tf

from tfpar.core import checks, internals, lookups, microbatch


class ReplicaSteps:
    """A replica's train and test steps for a model.

    Args:
      model: the compiled model, its variables in the strategy's scope.
      microbatches: k, the sequential micro-batches of each replica's share.
      marked: each element ends with the rows' marks (`input_shares`).
    """

    def __init__(self, model: keras.Model, microbatches: int = 1, *, marked: bool = True):
        self.model = model
        self.microbatches = microbatches
        self.marked = marked

    def train_step(self, data):
        model = self.model
        x, y, weights, marks = unpack(data, self.marked)
        weights = _row_weights(y, weights, marks)
        variables = model.trainable_weights
        k = self.microbatches
        if k == 1:
            parts, shares = [(x, y, weights)], [None]
        else:
            micro = microbatch.MicroBatches(keras.tree.flatten(x), (y, weights), None, k)
            parts = [(keras.tree.pack_sequence_as(x, micro.x[m]), *micro.y[m]) for m in range(k)]
            shares = [micro.share(m, tf.float32) for m in range(k)]
        loss, predictions, previous, first_grads = None, [], [], None
        dense, sparse = [None] * len(variables), [[] for _ in variables]
        shards = _scattering_shards(model.optimizer) if k > 1 else None
        elsewhere = set()  # weights whose summed gradient another replica keeps
        for (part_x, part_y, part_weights), share in zip(parts, shares):
            # One micro-batch's activations at a time: its forward waits for
            # the previous micro-batch's gradients.
            with tf.control_dependencies(previous), tf.GradientTape() as tape:
                y_pred = _call(model, part_x, training=True)
                part_loss = internals.compute_loss(model, x=part_x, y=part_y, y_pred=y_pred,
                                                   sample_weight=part_weights, training=True)
                if share is not None:
                    # A micro-batch's mean counts by its share of the rows.
                    part_loss = part_loss * tf.cast(share, part_loss.dtype)
                scaled = model.optimizer.scale_loss(part_loss)
            part_grads = tape.gradient(scaled, variables) if variables else []
            # Whose rows are per sample, read from one micro-batch's own
            # gradients (their combination is a cond over all of them).
            first_grads = first_grads or part_grads
            if shards is not None:
                part_grads = _scattered(shards, part_grads, variables, elsewhere)
            for i, grad in enumerate(part_grads):
                if isinstance(grad, tf.IndexedSlices):
                    sparse[i].append(grad)
                elif grad is not None:
                    dense[i] = grad if dense[i] is None else dense[i] + grad
            # The next forward waits for the running sums, so that this
            # micro-batch's gradients are added (and freed) first.
            previous = [g for g in dense if g is not None] + [g.values for rows in sparse for g in rows]
            loss = part_loss if loss is None else loss + part_loss
            predictions.append(y_pred)
        batch = [t for t in keras.tree.flatten(data) if t is not None]
        grads = [microbatch.summed_gradient(d, rows, batch) for d, rows in zip(dense, sparse)]
        presummed = []
        if shards is not None:
            presummed = [v for g, v in zip(grads, variables) if g is not None and not isinstance(g, tf.IndexedSlices)]
            presummed += [variables[i] for i in elsewhere]
            grads = [shards.elsewhere(v) if i in elsewhere else g for i, (g, v) in enumerate(zip(grads, variables))]
        _track_loss(model, loss, marks, x)
        if variables:
            # Last layers first: their gradients exist first in the backward,
            # and collectives launch in this order (packed by bytes_per_pack),
            # so the first packs can travel while earlier layers' gradients
            # are still being computed. Each weight's update is its own, so
            # the order changes nothing else.
            with internals.rows_added_across_replicas(model.optimizer, _shared_lookups(first_grads, variables, data)), \
                    internals.presummed(model.optimizer, presummed):
                model.optimizer.apply_gradients(zip(grads[::-1], variables[::-1]))
        else:
            warnings.warn("The model does not have any trainable weights.")
        if k == 1:
            y_pred = predictions[0]
        else:
            flat = [micro.merge(list(p)) for p in zip(*[keras.tree.flatten(p) for p in predictions])]
            y_pred = keras.tree.pack_sequence_as(predictions[0], flat)
        return self._metrics(data, y_pred)

    def test_step(self, data):
        model = self.model
        x, y, weights, marks = unpack(data, self.marked)
        y_pred = _call(model, x, training=False)
        loss = internals.compute_loss(model, x=x, y=y, y_pred=y_pred,
                                      sample_weight=_row_weights(y, weights, marks), training=False)
        _track_loss(model, loss, marks, x)
        return self._metrics(data, y_pred)

    def _metrics(self, data, y_pred):
        x, y, weights, marks = unpack(data, self.marked)
        if marks is None:
            return self.model.compute_metrics(x, y, y_pred, sample_weight=weights)
        real = tf.math.count_nonzero(marks, dtype=tf.int32)
        cut = lambda tree: keras.tree.map_structure(lambda t: t[:real], tree)  # noqa: E731
        return self.model.compute_metrics(
            cut(x), cut(y), cut(y_pred), sample_weight=None if weights is None else cut(weights))


def check_own_train_step(model: keras.Model, microbatches: int) -> None:
    """Refuses, before training, micro-batches for a model whose own
    `train_step` tfpar cannot cut.

    Raises:
      ValueError: `microbatches` > 1 and the model overrides `train_step`.
    """
    if microbatches > 1 and checks.overridden(model, ["train_step"]):
        raise ValueError(
            f"microbatches={microbatches} runs Keras' train step on {microbatches} micro-batches "
            f"per replica, but model {model.name!r} overrides ['train_step'], which tfpar "
            "runs as it is and cannot cut. Use microbatches=1, or accumulate gradients "
            "inside your train_step."
        )


def unpack(data, marked: bool):
    """(x, y, sample_weight or None, marks or None) of an element."""
    if not marked:
        x, y, weights = keras.utils.unpack_x_y_sample_weight(data)
        return x, y, weights, None
    return (*data[:2], data[2] if len(data) == 4 else None, data[-1])


def _call(model, x, *, training: bool):
    return model(x, training=training) if internals.call_has_training_arg(model) else model(x)


def _row_weights(y, weights, marks):
    """The sample weights with each row's mark applied."""
    if marks is None:
        return weights
    if weights is None:
        # One weight per sample, shaped (n, 1, ...) like each target so
        # that Keras broadcasts it over whatever axes the loss keeps.
        return keras.tree.map_structure(
            lambda t: tf.reshape(marks, [-1] + [1] * (max(t.shape.rank, 1) - 1)), y)
    return keras.tree.map_structure(
        lambda w: w * tf.reshape(tf.cast(marks, w.dtype), [-1] + [1] * (w.shape.rank - 1)), weights)


def _track_loss(model, loss, marks, x=None) -> None:
    if marks is None:  # as Keras' own step counts
        internals.loss_tracker(model).update_state(
            internals.unscale_loss_for_distribution(loss), sample_weight=tf.shape(keras.tree.flatten(x)[0])[0])
        return
    # The tracker averages over real samples: this replica's loss is a
    # mean over its whole share scaled by `marks` (and by 1/replicas).
    share = tf.cast(tf.shape(marks)[0], loss.dtype)
    real = tf.cast(tf.math.count_nonzero(marks), loss.dtype)
    scale = tf.cast(tf.reduce_max(marks), loss.dtype)
    per_real = tf.math.divide_no_nan(internals.unscale_loss_for_distribution(loss) * share, scale * real)
    internals.loss_tracker(model).update_state(per_real, sample_weight=real)


def _scattering_shards(optimizer):
    """The ZeRO-2 shards of tfpar's optimizer twin, or None."""
    inner = (optimizer.inner_optimizer if isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
             else optimizer)
    shards = getattr(inner, "shards", None)
    return shards if shards is not None and shards.scatters else None


def _scattered(shards, grads, variables, elsewhere: set) -> list:
    """One micro-batch's gradients with the dense ones reduce-scattered:
    this replica's share summed over the replicas, None for the others'
    (their indices added to `elsewhere`). Sparse ones stay as they are."""
    grads = list(grads)
    dense = [i for i, g in enumerate(grads) if g is not None and not isinstance(g, tf.IndexedSlices)]
    for i, summed in zip(dense, shards.summed_shares([grads[i] for i in dense], [variables[i] for i in dense])):
        grads[i] = summed
        if summed is None:
            elsewhere.add(i)
    return grads


def _shared_lookups(grads, variables, data) -> list:
    """The variables whose sparse gradient comes from ids the batch does not
    give (positions): each replica has the same rows, which one device has
    once (`tfpar.core.lookups`)."""
    batch = [t for t in keras.tree.flatten(data) if t is not None]
    return [v for g, v in zip(grads, variables)
            if isinstance(g, tf.IndexedSlices) and not lookups.depends_on_batch(g.indices, batch)]
