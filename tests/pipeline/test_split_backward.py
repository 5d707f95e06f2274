"""zb1's split backward: one tape call, the weight gradients held back until
released, the same numbers as a plain backward."""

import keras
import numpy as np
import tensorflow as tf

from tfpar.pipeline import split_backward


def _ancestors(tensor):
    seen, stack = set(), [tensor.op]
    while stack:
        op = stack.pop()
        if op in seen:
            continue
        seen.add(op)
        stack += [t.op for t in op.inputs] + list(op.control_inputs)
    return seen


def test_weight_gradients_wait_for_the_release_and_equal_a_plain_backward():
    keras.utils.set_random_seed(0)
    layers = [keras.layers.Dense(4, activation="relu"), keras.layers.Dense(3)]
    x = tf.constant(np.random.default_rng(0).normal(size=(5, 6)), tf.float32)
    hidden = layers[0](x)
    layers[1](hidden)  # built eagerly: a traced function must not create variables
    variables = layers[1].trainable_variables
    found = {}

    @tf.function
    def step(h):
        with tf.GradientTape() as tape:
            tape.watch(h)
            out = layers[1](h)
        upstream = tf.ones_like(out)
        inputs, weights, deferred = split_backward.gradients(tape, [out], [h], list(variables), [upstream])
        gate = tf.identity(h[0, 0], name="gate")  # stands for the task before W
        deferred.release_after([gate])
        found["weights"], found["inputs"], found["gate"] = weights, inputs, gate
        return inputs + weights

    split = step(hidden)
    # Held back: every weight gradient now depends on the gate; the input
    # gradient, which the stage upstream waits for, does not.
    assert all(found["gate"].op in _ancestors(w) for w in found["weights"])
    assert found["gate"].op not in _ancestors(found["inputs"][0])
    with tf.GradientTape() as tape:
        tape.watch(hidden)
        out = layers[1](hidden)
    plain = tape.gradient(out, [hidden] + list(variables), output_gradients=tf.ones_like(out))
    for a, b in zip(split, plain):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)


def test_eagerly_nothing_is_deferred():
    layer = keras.layers.Dense(2)
    x = tf.ones((3, 4))
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = layer(x)
    inputs, weights, deferred = split_backward.gradients(tape, [out], [x], list(layer.trainable_variables),
                                                         [tf.ones_like(out)])
    assert deferred is None and len(inputs) == 1 and len(weights) == 2
