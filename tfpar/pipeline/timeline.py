"""What a pipeline step really did: per-stage task intervals and pictures.

A pipeline built with `record_timeline=True` stamps the start and end of
every task of the last training step (`stamp`, called by the engine): each
stage's forward (F) and backward (B, under "zb1" also W) of each
micro-batch, and with data-parallel replicas each stage's all-reduce (A).
This module turns those stamps into `Interval`s, the measured bubble (the
share of the step a stage sat idle) next to the ideal (K-1)/(M+K-1), a
Chrome trace (chrome://tracing or https://ui.perfetto.dev) and a Gantt
chart PNG; `PipelineTimeline` is the Keras callback that does all of it at
the end of training.

Example:
    >>> strategy = tfpar.strategies.GPipe(2, microbatches=8, record_timeline=True)
    >>> timeline = tfpar.timeline.PipelineTimeline(png="step.png", trace="step.json", verbose=False)
    >>> history = tfpar.fit_distributed(model, x, y, strategy=strategy, callbacks=[timeline],
    ...                                 verbose=0)
    >>> round(timeline.ideal_bubble, 2), 0 <= timeline.bubble < 1
    (0.11, True)
"""

from __future__ import annotations

import dataclasses
import json
import time

import keras
import numpy as np
import tensorflow as tf

from tfpar.pipeline import schedule as schedule_lib


def stamp(device: str, after: list):
    """The time (seconds since the epoch) once `after` exists, read on `device`."""
    # Not tf.timestamp: it is a stateful op, and tf.function chains every
    # stateful op in program order, which would serialise the stages' tasks
    # through their stamps. A stateless py-function is free of that chain;
    # its one-element data input keeps Grappler from folding it into a
    # constant.
    with tf.device(device), tf.control_dependencies(after):
        anchor = tf.reshape(after[0], [-1])[:1]
        return tf.numpy_function(_now, [anchor], tf.float64, stateful=False)


def _now(_anchor) -> np.float64:
    return np.float64(time.time())


@dataclasses.dataclass(frozen=True)
class Interval:
    """One task: `kind` ("F", "B", "W" or "A") of micro-batch `micro` on
    `stage`, from `start` to `end` seconds after the step began."""

    stage: int
    kind: str
    micro: int
    start: float
    end: float


def intervals(task_order, stamps, needs=None) -> list[Interval]:
    """Pairs each (stage, (kind, micro)) with its (start, end) stamps.

    Times are shifted so that the step's first task starts at 0. A start
    stamp is exact: the task's ops wait for it. An end stamp can come late:
    it waits for a free thread when every thread is busy with the other
    stages. So a task's end is taken as the earliest of its end stamp and
    the start of every task that waited for its outputs (`needs`, as
    `PipelineModel.task_needs` gives it).

    Args:
      task_order: (stage, (kind, micro)) of each task.
      stamps: (start, end) seconds of each task.
      needs: for each task, the indices of the tasks it waited for (None:
        the stamps are taken as they are).

    Example:
        >>> intervals([(0, ("F", 0)), (1, ("F", 0))], [(10.0, 10.7), (10.5, 11.0)], [[], [0]])
        [Interval(stage=0, kind='F', micro=0, start=0.0, end=0.5), Interval(stage=1, kind='F', micro=0, start=0.5, end=1.0)]
    """
    if len(task_order) != len(stamps) or not len(stamps):
        raise ValueError(
            f"Need one (start, end) stamp per task. Received {len(task_order)} tasks and "
            f"{len(stamps)} stamps."
        )
    origin = min(float(start) for start, _ in stamps)
    starts = [float(start) - origin for start, _ in stamps]
    ends = [float(end) - origin for _, end in stamps]
    for index, waited_for in enumerate(needs or []):
        for producer in waited_for:
            ends[producer] = max(starts[producer], min(ends[producer], starts[index]))
    return [Interval(stage, kind, micro, start, end)
            for (stage, (kind, micro)), start, end in zip(task_order, starts, ends)]


def measured_bubble(tasks: list[Interval]) -> float:
    """The share of the step the stages sat idle: 1 - busy / (K x span).

    A stage is busy while one of its tasks runs; the span is from the first
    task's start to the last task's end.

    Example:
        >>> measured_bubble([Interval(0, "F", 0, 0, 1), Interval(1, "F", 0, 1, 2)])
        0.5
    """
    stages = sorted({t.stage for t in tasks})
    span = max(t.end for t in tasks) - min(t.start for t in tasks)
    if span <= 0:
        return 0.0
    busy = sum(_union_length([(t.start, t.end) for t in tasks if t.stage == s]) for s in stages)
    return 1.0 - busy / (len(stages) * span)


