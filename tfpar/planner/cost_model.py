"""Predicted step time and peak memory of a layout, from measured costs.

Pure Python. The inputs are measurements (`profile.ModelProfile`: each
layer's forward and backward seconds as a + b x rows, its weights and the
activations it keeps; `links.Links`: all-reduce and copy seconds as
latency + bytes / bandwidth) and the machine (`Machine`: each device's
speed, which devices share one physical device's cores, memory limits).

Time. A layout's step is a sum of terms (`TIME_TERMS`), each weighed by a
coefficient (`Coefficients`; `calibrate` fits them to a few layouts run for
real, since one graph overlaps and amortises what the lone measurements
cannot see):
- rows: the per-row compute, simulated task by task on the critical path;
- fixed: the fixed cost of every task (every micro-batch through every
  stage, every replica's pass), added up;
- update: the optimizer updates (every data-parallel replica updates
  every weight, a stage its own);
- exchange: the all-reduces it cannot hide; step: a per-step constant.

- Data parallel: each replica's forward and backward on its share, then
  one all-reduce of every gradient.
- Pipelines: the schedule's tasks (`schedule.clock`), each forward and
  backward of a micro-batch lasting its stage's predicted seconds, with
  the boundary copy to the next stage; a ModelSplit is one micro-batch.
  Pipeline replicas (R x K) then all-reduce each stage's gradients.
- Devices carved from one physical device (logical CPUs) share its cores:
  their work in one step cannot finish faster than `capacity` lone devices
  would do it, which bounds the simulated time from below.

Memory, per device: weights, gradients (two copies where a step holds two:
the all-reduced result next to a replica's own, a pipeline's running sum
next to a micro-batch's) and optimizer slots of what the device holds
(the state term), plus the activations kept for the backward: a replica's
share for data parallel; for a stage, the activations of the micro-batches
in flight at once (`schedule.max_in_flight`), or with rematerialisation
only their stage inputs plus one micro-batch's activations.

Example:
    >>> layer = LayerCost("dense", forward=(1e-4, 1e-6), backward=(2e-4, 2e-6),
    ...                   weight_bytes=4096, trainable_bytes=4096, activation_bytes=64, output_bytes=64)
    >>> model = ModelProfile([layer, layer], input_bytes=64, optimizer_slots=2, step_overhead=1e-3)
    >>> machine = Machine(["/cpu:0", "/cpu:1"])
    >>> links = Links(all_reduce={2: (1e-4, 1e9)}, copy=(1e-5, 1e10))
    >>> round(data_parallel(model, machine, links, 64, 2).seconds, 6)
    0.0025
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from tfpar.pipeline import partition as partition_lib, schedule as schedule_lib


@dataclasses.dataclass(frozen=True)
class LayerCost:
    """What one layer costs on a device of speed 1.

    forward, backward: seconds for a batch of n rows, a + b x n (the pair
      (a, b)), fitted to two measured batch sizes.
    weight_bytes: all its weights; trainable_bytes: the trainable ones
      (these have gradients and optimizer slots).
    activation_bytes: per sample, what its forward keeps for the backward.
    output_bytes: per sample, its output (what crosses a stage boundary).
    """
    name: str
    forward: tuple[float, float]
    backward: tuple[float, float]
    weight_bytes: int
    trainable_bytes: int
    activation_bytes: int
    output_bytes: int

    def forward_seconds(self, rows: float) -> float:
        return max(0.0, self.forward[0] + self.forward[1] * rows)

    def backward_seconds(self, rows: float) -> float:
        return max(0.0, self.backward[0] + self.backward[1] * rows)


@dataclasses.dataclass(frozen=True)
class ModelProfile:
    """A model's layers in order, with what a training step adds.

    input_bytes: per sample, the model's inputs.
    optimizer_slots: state tensors per trainable weight (Adam 2, SGD with
      momentum 1, plain SGD 0), read from the compiled optimizer.
    step_overhead: seconds a one-device step takes beyond its layers'
      forward and backward (measured: the optimizer update, dispatch).
    """
    layers: list[LayerCost]
    input_bytes: int
    optimizer_slots: int
    step_overhead: float

    def stage_bytes(self, layers: Sequence[LayerCost], gradient_copies: int = 1) -> int:
        """Weights, `gradient_copies` gradients and optimizer slots of `layers`."""
        weights = sum(l.weight_bytes for l in layers)
        trainable = sum(l.trainable_bytes for l in layers)
        return weights + trainable * (gradient_copies + self.optimizer_slots)


@dataclasses.dataclass(frozen=True)
class Links:
    """Measured communication: all-reduce among R devices as
    {R: (latency seconds, bytes per second)}, device-to-device copy as
    (latency seconds, bytes per second)."""
    all_reduce: dict
    copy: tuple[float, float]

    def all_reduce_seconds(self, replicas: int, nbytes: float) -> float:
        if replicas <= 1 or nbytes <= 0:
            return 0.0
        if replicas in self.all_reduce:
            latency, bandwidth = self.all_reduce[replicas]
        else:  # the nearest measured group size, scaled as a ring scales
            nearest = min(self.all_reduce, key=lambda r: abs(r - replicas))
            latency, bandwidth = self.all_reduce[nearest]
            latency *= (replicas - 1) / max(nearest - 1, 1)
            bandwidth *= (2 * (nearest - 1) / nearest) / (2 * (replicas - 1) / replicas)
        return latency + nbytes / bandwidth

    def copy_seconds(self, nbytes: float) -> float:
        return self.copy[0] + nbytes / self.copy[1] if nbytes > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class Machine:
    """The devices a plan may use.

    devices: names, in order. speeds: relative speed of each (1 = the
      device the profile was measured on). groups: which physical device
      each one is carved from (logical CPUs of one CPU share one group);
      capacity: per group, how many of its devices run at full speed at
      once (cores / threads per op on a CPU; 1 for a GPU's logical
      devices). memory_limits: bytes per device, None for no limit.
    """
    devices: list[str]
    speeds: list[float] | None = None
    groups: list[int] | None = None
    capacity: dict | None = None
    memory_limits: list[int | None] | None = None

    def speed(self, index: int) -> float:
        return self.speeds[index] if self.speeds else 1.0

    def group(self, index: int) -> int:
        return self.groups[index] if self.groups else index

    def group_capacity(self, group: int) -> float:
        return (self.capacity or {}).get(group, 1.0)

    def limit(self, index: int) -> int | None:
        return self.memory_limits[index] if self.memory_limits else None


# The time terms of a prediction, in this order, and the memory terms.
TIME_TERMS = ("rows", "fixed", "update", "exchange", "step")
MEMORY_TERMS = ("state", "activations", "batch")


@dataclasses.dataclass(frozen=True)
class Coefficients:
    """How the terms of a prediction add up to seconds and bytes.

    `time[i]` multiplies the time term `TIME_TERMS[i]`; `memory` the
    memory terms. The defaults take the measurements as they are: each
    term counted once, no per-step constant. `calibrate.fit` replaces them
    with the ones that best match a few layouts run for real.
    """
    time: tuple = (1.0, 1.0, 1.0, 1.0, 0.0)
    memory: tuple = (1.0, 1.0, 0.0)


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Predicted seconds per step and peak bytes on each used device.

    terms: the time terms (`TIME_TERMS`), in seconds: the per-row compute
      on the critical path (the schedule's span or the shared cores'
      bound), the fixed per-task compute of every task added up, the
      optimizer updates, the all-reduces, and 1 second for a per-step
      constant.
    memory: per device, (state bytes: weights, gradients and optimizer
      slots; activation bytes: what the backward keeps, for the
      micro-batches the schedule has in flight at once; batch bytes: its
      widest layer's output for its replica's whole batch, a measure of
      the step's temporaries that no schedule frees, counted 0 until
      calibrated).
    """
    seconds: float
    peak_bytes: list[int]
    terms: tuple = ()
    memory: tuple = ()

    def recombined(self, coefficients: Coefficients) -> "Prediction":
        """The same terms, added up with other coefficients."""
        seconds = sum(c * t for c, t in zip(coefficients.time, self.terms))
        peaks = [int(sum(c * t for c, t in zip(coefficients.memory, device))) for device in self.memory]
        return Prediction(seconds, peaks, self.terms, self.memory)


