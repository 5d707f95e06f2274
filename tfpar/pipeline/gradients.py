"""The step's gradients: summed over micro-batches, checked against one device.

Gradients are summed in a buffer per weight, on the weight's device.
Summing tensors instead lets Grappler's arithmetic optimizer fuse the chain
of adds into one AddN that waits for, and holds, every micro-batch's
gradient at once. IndexedSlices (embedding lookups) stay sparse, combined
as one device would have computed them (`microbatch.combine_lookup`: per
sample or made inside the model, as the step's graph says).

Example:
    >>> w = keras.Variable([1.0, 2.0], name="w")
    >>> sums = GradientSum([w])
    >>> sums.begin(batch=[])
    >>> sums.add(w, tf.constant([1.0, 1.0])); sums.add(w, tf.constant([0.5, 0.0]))
    >>> sums.result([w])[0].numpy().tolist()
    [1.5, 1.0]
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfpar.core import microbatch


class GradientSum:
    """A gradient buffer per trainable weight, reused by every step."""

    def __init__(self, variables):
        self.buffers = {}
        for variable in variables:
            with tf.device(variable.value.device):
                self.buffers[id(variable)] = tf.Variable(
                    tf.zeros(variable.shape, variable.dtype), trainable=False,
                    name=f"{variable.path.replace('/', '_')}_grad_sum",
                )
        self.begin([])  # no step yet

    def begin(self, batch) -> None:
        """Starts a step: the first gradient of each weight overwrites the
        last step's sum.

        Args:
          batch: the step's input tensors, which a lookup's ids depend on
            when they are per sample (`microbatch.combine_lookup`).
        """
        self.batch = list(batch)
        self.started = set()  # ids of weights whose buffer holds this step's sum
        self.sparse = {}  # id of weight -> its IndexedSlices gradients this step

    def add(self, variable, grad) -> None:
        """Adds one micro-batch's gradient of `variable` (None: nothing)."""
        if grad is None:
            return
        if isinstance(grad, tf.IndexedSlices):  # kept sparse (microbatch.summed_gradient)
            self.sparse.setdefault(id(variable), []).append(grad)
            return
        buffer = self.buffers[id(variable)]
        if id(variable) in self.started:
            buffer.assign_add(grad)
        else:
            buffer.assign(grad)
            self.started.add(id(variable))

    def result(self, variables) -> list:
        """The step's summed gradient of each weight (None: it got none)."""
        return [microbatch.summed_gradient(
            self.buffers[id(v)].read_value() if id(v) in self.started else None,
            self.sparse.get(id(v), []), self.batch) for v in variables]


def one_device_gradients(model: keras.Model, data_batch) -> list[bool]:
    """Which trainable weights of `model` get a gradient when it trains
    unsplit on one device: a trace of its train step's loss, never run."""
    data_batch = tuple(data_batch) if isinstance(data_batch, (list, tuple)) else (data_batch,)
    specs = keras.tree.map_structure(
        lambda t: None if t is None else tf.TensorSpec(t.shape, t.dtype), data_batch)
    found = []

    def step(data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                      training=True)
        grads = tape.gradient(loss, model.trainable_variables)
        found[:] = [g is not None for g in grads]
        return loss

    tf.function(step).get_concrete_function(specs)
    return found


def check_same_as_one_device(expected: list[bool] | None, variables, grads,
                             stage_of_layer: dict) -> None:
    """Raises unless exactly the weights that get a gradient on one device
    (`expected`) got one here: a lost gradient is an error, never zeros.

    Example:
        >>> w = keras.Variable(1.0, name="w")
        >>> check_same_as_one_device([True], [w], [None], {})
        Traceback (most recent call last):
        ...
        ValueError: The pipeline's gradients differ from one-device training: no gradient reached 'w', ...
    """
    if expected is None:
        return
    lost = [v.path for v, g, e in zip(variables, grads, expected) if e and g is None]
    extra = [v.path for v, g, e in zip(variables, grads, expected) if g is not None and not e]
    if lost or extra:
        raise ValueError(
            "The pipeline's gradients differ from one-device training: "
            + (f"no gradient reached {_with_stages(lost, stage_of_layer)}, which one device "
               "trains; " if lost else "")
            + (f"{_with_stages(extra, stage_of_layer)} got a gradient that one device does "
               "not give; " if extra else "")
            + "tfpar refuses to train rather than substitute zeros. Please report "
            "this model to tfpar; meanwhile use a data-parallel strategy."
        )


def _with_stages(paths: list, stage_of_layer: dict) -> str:
    def stage(path):
        for part in path.split("/"):
            if part in stage_of_layer:
                return f" (stage {stage_of_layer[part]})"
        return ""
    return ", ".join(f"{path!r}{stage(path)}" for path in paths)


def tensors_of(grads) -> list:
    """The tensors of a list of gradients (an IndexedSlices' values; None
    skipped), for a task to wait for."""
    return [g.values if isinstance(g, tf.IndexedSlices) else g for g in grads if g is not None]