def ready_idle(tasks: list[Interval], needs: list[list[int]]) -> float:
    """The share of the step the stages sat idle with a task ready to run:
    the part of the measured bubble that is dispatch overhead (starting a
    task once its inputs and its stage are free), not the schedule.

    A task is ready once the stage's previous task and every task it waits
    for (`needs`, as `PipelineModel.task_needs` gives it) have ended.

    Example:
        >>> ready_idle([Interval(0, "F", 0, 0, 1), Interval(0, "F", 1, 1.5, 2.5)], [[], [0]])
        0.2
    """
    span = max(t.end for t in tasks) - min(t.start for t in tasks)
    if span <= 0:
        return 0.0
    idle = sum(max(0.0, task.start - max([tasks[i].end for i in waited_for] or [task.start]))
               for task, waited_for in zip(tasks, needs))
    return idle / (len({t.stage for t in tasks}) * span)


def ideal_bubble(tasks: list[Interval], num_stages: int | None = None) -> float:
    """The bubble of the schedule the tasks ran, on its ideal clock
    (`schedule.ideal_bubble`): (K-1)/(M+K-1) for "gpipe" and "1f1b", less
    for "zb1". The schedule is read from the tasks: each stage's F, B and W
    tasks in the order they were issued. With `num_stages` K, only the
    first K stages are read (replicas of a K-stage pipeline run the same
    schedule).

    Example:
        >>> sequences = schedule_lib.per_stage("gpipe", 2, 3)  # (K-1)/(M+K-1) = 1/4
        >>> ideal_bubble([Interval(s, kind, m, 0.0, 0.0) for s in (0, 1) for kind, m in sequences[s]])
        0.25
    """
    k = num_stages or len({t.stage for t in tasks})
    stages = sorted({t.stage for t in tasks})[:k]
    sequences = [[schedule_lib.Task(t.kind, t.micro) for t in tasks
                  if t.stage == stage and t.kind in ("F", "B", "W")] for stage in stages]
    return schedule_lib.ideal_bubble(sequences)


def chrome_trace(tasks: list[Interval], devices=None) -> dict:
    """The tasks as a Chrome trace (one row per stage, microseconds).

    Open the JSON written from it in chrome://tracing or ui.perfetto.dev.

    Example:
        >>> chrome_trace([Interval(0, "F", 0, 0.0, 0.001)])["traceEvents"][1]["dur"]
        1000.0
    """
    events = []
    for stage in sorted({t.stage for t in tasks}):
        label = f"stage {stage}" + (f" ({devices[stage]})" if devices else "")
        events.append({"name": "thread_name", "ph": "M", "pid": 0, "tid": stage,
                       "args": {"name": label}})
    for t in tasks:
        events.append({
            "name": f"{t.kind}{t.micro}", "cat": _KIND_NAMES.get(t.kind, t.kind),
            "ph": "X", "pid": 0, "tid": t.stage,
            "ts": round(t.start * 1e6, 3), "dur": round((t.end - t.start) * 1e6, 3),
            "args": {"stage": t.stage, "micro_batch": t.micro},
        })
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_chrome_trace(tasks: list[Interval], path: str, devices=None) -> str:
    """Writes `chrome_trace(tasks)` to `path` as JSON; returns the path."""
    with open(path, "w", encoding="utf-8") as file:
        json.dump(chrome_trace(tasks, devices), file)
    return path


