"""How fast each device trains a given model: measured, not assumed.

Devices of one kind can still differ (a laptop GPU and a server GPU, a CPU
shared with other work), and a CPU next to a GPU differs by an order of
magnitude. `measure_device_speeds` times the model's own forward and
backward pass on a random batch on each device; the speeds balance
data-parallel shares (`DataParallel(device_speeds="measure")`) and feed
the planner (`tfpar.plan(..., device_speeds="measure")`).

Example:
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> speeds = measure_device_speeds(model, ["/cpu:0"], batch_size=16)
    >>> speeds
    [1.0]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import keras
import tensorflow as tf

from tfpar.core import timing

_LOG = logging.getLogger("tfpar")


def measure_device_speeds(model: keras.Model, devices: Sequence[str], batch_size: int, *,
                          repeats: int = 5) -> list[float]:
    """Each device's speed on `model`, relative to the fastest (which is 1).

    A copy of the model (`keras.models.clone_model`, fresh weights: the
    caller's model is not touched) runs one forward and backward pass on a
    random batch of `batch_size` rows on each device; the speed is the
    inverse of the median of `repeats` timed passes after a warm-up.

    Raises:
      ValueError: the model is not built (its input shape is unknown), or
        Keras cannot copy it (a subclassed model without `get_config`).
    """
    if not model.built or not getattr(model, "inputs", None):
        raise ValueError(
            f"measure_device_speeds needs a model with known inputs (a functional or Sequential "
            f"model with an Input). Received: model {model.name!r}, built={model.built}. Build it, "
            "or give device_speeds as numbers.")
    seconds = [_pass_seconds(model, device, batch_size, repeats) for device in devices]
    fastest = min(seconds)
    speeds = [fastest / s for s in seconds]
    _LOG.info("tfpar: measured device speeds %s on %s (%s s per pass)", [round(s, 3) for s in speeds],
              model.name, [round(s, 5) for s in seconds])
    return speeds


def _pass_seconds(model: keras.Model, device: str, batch_size: int, repeats: int) -> float:
    with tf.device(device):
        try:
            copy = keras.models.clone_model(model)
        except Exception as error:  # Keras raises several kinds for uncloneable models
            raise ValueError(
                f"measure_device_speeds copies the model to time it, and Keras cannot copy model "
                f"{model.name!r}: {error}. Give device_speeds as numbers instead.") from error
        inputs = [timing.random_batch(t, batch_size) for t in copy.inputs]
        inputs = inputs[0] if len(inputs) == 1 else inputs
        variables = copy.trainable_variables

        @tf.function
        def forward_backward(x):
            with tf.GradientTape() as tape:
                outputs = copy(x, training=True)
                total = tf.add_n([tf.reduce_sum(tf.cast(o, tf.float32)) for o in keras.tree.flatten(outputs)])
            return tape.gradient(total, variables) if variables else [total]

        return timing.median_seconds(lambda: forward_backward(inputs), repeats)
