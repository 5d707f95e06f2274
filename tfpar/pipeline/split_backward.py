"""A stage's backward split in two: B, the gradients of its inputs, which the
stage upstream waits for, and W, the gradients of its weights, which only
the optimizer waits for ("zb1", zero-bubble pipelining, Qi et al. 2024).

One `tape.gradient` call computes both, so no op runs twice: the chain of
activation gradients is shared, and only the ops that nothing but the weight
gradients need (a Dense layer's x^T @ dy and its bias sum, say) form W.
While a step is traced those ops are held back: the first of them get a
control input from whatever the stage ran just before its W task
(`Deferred.release_after`), so the executor fills the stage's idle slots
with them instead of running them as soon as their inputs exist.

Example:
    >>> strategy = tfpar.strategies.GPipe(2, microbatches=8, schedule="zb1")
"""

from __future__ import annotations

import tensorflow as tf

from tfpar.core import internals


class Deferred:
    """The weight-gradient ops of one backward, held back until released."""

    def __init__(self, first_ops: list):
        self.first_ops = first_ops

    def release_after(self, tensors: list) -> None:
        """Lets the W ops start only once `tensors` exist."""
        after = [t.op for t in tensors]
        if after:
            for op in self.first_ops:
                internals.add_control_inputs(op, after)


def gradients(tape, targets: list, sources: list, variables: list, upstream: list):
    """d(targets)/d(sources) and d(targets)/d(variables), the latter deferred.

    Returns:
      (input gradients, weight gradients, `Deferred` or None when running
      eagerly, where ops run as they are called and nothing can wait).
    """
    if tf.executing_eagerly():
        grads = tape.gradient(targets, sources + variables, output_gradients=upstream)
        return grads[: len(sources)], grads[len(sources):], None
    graph = tf.compat.v1.get_default_graph()
    before = len(graph.get_operations())
    grads = tape.gradient(targets, sources + variables, output_gradients=upstream)
    new = set(graph.get_operations()[before:])
    input_grads, weight_grads = grads[: len(sources)], grads[len(sources):]
    needed_by_b = _ancestors(_ops(input_grads), new)
    w_only = _ancestors(_ops(weight_grads), new - needed_by_b)
    # The W ops that no other W op feeds: holding these back holds all.
    first = [op for op in w_only if not any(t.op in w_only for t in op.inputs)
             and not any(c in w_only for c in op.control_inputs)]
    return input_grads, weight_grads, Deferred(first)


def _ops(grads) -> list:
    ops = []
    for grad in grads:
        if isinstance(grad, tf.IndexedSlices):
            ops += [grad.values.op, grad.indices.op]
        elif grad is not None:
            ops.append(grad.op)
    return ops


def _ancestors(ops: list, within: set) -> set:
    """The ops of `within` that `ops` (included) depend on through `within`."""
    seen, stack = set(), [op for op in ops if op in within]
    while stack:
        op = stack.pop()
        if op in seen:
            continue
        seen.add(op)
        stack += [t.op for t in op.inputs if t.op in within and t.op not in seen]
        stack += [c for c in op.control_inputs if c in within and c not in seen]
    return seen
