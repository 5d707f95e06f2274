"""The pipeline engine: micro-batches flowing through stages on devices.

`PipelineModel` is a Keras model around a placed model cut into stages
(`placement.Graph`). Its `train_step`:

1. splits the batch into M micro-batches (`microbatch.py`);
2. runs the step's program (`schedule.step_order`) in one loop: each
   stage's forward and backward per micro-batch in the order a schedule
   gives, each on its stage's device with a tape of its own (`step.py`;
   with `rematerialize`, `remat.py`; under "zb1" the backward's weight half
   deferred, `split_backward.py`), then, with data-parallel pipeline
   replicas, each stage's gradient all-reduce (`replicas.py`);
3. sums the gradients over micro-batches (and, for a shared layer's
   weights, over the stages that use them), checks that exactly the
   weights one device trains got one (`gradients.py`), and applies one
   optimizer update;
4. with `record_timeline`, stamps each task's start and end (`timeline.py`).

Inference (`evaluate`, `predict`, validation) pipelines the forward pass
alone: each batch cut into M micro-batches flowing through the stages.

Example:
    >>> strategy = tfpar.strategies.GPipe(2, microbatches=4)
    >>> history = tfpar.fit_distributed(model, x, y, strategy=strategy, epochs=1, verbose=0)
    >>> sorted(history.history)
    ['accuracy', 'loss']
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from tfpar.core import internals, replica
from tfpar.core.microbatch import MicroBatches
from tfpar.pipeline import gradients as gradients_lib, replicas as replicas_lib, schedule as schedule_lib
from tfpar.pipeline import stage_calls, timeline as timeline_lib
from tfpar.pipeline.placement import Graph
from tfpar.pipeline.step import Step


class _Plan:
    """Holds the stages out of Keras' attribute tracking: their layers are
    the twins', already tracked once through `PipelineModel.twin` and
    `PipelineModel.replicas`."""

    def __init__(self, graphs: list[Graph], twins: list, microbatches: int, schedule: str,
                 rematerialize: bool, record_timeline: bool, workers: int | None,
                 timeout_seconds: float | None):
        self.graphs = graphs
        self.graph = graphs[0]
        self.microbatches = microbatches
        self.rematerialize = rematerialize
        self.split = schedule == "zb1"  # backwards as B and W tasks
        self.replica_variables = [list(t.trainable_variables) for t in twins]
        self.variables = [v for group in self.replica_variables for v in group]
        k = len(self.graph.stages)
        group = workers or len(graphs)
        self.all_reduce = None
        if group > 1:
            self.all_reduce = [replicas_lib.StageAllReduce(
                group, [g.stages[s].device for g in graphs], timeout_seconds) for s in range(k)]
        # The step's program, every task the train step runs, all-reduces
        # included; a task's stage is r * K + s for stage s of replica r.
        self.order = schedule_lib.step_order(schedule, k, microbatches, len(graphs),
                                             all_reduce=self.all_reduce is not None)
        # Inference runs the forwards alone, in the order of the forward
        # pass of a fill-drain pipeline.
        self.forward_order = [(stage, task) for stage, task
                              in schedule_lib.step_order("gpipe", k, microbatches, len(graphs))
                              if task.kind == "F"]
        self.workers = workers
        self.gradient_sum = gradients_lib.GradientSum(self.variables)
        self.in_train_step = False
        self.replica = 0  # whose step runs, while the train step is traced
        # Which trainable weights one-device training gives a gradient
        # (True) or not, found by tracing the unsplit model once.
        # Found at the first trace of the train step, so that evaluate and
        # predict never pay for it.
        self.expected_gradients = None
        self.shapes_only = False  # while Keras builds state from output shapes
        self.timeline = None
        if record_timeline:
            # Start and end time (seconds since the epoch) of each task of the
            # last step, in `order`; read by the timeline tools.
            with tf.device(self.graph.stages[0].device):
                self.timeline = tf.Variable(
                    tf.zeros((len(self.order), 2), tf.float64), trainable=False, name="pipeline_timeline"
                )

    @property
    def stages(self) -> list:
        """Every replica's stages, replica by replica."""
        return [stage for graph in self.graphs for stage in graph.stages]

    def check_gradients(self, grads) -> None:
        """Raises unless exactly the weights that get a gradient on one
        device got one here (in every replica)."""
        where = {}
        for stage in self.graph.stages:  # a shared layer's: where it is held
            where.update({name: stage.index for name in stage.layer_names if name not in where})
        expected = None
        if self.expected_gradients is not None:
            expected = self.expected_gradients * len(self.graphs)
        gradients_lib.check_same_as_one_device(expected, self.variables, grads, where)