def plot(tasks: list[Interval], path: str, *, title: str | None = None, devices=None) -> str:
    """Draws the tasks as a Gantt chart (a row per stage) into a PNG file.

    Forward tasks are blue, backward orange (under "zb1" its weight half W
    red), all-reduces green, each labelled with its
    micro-batch; the title gives the measured and ideal bubble.

    Returns:
      `path`.
    """
    import matplotlib  # Late: only pictures need matplotlib.

    matplotlib.use("Agg")  # no screen needed
    from matplotlib import pyplot

    stages = sorted({t.stage for t in tasks})
    figure, axes = pyplot.subplots(figsize=(10, 0.6 * len(stages) + 1.4))
    for t in tasks:
        milliseconds = (t.start * 1e3, (t.end - t.start) * 1e3)
        color = _COLORS.get(t.kind, "tab:green")  # A: all-reduce
        axes.broken_barh([milliseconds], (t.stage - 0.4, 0.8), facecolors=color, edgecolors="white")
        axes.text(milliseconds[0] + milliseconds[1] / 2, t.stage, f"{t.kind}{t.micro}",
                  ha="center", va="center", fontsize=7, color="white", clip_on=True)
    axes.set_yticks(stages)
    axes.set_yticklabels([f"stage {s}" + (f"\n{devices[s]}" if devices else "") for s in stages],
                         fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("milliseconds since the step began")
    axes.set_title(title or (f"measured bubble {measured_bubble(tasks):.2f}, "
                             f"the schedule's ideal {ideal_bubble(tasks):.2f}"), fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
    return path


class PipelineTimeline(keras.callbacks.Callback):
    """Records a training step of a pipeline and reports it.

    At the end of training it takes the stamps of the last full-size step
    (the last epoch's second-to-last step: the very last may hold a smaller
    remainder batch), prints the
    measured bubble next to the ideal (K-1)/(M+K-1), and writes a PNG Gantt
    chart and a Chrome trace if paths are given. The strategy must be built
    with `record_timeline=True`.

    Args:
      png: where to write the Gantt chart (None: no picture).
      trace: where to write the Chrome-trace JSON (None: no trace).
      verbose: print the bubble line.

    Attributes:
      tasks: the `Interval`s of the last step (after training).
      needs: for each task, the indices of the tasks it waited for.
      bubble: the measured bubble fraction; ideal_bubble: the ideal one.

    Example:
        >>> timeline = PipelineTimeline(png="step.png", trace="step.json")
        >>> history = tfpar.fit_distributed(model, x, y, batch_size=256, callbacks=[timeline],
        ...     strategy=tfpar.strategies.GPipe(2, microbatches=8, record_timeline=True), verbose=0)
        pipeline timeline of the last step: measured bubble ..., the schedule's ideal 0.111; ...
    """

    def __init__(self, png: str | None = None, trace: str | None = None, verbose: bool = True):
        super().__init__()
        self.png, self.trace, self.verbose = png, trace, verbose
        self.tasks: list[Interval] = []
        self.needs: list[list[int]] = []  # per task, the tasks it waited for
        self.bubble = self.ideal_bubble = None
        self._epoch, self._recent = 0, ()

    def on_train_begin(self, logs=None):
        self._epoch, self._recent = 0, ()
        if not hasattr(self.model, "last_timeline"):
            raise ValueError(
                "PipelineTimeline needs a pipelined model: train with strategy "
                "tfpar.strategies.GPipe(..., record_timeline=True). Received a model of "
                f"type {type(self.model).__name__}."
            )
        if self.model.last_timeline() is None:
            raise ValueError(
                "PipelineTimeline needs the strategy built with record_timeline=True; "
                "received a pipeline that does not record."
            )

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        # The last step of an epoch may be a smaller remainder batch, so the
        # step shown is the last epoch's second-to-last (a full batch). With
        # an unknown number of steps, every step is read and the last two
        # are kept; the earlier of them is shown.
        steps, epochs = self.params.get("steps"), self.params.get("epochs", 1)
        if steps is None:
            self._recent = (*self._recent[-1:], self.model.last_timeline())
        elif self._epoch == epochs - 1 and batch == max(steps - 2, 0):
            self._recent = (self.model.last_timeline(),)

    def on_train_end(self, logs=None):
        if not self._recent:
            return  # no step ran
        self.needs = self.model.task_needs
        self.tasks = intervals(self.model.task_order, self._recent[0], self.needs)
        self.bubble = measured_bubble(self.tasks)
        self.ideal_bubble = ideal_bubble(self.tasks, len(self.model.plan.graph.stages))
        devices = [stage.device for stage in self.model.stages]
        if self.png:
            plot(self.tasks, self.png, devices=devices,
                 title=f"measured bubble {self.bubble:.2f}, the schedule's ideal {self.ideal_bubble:.2f}")
        if self.trace:
            write_chrome_trace(self.tasks, self.trace, devices)
        if self.verbose:
            written = ", ".join(p for p in (self.png, self.trace) if p)
            print(f"pipeline timeline of the last step: measured bubble {self.bubble:.3f}, "
                  f"the schedule's ideal {self.ideal_bubble:.3f}"
                  + (f"; wrote {written}" if written else ""))


_KIND_NAMES = {"F": "forward", "B": "backward", "W": "weight gradients", "A": "all-reduce"}
_COLORS = {"F": "tab:blue", "B": "tab:orange", "W": "tab:red"}


def _union_length(spans: list[tuple[float, float]]) -> float:
    """Total length covered by possibly overlapping spans."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total
