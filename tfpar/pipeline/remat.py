"""Rematerialisation: a stage keeps only its inputs and recomputes its
forward inside the backward.

The forward runs without a tape; the backward reruns it under a tape once
the upstream gradient has arrived (earlier, the executor would hold the
activations remat exists to drop). The rerun reads the values the first
pass saw for every non-trainable variable (`keras.StatelessScope` with a
snapshot), so BatchNormalization statistics are not updated twice and
dropout's seeds, hence its masks, repeat exactly.

Example:
    >>> strategy = tfpar.strategies.GPipe(2, microbatches=4, rematerialize=True)
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfpar.pipeline import stage_calls


def snapshot(stage) -> list:
    """Current values of a stage's non-trainable state (moving statistics,
    random seeds), to replay its forward exactly during recomputation."""
    return [(v, tf.identity(v.value)) for v in stage.model.variables if not v.trainable]


def recompute(stage, inputs: list, state: list, upstream: list):
    """Reruns the stage's forward under a tape, after `upstream` exists.

    Returns:
      (inputs, tape, outputs, added losses or None), as a forward that kept
      its tape would have saved them.
    """
    with tf.control_dependencies([g for g in upstream if g is not None]):
        inputs = [tf.identity(t) for t in inputs]
    with keras.StatelessScope(state_mapping=state, collect_losses=True) as scope, \
            tf.GradientTape() as tape:
        tape.watch(stage_calls.differentiable(inputs))
        outputs = stage_calls.run(stage, inputs, True)
        added = stage_calls.sum_losses(scope.losses)
    return inputs, tape, outputs, added