class PipelineModel(keras.Model):
    """A placed model trained by pipelining micro-batches through its stages.

    Built by the ModelSplit and GPipe strategies; users meet it only as
    `self.model` inside callbacks during `fit_distributed`.

    Args:
      twin: the placed model (replica 0), whose weights the caller gets back.
      graph: `twin` cut into stages.
      microbatches, schedule, rematerialize, record_timeline: as for GPipe.
      replicas: (twin, graph) of each further pipeline replica in this
        process, trained data parallel with the first.
      workers: in a multi-worker job, the number of workers, each training
        one replica (this process's is `twin`); None otherwise.
      timeout_seconds: how long a gradient all-reduce waits for a replica.
    """

    def __init__(self, twin: keras.Model, graph: Graph, *, microbatches: int = 1,
                 schedule: str = "gpipe", rematerialize: bool = False,
                 record_timeline: bool = False, replicas=(), workers: int | None = None,
                 timeout_seconds: float | None = None, caller: keras.Model | None = None):
        super().__init__(name=twin.name)
        self.twin = twin
        # Tracked, so that their weights train and their optimizer state is
        # made on their devices; the caller gets replica 0's weights back.
        self.replicas = [t for t, _ in replicas]
        self._plan = _Plan([graph] + [g for _, g in replicas], [twin] + self.replicas,
                           microbatches, schedule, rematerialize, record_timeline, workers,
                           timeout_seconds)
        # Out of Keras' tracking (its weights are the caller's, not this model's).
        self._plan.caller = caller
        self.output_names = getattr(graph.view, "output_names", None)
        self.built = True

    @property
    def primary(self) -> keras.Model:
        """The model whose weights the caller's model gets back (replica 0)."""
        return self.twin

    @property
    def plan(self) -> _Plan:
        """The stages, schedule and step state (read by `step.Step`)."""
        return self._plan

    @property
    def stages(self):
        """Every stage, replica by replica: task stage r * K + s is stage s of replica r."""
        return self._plan.stages

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
        k = len(stages)
        producer = {key: stage.index for stage in stages for key in stage.output_keys}
        feeds = [sorted({producer[key] for key in stage.input_keys if key in producer})
                 for stage in stages]
        position = {task: index for index, task in enumerate(order)}
        needs, previous = [], {}
        for stage_index, task in order:
            replica, local = divmod(stage_index, k)
            deps = {(replica * k + s, t) for s, t in schedule_lib.task_needs(local, task, feeds)}
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
        # Building needs only the outputs' shapes, which the twin (the
        # unsplit model, same weights) gives with one trace; the pipelined
        # call would trace every micro-batch of every stage.
        self._plan.shapes_only = True
        try:
            internals.symbolic_build(self, data_batch)
        finally:
            self._plan.shapes_only = False

    def save(self, filepath, *args, **kwargs):
        """Saves the model in the caller's architecture (what callbacks such
        as ModelCheckpoint write): the caller's model, holding this
        pipeline's weights and optimizer state while it is written (a
        keras_hub task's twin is a functional copy that does not load as
        the task); the twin without a caller."""
        with self._in_callers_model() as model:
            return model.save(filepath, *args, **kwargs)

    def save_weights(self, filepath, *args, **kwargs):
        with self._in_callers_model() as model:
            return model.save_weights(filepath, *args, **kwargs)

    def _in_callers_model(self):
        caller = self._plan.caller
        return contextlib.nullcontext(self.twin) if caller is None else replica.written_to(caller, self)

    def call(self, inputs, training=False):
        """The model's outputs, the batch pipelined: cut into M micro-batches
        per replica that flow through the stages concurrently, each stage
        running its micro-batches in order (what evaluate, predict and
        validation run)."""
        plan = self._plan
        if plan.shapes_only:
            return self.twin(inputs, training=training)
        graph, k, m = plan.graph, len(plan.graph.stages), plan.microbatches
        flat = internals.standardize_inputs(graph.view, inputs)
        micro = MicroBatches(flat, None, None, m * len(plan.graphs))
        # Micro-batch i goes to replica i // M, whose graph names its tensors.
        owners = [plan.graphs[i // m] for i in range(m * len(plan.graphs))]
        envs = [dict(zip(owner.input_keys, micro.x[i])) for i, owner in enumerate(owners)]
        last = {}
        for stage_index, (_, i) in plan.forward_order:
            replica, local = divmod(stage_index, k)
            stage, env = plan.graphs[replica].stages[local], envs[replica * m + i]
            with tf.device(stage.device), tf.control_dependencies(last.get(stage_index, [])):
                outputs = stage_calls.run(stage, [env[key] for key in stage.input_keys], training)
            env.update(zip(stage.output_keys, outputs))
            last[stage_index] = outputs
        with tf.device(plan.graphs[-1].stages[-1].device):
            flat_out = [micro.merge([env[owner.output_keys[o]] for env, owner in zip(envs, owners)])
                        for o in range(len(graph.output_keys))]
        return keras.tree.pack_sequence_as(graph.output_struct, flat_out)

    @property
    def losses(self):
        if self._plan.in_train_step:
            # In a training step each stage differentiates the losses its
            # layers added; what remains for `compute_loss` are the weight
            # regularizers, which read the variables directly: those of the
            # replica whose step is being traced.
            variables = self._plan.replica_variables[self._plan.replica]
            return [v.regularizer(v) for v in variables if v.regularizer is not None]
        return super().losses

    def train_step(self, data):
        self._plan.in_train_step = True
        try:
            return self._train_step(data)
        finally:
            self._plan.in_train_step = False

    def _train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        plan = self._plan
        if plan.expected_gradients is None:
            # Of replica 0's weights; every replica must match (check_gradients).
            plan.expected_gradients = gradients_lib.one_device_gradients(self.twin, data)
        flat_x = internals.standardize_inputs(plan.graph.view, x)
        total = None
        if plan.workers:
            # Shares are of the global batch, the workers' parts summed.
            local = tf.shape(flat_x[0])[0]
            total = tf.cast(plan.all_reduce[0].sum(tf.cast(local, tf.float32), "batch"), local.dtype)
        micro = MicroBatches(flat_x, y, sample_weight, plan.microbatches * len(plan.graphs), total)
        steps = [Step(self, r, micro, r * plan.microbatches) for r in range(len(plan.graphs))]
        plan.gradient_sum.begin(flat_x)
        k = len(plan.graph.stages)
        # Each task's (start, end) stamps, by its place in `order` (an
        # all-reduce's come when its stage's collective runs), and each
        # (replica, stage)'s last end stamp so far.
        stamps, ends = [None] * len(plan.order), {}
        all_reduces = _AllReduces(plan, steps, stamps, ends)
        for place, (stage_index, (kind, m)) in enumerate(plan.order):
            plan.replica, local_stage = divmod(stage_index, k)
            if kind == "A":
                all_reduces.run(place, plan.replica, local_stage)
            else:
                stamps[place] = self._run_pass(steps[plan.replica], local_stage, kind, m)
                if stamps[place] is not None:
                    ends[(plan.replica, local_stage)] = stamps[place][1]
        plan.replica = 0
        grads = all_reduces.gradients() if plan.all_reduce else steps[0].gradients()
        if plan.timeline is not None:
            plan.timeline.assign(tf.stack([tf.stack(pair) for pair in stamps]))
        plan.check_gradients(grads)
        self.optimizer.apply(grads, plan.variables)
        total_loss = sum(step.total_loss for step in steps)
        if plan.workers:
            total_loss = plan.all_reduce[0].sum(total_loss, "loss")
        last = plan.graphs[-1].stages[-1].device
        with tf.device(last):
            flat = [micro.merge([t for step in steps for t in step.outputs()[o]])
                    for o in range(len(plan.graph.output_keys))]
        y_pred = keras.tree.pack_sequence_as(plan.graph.output_struct, flat)
        internals.loss_tracker(self).update_state(total_loss, sample_weight=micro.total)
        if plan.workers:  # metrics of the global batch, the same on every worker
            y, y_pred, sample_weight = self._global_batch(y, y_pred, sample_weight, "train")
        return self.compute_metrics(x, y, y_pred, sample_weight)

    def _global_batch(self, y, y_pred, sample_weight, slot):
        gather = self._plan.all_reduce[0].gather_rows
        return (gather(y, (slot, "y")), gather(y_pred, (slot, "y_pred")),
                gather(sample_weight, (slot, "sample_weight")))

    def test_step(self, data):
        if not self._plan.workers:
            return super().test_step(data)
        # Across workers each holds a part of the batch: the loss and the
        # metrics are those of the whole batch, as one device reports them.
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y, y_pred, sample_weight = self._global_batch(y, self(x, training=False), sample_weight, "test")
        loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False)
        count = tf.shape(keras.tree.flatten(y_pred)[0])[0]
        internals.loss_tracker(self).update_state(loss, sample_weight=count)
        return self.compute_metrics(x, y, y_pred, sample_weight)

    def _run_pass(self, step: Step, stage: int, kind: str, micro: int):
        """Runs a forward ("F"), backward ("B") or weight ("W") task of
        `step`'s replica; returns its (start, end) stamps (None unless the
        plan records a timeline)."""
        run = {"F": step.forward, "B": step.backward, "W": step.weights}[kind]
        if self._plan.timeline is None:
            run(stage, micro)
            return None
        device = step.graph.stages[stage].device
        start = timeline_lib.stamp(device, step.task_inputs(stage, kind, micro))
        # The task's ops wait for their start stamp, or the executor could
        # run them before the stamp and the interval would lie.
        step.wait_for(stage, start)
        run(stage, micro)
        return start, timeline_lib.stamp(device, step.last[stage])


class _AllReduces:
    """The all-reduce ("A") tasks of one training step.

    Stage s's collective sums every local replica's gradients at once
    (`StageAllReduce`), so the A task of (replica r, stage s) hands it
    replica r's gradients of the stage's weights, and the stage's last A
    task runs it. A shared layer's weights go with the stage holding them,
    the first that uses them (`schedule.step_order` puts every A task after
    every task adding to a gradient).

    Args:
      plan: the pipeline's plan, with its `all_reduce`.
      steps: each local replica's `Step`.
      stamps: each task's (start, end) stamps by its place in `order`; an
        A task's are written here when its stage's collective runs.
      ends: each (replica, stage)'s last task's end stamp, which the
        all-reduce's start stamp follows (the gradients can exist before
        that stamp is read, and the interval would start before the
        backward's end).
    """

    def __init__(self, plan: _Plan, steps: list, stamps: list, ends: dict):
        self.plan, self.steps, self.stamps, self.ends = plan, steps, stamps, ends
        self.handed = {}  # stage -> replica -> (place, variables, gradients, start stamp)
        self.reduced = {}  # id(variable) -> its gradient, summed over the replicas

    def run(self, place: int, replica: int, stage: int) -> None:
        """The A task at `place` in `order`: of `stage` of `replica`."""
        step = self.steps[replica]
        variables = step.graph.stages[stage].owned_variables
        grads = step.gradients(variables)
        start = None
        if self.plan.timeline is not None:
            start = timeline_lib.stamp(step.graph.stages[stage].device,
                                       (gradients_lib.tensors_of(grads) or step.last[stage])
                                       + [self.ends[(replica, stage)]] * ((replica, stage) in self.ends))
        handed = self.handed.setdefault(stage, {})
        handed[replica] = (place, variables, grads, start)
        if len(handed) < len(self.steps):
            return
        # The collective's members in replica order, as its devices are.
        members = [handed[r] for r in range(len(self.steps))]
        after = None if start is None else [[member[3]] for member in members]
        summed = self.plan.all_reduce[stage]([member[2] for member in members],
                                             self.plan.gradient_sum.batch, after=after)
        for r, ((at, owned, _, began), total) in enumerate(zip(members, summed)):
            self.reduced.update({id(v): g for v, g in zip(owned, total)})
            if began is not None:
                end = timeline_lib.stamp(self.steps[r].graph.stages[stage].device,
                                         gradients_lib.tensors_of(total) or [began])
                self.stamps[at] = (began, end)

    def gradients(self) -> list:
        """Each of the plan's weights' summed gradient (None: it got none)."""
        return [self.reduced.get(id(v)) for v in self.plan.variables]


# fit and evaluate build metric and optimizer state through this hook.
setattr(PipelineModel, internals.SYMBOLIC_BUILD_HOOK, PipelineModel._first_batch_build)