def _combined(terms, memory, coefficients: Coefficients | None) -> Prediction:
    return Prediction(0.0, [], tuple(terms), tuple(memory)).recombined(coefficients or Coefficients())


def shared_bound(machine: Machine, devices: Sequence[int], work: Sequence[float]) -> float:
    """The least time the devices' work (seconds each, at full speed) can
    take when devices of one physical group share its capacity."""
    by_group: dict[int, float] = {}
    for index, seconds in zip(devices, work):
        by_group[machine.group(index)] = by_group.get(machine.group(index), 0.0) + seconds
    return max((total / machine.group_capacity(group) for group, total in by_group.items()), default=0.0)


def _busiest(machine: Machine, devices: Sequence[int], work: Sequence[float]) -> float:
    """The slowest device's work, or the shared cores' bound if higher."""
    return max(max(work, default=0.0), shared_bound(machine, devices, work))


def data_parallel(model: ModelProfile, machine: Machine, links: Links, batch_size: int, replicas: int,
                  shares: Sequence[int] | None = None, coefficients: Coefficients | None = None) -> Prediction:
    """`replicas` replicas on the machine's first devices, each on its share
    of the batch (equal unless `shares` gives rows per replica)."""
    shares = list(shares) if shares is not None else [batch_size / replicas] * replicas
    used = range(replicas)
    slope = sum(l.forward[1] + l.backward[1] for l in model.layers)
    fixed = sum(l.forward[0] + l.backward[0] for l in model.layers)
    rows = _busiest(machine, used, [slope * n / machine.speed(r) for r, n in enumerate(shares)])
    # Each replica's pass pays the layers' fixed costs; measured in one
    # graph, they add up rather than overlap (see `pipeline`).
    per_task = sum(fixed / machine.speed(r) for r in used)
    # Every replica updates every weight.
    update = _busiest(machine, used, [model.step_overhead / machine.speed(r) for r in used])
    gradients = sum(l.trainable_bytes for l in model.layers)
    exchange = links.all_reduce_seconds(replicas, gradients)
    # With replicas, the all-reduce's result is a second copy of the gradients.
    state = model.stage_bytes(model.layers, gradient_copies=2 if replicas > 1 else 1)
    kept = sum(l.activation_bytes for l in model.layers) + model.input_bytes
    widest = max((l.output_bytes for l in model.layers), default=0)
    return _combined((rows, per_task, update, exchange, 1.0),
                     [(state, kept * n, widest * n) for n in shares], coefficients)


