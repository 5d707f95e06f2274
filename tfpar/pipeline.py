"""The pipeline engine: micro-batches flowing through stages on devices.

`PipelineModel` is a Keras model around a placed model cut into stages
(`placement.Graph`). Its `train_step`:

1. splits the batch into M micro-batches;
2. runs each stage's forward and backward per micro-batch in the order a
   schedule gives (`schedule.py`), each under its stage's `tf.device`, and
   chains a stage's tasks with control dependencies so that a device runs
   exactly one task at a time, in that order;
3. computes every backward stage by stage with its own tape and
   `output_gradients` from the next stage: one tape around the whole model
   would leave the gradient ops unplaced and serialise the pipeline;
4. sums the gradients over micro-batches and applies one optimizer update.

The loss of micro-batch m is weighted by its share of the batch (n_m / n), so
the summed gradient is the gradient of the batch's mean loss: the same
training as one device. With `rematerialize`, a stage keeps only its
boundary inputs; its forward is recomputed inside the backward (after the
upstream gradient arrives, under `keras.StatelessScope` with the random
seeds of the first pass, so BatchNormalization statistics are not updated
twice and dropout masks repeat exactly).

Inference (`evaluate`, `predict`) runs the stages in order on the whole batch.
"""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf

from tfpar import internals
from tfpar import schedule as schedule_lib
from tfpar.placement import Graph


def _now(_anchor) -> np.float64:
    return np.float64(time.time())


