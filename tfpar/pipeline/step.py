"""One pipelined training step: each stage's forward and backward tasks.

A task is one stage's forward (F) or backward (B) on one micro-batch. Each
runs under its stage's `tf.device`, and after its stage's previous task
(control dependencies), so that a device runs exactly one task at a time, in
the schedule's order. Each backward has a tape of its own and receives its
outputs' gradients from the stages that read them (`output_gradients`): one
tape around the whole model would leave the gradient ops unplaced and
serialise the pipeline.

Under "zb1" the backward is two tasks: `backward` computes the gradients
the stage upstream waits for, `weights` releases the weight gradients,
computed by the same tape call but held back until then (`split_backward.py`).

The engine (`engine.PipelineModel.train_step`) calls `forward`, `backward`
and `weights` in the schedule's order, then applies `gradients()`.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfpar.core.microbatch import MicroBatches
from tfpar.pipeline import remat, split_backward
from tfpar.pipeline.gradients import tensors_of
from tfpar.pipeline.stage_calls import (added_losses, differentiable, differentiable_keyed,
                                        loss_sources, run)


class Step:
    """The tensors, tapes and gradients of one replica's share of a step.

    Args:
      model: the `PipelineModel` being trained.
      replica: which of its pipeline replicas (0 unless data parallel).
      micro: the step's batch, cut into micro-batches (`MicroBatches`).
      first: the replica's first micro-batch; it runs the plan's M from there.
    """

    def __init__(self, model, replica: int, micro: MicroBatches, first: int = 0):
        self.model = model
        plan = model.plan
        self.replica = replica
        self.graph, self.rematerialize = plan.graphs[replica], plan.rematerialize
        self.split = plan.split
        self.variables = plan.replica_variables[replica]
        self.micro = micro
        self.micros = list(range(first, first + plan.microbatches))  # local index -> global
        self.env = [dict(zip(self.graph.input_keys, micro.x[m])) for m in self.micros]
        # (tensor key, source kind) -> gradient, per micro-batch.
        self.grad_env = [{} for _ in self.env]
        self.saved = {}  # (stage, micro) -> tape and tensors for its backward
        self.pending = {}  # (stage, micro) -> its weight gradients, until its W task
        self.last = {}  # stage -> tensors of its previous task, to chain on
        self.sums = plan.gradient_sum
        self.total_loss = 0.0

    def _share(self, micro: int, dtype):
        return self.micro.share(self.micros[micro], dtype)

    def task_inputs(self, index: int, kind: str, micro: int) -> list:
        """What a task waits for: its stage's previous task and its inputs."""
        stage = self.graph.stages[index]
        prev = list(self.last.get(index, []))
        if kind == "F":
            return prev + [self.env[micro][k] for k in stage.input_keys]
        if kind == "W":
            return prev
        return prev + [g for k in stage.output_keys for g in _upstream(self.grad_env[micro], k)]

    def wait_for(self, index: int, tensor) -> None:
        """Makes stage `index`'s next task wait for `tensor` too."""
        self.last[index] = list(self.last.get(index, [])) + [tensor]

    def forward(self, index: int, micro: int) -> None:
        stage = self.graph.stages[index]
        env = self.env[micro]
        with tf.device(stage.device), tf.control_dependencies(self.last.get(index, [])):
            inputs = [env[k] for k in stage.input_keys]
            if self.rematerialize:
                state = remat.snapshot(stage)
                outputs = run(stage, inputs, True)
                added = added_losses(stage)
                self.saved[(index, micro)] = (inputs, state)
            else:
                with tf.GradientTape() as tape:
                    tape.watch(differentiable(inputs))
                    outputs = run(stage, inputs, True)
                    added = added_losses(stage)
                self.saved[(index, micro)] = (inputs, tape, outputs, added)
            env.update(zip(stage.output_keys, outputs))
            done = list(outputs)
            if added is not None:
                # Losses added in the stage (add_loss, activity regularizers)
                # are means over the micro-batch, as Keras' are over the
                # batch: each counts by its share, like the compiled loss.
                self.total_loss = self.total_loss + self._share(micro, added.dtype) * added
                done.append(added)
            if index == len(self.graph.stages) - 1:
                done += self._loss(micro)
        self.last[index] = done

    def backward(self, index: int, micro: int) -> None:
        stage = self.graph.stages[index]
        grad_env = self.grad_env[micro]
        variables = stage.model.trainable_variables
        with tf.device(stage.device), tf.control_dependencies(self.last.get(index, [])):
            arrived = [g for k in stage.output_keys for g in _upstream(grad_env, k)]
            if self.rematerialize:
                inputs, state = self.saved.pop((index, micro))
                inputs, tape, outputs, added = remat.recompute(stage, inputs, state, arrived)
            else:
                inputs, tape, outputs, added = self.saved.pop((index, micro))
            _check_weights_known(stage, tape, variables, self.variables)
            # Only outputs that received a gradient are differentiated: a
            # missing upstream gradient is never replaced by zeros (the
            # gradient check of the train step names what goes missing).
            targets, upstream = [], []
            for key, output in zip(stage.output_keys, outputs):
                for kind, source in loss_sources(output):
                    grad = grad_env.get((key, kind))
                    if grad is not None:
                        targets.append(source)
                        upstream.append(grad)
            if added is not None:
                targets.append(added)
                upstream.append(self.model.optimizer.scale_loss(self._share(micro, added.dtype)))
            if not targets:
                return
            # The model's own inputs need no gradient: not asking for one
            # saves the first layer's input-gradient product.
            inner = [i for i, k in enumerate(stage.input_keys) if k not in self.graph.input_keys]
            keys, sources = differentiable_keyed([stage.input_keys[i] for i in inner],
                                                 [inputs[i] for i in inner])
            if self.split:
                input_grads, weight_grads, deferred = split_backward.gradients(
                    tape, targets, sources, list(variables), upstream)
                self.pending[(index, micro)] = (variables, weight_grads, deferred)
            else:
                grads = tape.gradient(targets, sources + list(variables), output_gradients=upstream)
                input_grads, weight_grads = grads[: len(sources)], grads[len(sources):]
                for variable, grad in zip(variables, weight_grads):
                    self.sums.add(variable, grad)
            for key, grad in zip(keys, input_grads):
                _add(grad_env, (key, "value"), grad)
        done = input_grads if self.split else list(input_grads) + list(weight_grads)
        self.last[index] = tensors_of(done) or self.last.get(index, [])

    def weights(self, index: int, micro: int) -> None:
        """The W task of a split backward: the weight gradients of `micro`."""
        if (index, micro) not in self.pending:
            return  # its backward had nothing to differentiate
        variables, grads, deferred = self.pending.pop((index, micro))
        if deferred is not None:
            deferred.release_after(self.last.get(index, []))
        with tf.device(self.graph.stages[index].device):
            for variable, grad in zip(variables, grads):
                self.sums.add(variable, grad)
        self.last[index] = tensors_of(grads) or self.last.get(index, [])

    def _loss(self, micro: int) -> list:
        graph = self.graph
        env = self.env[micro]
        predictions = [env[k] for k in graph.output_keys]
        # A loss may read a tensor other than the prediction itself: Keras
        # computes crossentropy from the logits a softmax or sigmoid left on
        # its output. Each such source is watched, and its gradient goes to
        # the stage that made it, which differentiates that same source.
        watched = [(key, kind, source) for key, p in zip(graph.output_keys, predictions)
                   for kind, source in loss_sources(p)]
        # The weight regularizers in the loss read this replica's weights
        # (`PipelineModel.losses`): each replica adds its share of them.
        variables = self.variables
        m = self.micros[micro]
        with tf.GradientTape() as tape:
            tape.watch([source for _, _, source in watched])
            y_pred = keras.tree.pack_sequence_as(graph.output_struct, predictions)
            loss = self.model.compute_loss(
                x=self.micro.x[m], y=self.micro.y[m], y_pred=y_pred,
                sample_weight=self.micro.sample_weight[m], training=True,
            )
            # Each micro-batch's mean loss counts by its share of the batch.
            weighted = loss * self._share(micro, loss.dtype)
            scaled = self.model.optimizer.scale_loss(weighted)
        grads = tape.gradient(scaled, [source for _, _, source in watched] + list(variables))
        for (key, kind, _), grad in zip(watched, grads[: len(watched)]):
            _add(self.grad_env[micro], (key, kind), grad)
        # Direct paths from loss to weights (regularizers) bypass the stages.
        for variable, grad in zip(variables, grads[len(watched):]):
            with tf.device(variable.value.device):
                self.sums.add(variable, grad)
        self.total_loss = self.total_loss + weighted
        return [scaled]

    def gradients(self, variables=None) -> list:
        """The summed gradient of each of this replica's trainable weights,
        or of `variables` (None: it got none)."""
        return self.sums.result(self.variables if variables is None else variables)

    def outputs(self) -> list:
        """Per model output, this replica's micro-batches' tensors, in order."""
        return [[env[k] for env in self.env] for k in self.graph.output_keys]