def pipeline(model: ModelProfile, machine: Machine, links: Links, batch_size: int, sizes: Sequence[int], *,
             microbatches: int = 1, schedule: str = "gpipe", rematerialize: bool = False,
             replicas: int = 1, coefficients: Coefficients | None = None) -> Prediction:
    """A pipeline of `len(sizes)` stages (`sizes[s]` consecutive layers each)
    on the first R x K devices, replica r's stage s on device r x K + s:
    ModelSplit with microbatches=1, GPipe otherwise."""
    k = len(sizes)
    bounds = [sum(sizes[:s]) for s in range(k + 1)]
    stages = [model.layers[bounds[s]:bounds[s + 1]] for s in range(k)]
    rows = batch_size / (replicas * microbatches)
    sequences = schedule_lib.per_stage(schedule, k, microbatches)
    split = schedule_lib.is_split(sequences)
    used = [r * k + s for r in range(replicas) for s in range(k)]

    def span(part: int) -> float:
        """The schedule's critical path and the shared cores' bound, with
        each task lasting its per-row part (part 1, with the boundary
        copy's bytes) or its fixed part (part 0, with the copy's latency)."""
        forward, backward = [], []
        for s, layers in enumerate(stages):
            speed = machine.speed(s)
            f = sum(l.forward[part] for l in layers) * (rows if part else 1) / speed
            b = sum(l.backward[part] for l in layers) * (rows if part else 1) / speed
            if rematerialize:
                b += f  # the forward again, inside the backward
            # The activations arriving from the stage before, and the
            # gradient of its output sent back: a copy each.
            inbound = 0.0
            if s:
                nbytes = stages[s - 1][-1].output_bytes * rows
                inbound = nbytes / links.copy[1] if part else (links.copy[0] if nbytes > 0 else 0.0)
            forward.append(f + inbound)
            backward.append(b + inbound)

        work = [microbatches * (forward[s] + backward[s]) for s in range(k)]
        if not part:
            # Every task's fixed cost, added up: a micro-batch's ops cost
            # their dispatch wherever they run, and these overheads were
            # measured to add up across the stages, not to overlap.
            return sum(work) * replicas

        def duration(stage: int, task) -> float:
            kind = task[0]
            if kind == "F":
                return forward[stage]
            if not split:
                return backward[stage]
            if stage == 0:  # no input gradient: the whole backward is W
                return 0.0 if kind == "B" else backward[0]
            return backward[stage] / 2

        events = schedule_lib.clock(sequences, duration)
        end = max(start + duration(stage, task) for start, stage, task in events)
        return max(end, shared_bound(machine, used, work * replicas))

    trainable = sum(l.trainable_bytes for l in model.layers) or 1
    # Each stage updates its own weights, in every pipeline replica.
    update = _busiest(machine, used, [
        model.step_overhead * sum(l.trainable_bytes for l in layers) / trainable / machine.speed(s)
        for s, layers in enumerate(stages)] * replicas)
    exchange = max((links.all_reduce_seconds(replicas, sum(l.trainable_bytes for l in layers))
                    for layers in stages), default=0.0)
    memory = []
    for s, layers in enumerate(stages):
        in_flight = schedule_lib.max_in_flight(sequences[s])
        inputs = stages[s - 1][-1].output_bytes if s else model.input_bytes
        kept = sum(l.activation_bytes for l in layers)
        def activations(live: int) -> float:
            if rematerialize:
                return (live * inputs + kept) * rows
            return live * (inputs + kept) * rows

        widest = max((l.output_bytes for l in layers), default=0) * batch_size / replicas
        # The running sum over micro-batches, and each micro-batch's gradients.
        memory.append((model.stage_bytes(layers, gradient_copies=2), activations(in_flight), widest))
    return _combined((span(1), span(0), update, exchange, 1.0), memory * replicas, coefficients)


def balanced_sizes(model: ModelProfile, stages: int, rows: float, speeds: Sequence[float] | None = None) -> list[int]:
    """Layers per stage that minimise the slowest stage's predicted time."""
    costs = [l.forward_seconds(rows) + l.backward_seconds(rows) for l in model.layers]
    return partition_lib.partition(costs, stages, device_speeds=speeds)


def gib(nbytes: float) -> str:
    """Bytes as a short readable size: 3.1 GiB, 12.0 MiB, 512 KiB."""
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{int(nbytes)} B"
