"""The pipeline engine: micro-batches flowing through stages on devices.

`PipelineModel` is a Keras model around a placed model cut into stages
(`placement.Graph`). Its `train_step`:

1. splits the batch into M micro-batches (`microbatch.py`);
2. runs each stage's forward and backward per micro-batch in the order a
   schedule gives (`schedule.py`), each on its stage's device with a tape of
   its own (`step.py`; with `rematerialize`, `remat.py`);
3. sums the gradients over micro-batches, checks that exactly the weights
   one device trains got one (`gradients.py`), and applies one optimizer
   update;
4. with `record_timeline`, stamps each task's start and end (`timeline.py`).

Inference (`evaluate`, `predict`) runs the stages in order on the whole batch.

Example:
    >>> strategy = tfpar.strategies.GPipe(2, microbatches=4)
    >>> history = tfpar.fit_distributed(model, x, y, strategy=strategy, epochs=1, verbose=0)
    >>> sorted(history.history)
    ['accuracy', 'loss']
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfpar import internals
from tfpar.pipeline import gradients as gradients_lib
from tfpar.pipeline import schedule as schedule_lib
from tfpar.pipeline import stage_calls
from tfpar.pipeline import timeline as timeline_lib
from tfpar.pipeline.placement import Graph
from tfpar.pipeline.step import Step


class _Plan:
    """Holds the stages out of Keras' attribute tracking: their layers are
    the twin's, already tracked once through `PipelineModel.twin`."""

    def __init__(self, graph: Graph, microbatches: int, schedule: str, rematerialize: bool,
                 record_timeline: bool, variables):
        self.graph = graph
        self.microbatches = microbatches
        self.rematerialize = rematerialize
        sequences = schedule_lib.per_stage(schedule, len(graph.stages), microbatches)
        self.order = schedule_lib.emission_order(sequences)
        self.gradient_sum = gradients_lib.GradientSum(variables)
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
        device got one here."""
        where = {name: stage.index for stage in self.graph.stages for name in stage.layer_names}
        gradients_lib.check_same_as_one_device(self.expected_gradients, variables, grads, where)


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
        self._plan = _Plan(graph, microbatches, schedule, rematerialize, record_timeline,
                           twin.trainable_variables)
        self.output_names = getattr(graph.view, "output_names", None)
        self.built = True

    @property
    def plan(self) -> _Plan:
        """The stages, schedule and step state (read by `step.Step`)."""
        return self._plan

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
        data_batch = internals.first_batch(iterator, data_batch)
        internals.symbolic_build(self, data_batch)
        if self._plan.expected_gradients is None and data_batch is not None:
            self._plan.expected_gradients = gradients_lib.one_device_gradients(self.twin, data_batch)

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
                outputs = stage_calls.run(stage, [env[k] for k in stage.input_keys], training)
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
        step = Step(self, x, y, sample_weight)
        timeline = self._plan.timeline
        stamps = []
        for stage_index, (kind, micro) in self._plan.order:
            device = self._plan.graph.stages[stage_index].device
            if timeline is not None:
                start = timeline_lib.stamp(device, step.task_inputs(stage_index, kind, micro))
                # The task's ops wait for their start stamp, or the executor
                # could run them before the stamp and the interval would lie.
                step.wait_for(stage_index, start)
            if kind == "F":
                step.forward(stage_index, micro)
            else:
                step.backward(stage_index, micro)
            if timeline is not None:
                stamps.append(tf.stack([start, timeline_lib.stamp(device, step.last[stage_index])]))
        if timeline is not None:
            timeline.assign(tf.stack(stamps))
        grads = step.gradients()
        self._plan.check_gradients(self.trainable_variables, grads)
        self.optimizer.apply(grads, self.trainable_variables)
        y_pred = step.predictions()
        internals.loss_tracker(self).update_state(step.total_loss, sample_weight=step.batch)
        return self.compute_metrics(x, y, y_pred, sample_weight)


# fit and evaluate build metric and optimizer state through this hook.
setattr(PipelineModel, internals.SYMBOLIC_BUILD_HOOK, PipelineModel._first_batch_build)