class _Plan:
    """Holds the stages out of Keras' attribute tracking: their layers are
    the twin's, already tracked once through `PipelineModel.twin`."""

    def __init__(self, graph: Graph, microbatches: int, schedule: str, rematerialize: bool,
                 record_timeline: bool):
        self.graph = graph
        self.microbatches = microbatches
        self.rematerialize = rematerialize
        sequences = schedule_lib.per_stage(schedule, len(graph.stages), microbatches)
        self.order = schedule_lib.emission_order(sequences)
        self.accumulators = {}
        self.in_train_step = False
        # Which trainable weights one-device training gives a gradient
        # (True) or not, found by tracing the unsplit model once.
        self.expected_gradients = None
        self.timeline = None
        if record_timeline:
            # Start and end time (seconds since the epoch) of each task of the
            # last step, in `order`; read by the timeline tools.
            with tf.device(graph.stages[0].device):
                self.timeline = tf.Variable(
                    tf.zeros((len(self.order), 2), tf.float64), trainable=False, name="pipeline_timeline"
                )

    def check_gradients(self, variables, grads) -> None:
        """Raises unless exactly the weights that get a gradient on one
        device got one here: a lost gradient is an error, never zeros."""
        if self.expected_gradients is None:
            return
        lost = [v.path for v, g, e in zip(variables, grads, self.expected_gradients) if e and g is None]
        extra = [v.path for v, g, e in zip(variables, grads, self.expected_gradients) if g is not None and not e]
        if lost or extra:
            where = {name: stage.index for stage in self.graph.stages for name in stage.layer_names}
            raise ValueError(
                "The pipeline's gradients differ from one-device training: "
                + (f"no gradient reached {_with_stages(lost, where)}, which one device "
                   "trains; " if lost else "")
                + (f"{_with_stages(extra, where)} got a gradient that one device does "
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


class PipelineModel(keras.Model):
    """A placed model trained by pipelining micro-batches through its stages.

    Built by the ModelSplit and GPipe strategies; users meet it only as
    `self.model` inside callbacks during `fit_distributed`.
    """

    def __init__(self, twin: keras.Model, graph: Graph, *, microbatches: int = 1,
                 schedule: str = "gpipe", rematerialize: bool = False,
                 record_timeline: bool = False):
        super().__init__(name=twin.name)
        self.twin = twin
        self._plan = _Plan(graph, microbatches, schedule, rematerialize, record_timeline)
        # Gradients are summed over micro-batches in a buffer per weight, on
        # the weight's device. Summing tensors instead lets Grappler's
        # arithmetic optimizer fuse the chain of adds into one AddN that
        # waits for, and holds, every micro-batch's gradient at once.
        for variable in twin.trainable_variables:
            with tf.device(variable.value.device):
                self._plan.accumulators[id(variable)] = tf.Variable(
                    tf.zeros(variable.shape, variable.dtype), trainable=False,
                    name=f"{variable.path.replace('/', '_')}_grad_sum",
                )
        self.output_names = getattr(graph.view, "output_names", None)
        self.built = True

    @property
    def stages(self):
        return self._plan.graph.stages

    @property
    def task_order(self) -> list:
        """(stage, (kind, micro-batch)) of each task, in emission order."""
        return self._plan.order

    @property
    def task_needs(self) -> list:
        """For each task in `task_order`, the indices of the tasks whose
        outputs it waits for: the stage's previous task, the stages feeding
        its inputs (forward) or the stages consuming its outputs (backward)."""
        order = self._plan.order
        stages = self._plan.graph.stages
        producer = {key: stage.index for stage in stages for key in stage.output_keys}
        feeds = [sorted({producer[k] for k in stage.input_keys if k in producer}) for stage in stages]
        position = {task: index for index, task in enumerate(order)}
        needs, previous = [], {}
        for stage_index, task in order:
            deps = set(schedule_lib.task_needs(stage_index, task, feeds))
            if stage_index in previous:
                deps.add(previous[stage_index])
            needs.append(sorted(position[d] for d in deps))
            previous[stage_index] = (stage_index, task)
        return needs

    def last_timeline(self):
        """Start and end seconds of each task of the last training step, in
        `task_order`; None unless built with record_timeline=True."""
        timeline = self._plan.timeline
        return None if timeline is None else timeline.numpy()

    def compile(self, *args, **kwargs):
        super().compile(*args, **kwargs)
        # The twin shares the optimizer, so saving it (below) saves a
        # compiled model with its optimizer state.
        self.twin.compile(*args, **kwargs)

    def _first_batch_build(self, iterator=None, data_batch=None):
        # Keras builds metric and optimizer state before training only under
        # a tf.distribute strategy, and a pipeline has none. Left to the
        # first trace of the train step, that state would be created there,
        # and tf.function traces a function that creates variables twice:
        # for a large pipeline, most of the first epoch. Build it here, from
        # one batch of a throwaway iterator, as Keras does under a strategy.
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = next(batches)
                break
        internals.symbolic_build(self, data_batch)
        if self._plan.expected_gradients is None and data_batch is not None:
            self._plan.expected_gradients = self._one_device_gradients(data_batch)

    def _one_device_gradients(self, data_batch) -> list[bool]:
        """Which trainable weights get a gradient when the unsplit model
        trains on one device: a trace of the twin, never run."""
        specs = keras.tree.map_structure(
            lambda t: None if t is None else tf.TensorSpec(t.shape, t.dtype), tuple(data_batch))
        found = []

        def step(data):
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            with tf.GradientTape() as tape:
                y_pred = self.twin(x, training=True)
                loss = self.twin.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                              training=True)
            grads = tape.gradient(loss, self.twin.trainable_variables)
            found[:] = [g is not None for g in grads]
            return loss

        tf.function(step).get_concrete_function(specs)
        return found

    def save(self, filepath, *args, **kwargs):
        """Saves the model in the caller's architecture (what callbacks such
        as ModelCheckpoint write): the twin, whose weights these are."""
        return self.twin.save(filepath, *args, **kwargs)

    def save_weights(self, filepath, *args, **kwargs):
        return self.twin.save_weights(filepath, *args, **kwargs)

    def call(self, inputs, training=False):
        graph = self._plan.graph
        env = dict(zip(graph.input_keys, internals.standardize_inputs(graph.view, inputs)))
        for stage in graph.stages:
            with tf.device(stage.device):
                outputs = _run(stage, [env[k] for k in stage.input_keys], training)
            env.update(zip(stage.output_keys, outputs))
        return keras.tree.pack_sequence_as(graph.output_struct, [env[k] for k in graph.output_keys])

    @property
    def losses(self):
        if self._plan.in_train_step:
            # In a training step each stage differentiates the losses its
            # layers added; what remains for `compute_loss` are the weight
            # regularizers, which read the variables directly.
            return [v.regularizer(v) for v in self.trainable_weights if v.regularizer is not None]
        return super().losses

    def train_step(self, data):
        self._plan.in_train_step = True
        try:
            return self._train_step(data)
        finally:
            self._plan.in_train_step = False

    def _train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        run = _Step(self, x, y, sample_weight)
        timeline = self._plan.timeline
        stamps = []
        for stage_index, (kind, micro) in self._plan.order:
            if timeline is not None:
                start = run.stamp(stage_index, run.task_inputs(stage_index, kind, micro))
                # The task's ops wait for their start stamp, or the executor
                # could run them before the stamp and the interval would lie.
                run.last[stage_index] = list(run.last.get(stage_index, [])) + [start]
            if kind == "F":
                run.forward(stage_index, micro)
            else:
                run.backward(stage_index, micro)
            if timeline is not None:
                stamps.append(tf.stack([start, run.stamp(stage_index, run.last[stage_index])]))
        if timeline is not None:
            timeline.assign(tf.stack(stamps))
        grads = run.gradients()
        self._plan.check_gradients(self.trainable_variables, grads)
        self.optimizer.apply(grads, self.trainable_variables)
        y_pred = run.predictions()
        internals.loss_tracker(self).update_state(run.total_loss, sample_weight=run.batch)
        return self.compute_metrics(x, y, y_pred, sample_weight)


# fit and evaluate build metric and optimizer state through this hook.
setattr(PipelineModel, internals.SYMBOLIC_BUILD_HOOK, PipelineModel._first_batch_build)


class _Step:
    """The bookkeeping of one training step: tensors, tapes, gradients."""

    def __init__(self, model: PipelineModel, x, y, sample_weight):
        self.model = model
        plan = model._plan  # pylint: disable=protected-access
        self.graph, self.rematerialize, m = plan.graph, plan.rematerialize, plan.microbatches
        flat_x = internals.standardize_inputs(self.graph.view, x)
        self.batch = tf.shape(flat_x[0])[0]
        # A batch smaller than M (an epoch's last) would leave micro-batches
        # empty, which some kernels reject (a convolution's backward): each
        # real sample then gets a micro-batch of its own, and the others
        # repeat sample 0 with a share of 0.
        extra = tf.maximum(m - self.batch, 0) if m > 1 else 0
        sizes = _split_sizes(self.batch + extra, m)
        starts = tf.cumsum(sizes, exclusive=True)
        self.real = tf.unstack(tf.clip_by_value(self.batch - starts, 0, sizes), num=m)
        def grow(t):
            if m == 1:
                return t
            # Copied only when padding is needed, not on every step.
            return tf.cond(extra > 0, lambda: tf.concat([t, tf.repeat(t[:1], extra, axis=0)], axis=0),
                           lambda: t)

        split = lambda t: tf.split(grow(t), sizes, num=m, axis=0)  # noqa: E731
        xs = [split(t) for t in flat_x]
        self.x = [[parts[i] for parts in xs] for i in range(m)]
        self.y = _split_structure(y, split, m)
        self.sample_weight = _split_structure(sample_weight, split, m)
        self.env = [dict(zip(self.graph.input_keys, self.x[i])) for i in range(m)]
        # (tensor key, source kind) -> gradient, per micro-batch.
        self.grad_env = [{} for _ in range(m)]
        self.saved = {}  # (stage, micro) -> tape and tensors for its backward
        self.last = {}  # stage -> tensors of its previous task, to chain on
        self.accumulators = plan.accumulators
        self.started = set()  # ids of weights whose buffer holds this step's sum
        self.sparse = {}  # id of weight -> its IndexedSlices gradients this step
        self.total_loss = 0.0

    def stamp(self, index: int, after: list):
        """The time once `after` exists, measured on stage `index`'s device."""
        # Not tf.timestamp: it is a stateful op, and tf.function chains every
        # stateful op in program order, which would serialise the stages'
        # tasks through their stamps. A stateless py-function is free of
        # that chain; its one-element data input keeps Grappler from
        # folding it into a constant.
        with tf.device(self.graph.stages[index].device), tf.control_dependencies(after):
            anchor = tf.reshape(after[0], [-1])[:1]
            return tf.numpy_function(_now, [anchor], tf.float64, stateful=False)

    def task_inputs(self, index: int, kind: str, micro: int) -> list:
        """What a task waits for: its stage's previous task and its inputs."""
        stage = self.graph.stages[index]
        prev = list(self.last.get(index, []))
        if kind == "F":
            return prev + [self.env[micro][k] for k in stage.input_keys]
        return prev + [g for k in stage.output_keys for g in _upstream(self.grad_env[micro], k)]

    def forward(self, index: int, micro: int) -> None:
        stage = self.graph.stages[index]
        env = self.env[micro]
        with tf.device(stage.device), tf.control_dependencies(self.last.get(index, [])):
            inputs = [env[k] for k in stage.input_keys]
            if self.rematerialize:
                state = _state_snapshot(stage)
                outputs = _run(stage, inputs, True)
                added = _added_losses(stage)
                self.saved[(index, micro)] = (inputs, state)
            else:
                with tf.GradientTape() as tape:
                    tape.watch(_differentiable(inputs))
                    outputs = _run(stage, inputs, True)
                    added = _added_losses(stage)
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
                inputs, tape, outputs, added = self._recompute(stage, micro, arrived)
            else:
                inputs, tape, outputs, added = self.saved.pop((index, micro))
            # Only outputs that received a gradient are differentiated: a
            # missing upstream gradient is never replaced by zeros (the
            # gradient check in `train_step` names what goes missing).
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
            keys, sources = _differentiable_keyed(stage.input_keys, inputs)
            grads = tape.gradient(targets, sources + list(variables), output_gradients=upstream)
            for key, grad in zip(keys, grads[: len(sources)]):
                if key not in self.graph.input_keys:  # model inputs need no gradient
                    self._add(grad_env, (key, "value"), grad)
            for variable, grad in zip(variables, grads[len(sources):]):
                self._accumulate(variable, grad)
        self.last[index] = [g for g in grads if g is not None] or self.last.get(index, [])

    def _recompute(self, stage, micro, upstream):
        inputs, state = self.saved.pop((stage.index, micro))
        # Recompute only once the upstream gradient exists, or the executor
        # would run it early and hold the activations it exists to drop.
        with tf.control_dependencies([g for g in upstream if g is not None]):
            inputs = [tf.identity(t) for t in inputs]
        with keras.StatelessScope(state_mapping=state, collect_losses=True) as scope, \
                tf.GradientTape() as tape:
            tape.watch(_differentiable(inputs))
            outputs = _run(stage, inputs, True)
            added = _sum(scope.losses)
        return inputs, tape, outputs, added

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
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            tape.watch([source for _, _, source in watched])
            y_pred = keras.tree.pack_sequence_as(graph.output_struct, predictions)
            loss = self.model.compute_loss(
                x=self.x[micro], y=self.y[micro], y_pred=y_pred,
                sample_weight=self.sample_weight[micro], training=True,
            )
            # Each micro-batch's mean loss counts by its share of the batch.
            weighted = loss * self._share(micro, loss.dtype)
            scaled = self.model.optimizer.scale_loss(weighted)
        grads = tape.gradient(scaled, [source for _, _, source in watched] + list(variables))
        for (key, kind, _), grad in zip(watched, grads[: len(watched)]):
            self._add(self.grad_env[micro], (key, kind), grad)
        # Direct paths from loss to weights (regularizers) bypass the stages.
        for variable, grad in zip(variables, grads[len(watched):]):
            with tf.device(variable.value.device):
                self._accumulate(variable, grad)
        self.total_loss = self.total_loss + weighted
        return [scaled]

    def _share(self, micro: int, dtype):
        return tf.cast(self.real[micro], dtype) / tf.cast(self.batch, dtype)

    def _accumulate(self, variable, grad) -> None:
        if grad is None:
            return
        if isinstance(grad, tf.IndexedSlices):
            # Kept sparse, as one device hands them to the optimizer: Keras
            # applies IndexedSlices row by row (Adam squares each entry), so
            # densifying would change the update where token ids repeat.
            self.sparse.setdefault(id(variable), []).append(grad)
            return
        buffer = self.accumulators[id(variable)]
        if id(variable) in self.started:
            buffer.assign_add(grad)
        else:  # the first gradient of the step overwrites last step's sum
            buffer.assign(grad)
            self.started.add(id(variable))

    def gradients(self) -> list:
        """The step's summed gradient of each trainable weight (None: none)."""
        grads = []
        for variable in self.model.trainable_variables:
            key = id(variable)
            dense = self.accumulators[key].read_value() if key in self.started else None
            sparse = self.sparse.get(key)
            if sparse:
                sparse = _combine_slices(sparse)
                # One tape sums a dense and a sparse gradient into a dense one.
                grads.append(sparse if dense is None else dense + tf.convert_to_tensor(sparse))
            else:
                grads.append(dense)
        return grads

    def predictions(self):
        graph = self.graph
        last = graph.stages[-1].device
        with tf.device(last):
            flat = [tf.concat([self.env[i][k] for i in range(len(self.env))], axis=0)[: self.batch]
                    for k in graph.output_keys]
        return keras.tree.pack_sequence_as(graph.output_struct, flat)

    @staticmethod
    def _add(table: dict, key, grad) -> None:
        """Sums gradients reaching one tensor (a skip read by two stages)."""
        if grad is None:
            return
        if isinstance(grad, tf.IndexedSlices):
            grad = tf.convert_to_tensor(grad)
        table[key] = grad if key not in table else table[key] + grad


def _combine_slices(slices: list) -> tf.IndexedSlices:
    """The IndexedSlices gradient one device would compute from the
    micro-batches' gradients of one embedding table.

    A lookup per sample (token ids) gives one entry per sample, so the
    batch's gradient is the micro-batches' entries side by side. A lookup
    shared by all samples (positions, `ops.arange`) gives the same ids in
    every micro-batch, each entry already summed over its samples, so the
    batch's gradient is those ids with the values summed. The two differ for
    Adam and RMSprop, which square each entry. Identical ids in every
    micro-batch are taken as the shared case (token ids coincide so only
    when every micro-batch holds the same samples).
    """
    if len(slices) == 1:
        return slices[0]
    first = slices[0].indices

    def same_ids(indices):
        return tf.cond(tf.reduce_all(tf.shape(indices) == tf.shape(first)),
                       lambda: tf.reduce_all(tf.equal(indices, first)), lambda: tf.constant(False))

    shared = tf.reduce_all(tf.stack([same_ids(s.indices) for s in slices[1:]]))
    values, indices = tf.cond(
        shared,
        lambda: (tf.add_n([s.values for s in slices]), first),
        lambda: (tf.concat([s.values for s in slices], axis=0),
                 tf.concat([s.indices for s in slices], axis=0)),
    )
    return tf.IndexedSlices(values, indices, slices[0].dense_shape)


def _split_sizes(batch, parts: int):
    """Near-equal sizes: the first batch % parts micro-batches get one more."""
    base = batch // parts
    extra = batch - base * parts
    return base + tf.cast(tf.range(parts) < extra, batch.dtype)


def _split_structure(structure, split, parts: int) -> list:
    """Splits every tensor of a structure; returns one structure per part."""
    if structure is None:
        return [None] * parts
    pieces = [split(t) for t in keras.tree.flatten(structure)]
    return [keras.tree.pack_sequence_as(structure, [p[i] for p in pieces]) for i in range(parts)]


# The op types whose input Keras' losses read in place of their output when
# no `_keras_logits` is attached (keras/src/backend/tensorflow/nn.py
# `_get_logits`; checked on Keras 3.15).
_LOGIT_OPS = ("Softmax", "Sigmoid")


def loss_sources(tensor) -> list[tuple[str, object]]:
    """The tensors a Keras loss may differentiate through for `tensor`.

    Itself ("value"), and the logits that Keras' crossentropies read instead
    of a softmax/sigmoid output: `tensor._keras_logits` ("logits") or, for a
    raw softmax/sigmoid op, that op's input ("op_input").
    """
    sources = [("value", tensor)]
    logits = internals.keras_logits(tensor)
    if logits is not None:
        sources.append(("logits", logits))
    elif getattr(getattr(tensor, "op", None), "type", None) in _LOGIT_OPS:
        sources.append(("op_input", tensor.op.inputs[0]))
    return sources


def _upstream(grad_env: dict, key) -> list:
    return [g for (k, _), g in grad_env.items() if k == key]


def _differentiable(tensors) -> list:
    return [t for t in tensors if t.dtype.is_floating or t.dtype.is_complex]


def _differentiable_keyed(keys, tensors) -> tuple[list, list]:
    pairs = [(k, t) for k, t in zip(keys, tensors) if t.dtype.is_floating or t.dtype.is_complex]
    return [k for k, _ in pairs], [t for _, t in pairs]


def _run(stage, inputs: list, training: bool) -> list:
    """Calls a stage's sub-model; always returns a list of its outputs."""
    outputs = stage.model(inputs, training=training)
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def _added_losses(stage):
    """The sum of the losses the stage's layers added in their last call
    (`add_loss`, activity regularizers), or None; weight regularizers are
    not among them (`PipelineModel.losses` counts those)."""
    return _sum(internals.added_losses(stage.model))


def _sum(losses: list):
    return tf.add_n([tf.cast(loss, "float32") for loss in losses]) if losses else None


def _state_snapshot(stage) -> list:
    """Current values of a stage's non-trainable state (moving statistics,
    random seeds), to replay its forward exactly during recomputation."""
    return [(v, tf.identity(v.value)) for v in stage.model.variables if not v.trainable]