def _check_weights_known(stage, tape, variables, trained) -> None:
    """Raises if the stage's call read one of the model's trainable weights
    (`trained`) that none of the stage's layers tracks (`variables`): this
    stage's share of its gradient would be lost, and a gradient is never
    dropped silently."""
    known = {id(v.value) for v in variables}
    names = {id(v.value): v.path for v in trained}
    unknown = [names[id(v)] for v in tape.watched_variables() if id(v) in names and id(v) not in known]
    if unknown:
        raise ValueError(
            "Each weight a pipeline stage reads must belong to one of its layers (or a "
            "layer it calls), so that the stage's backward can give it its gradient. "
            f"Received: stage {stage.index} ({stage.layer_names}) read {unknown}, which "
            "none of its layers tracks. Call the layer that owns the weight instead of "
            "reading its variable from another layer (a shared layer trains split), or "
            "train the model with a data-parallel strategy."
        )


def _upstream(grad_env: dict, key) -> list:
    return [g for (k, _), g in grad_env.items() if k == key]


def _add(table: dict, key, grad) -> None:
    """Sums gradients reaching one tensor (a skip read by two stages)."""
    if grad is None:
        return
    if isinstance(grad, tf.IndexedSlices):
        grad = tf.convert_to_tensor(grad)
    table[key] = grad if key not in table else table[key] + grad
