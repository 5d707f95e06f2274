"""Every layout the planner considers, predicted, ranked and explained.

Pure Python over the cost model: for each layout (one device, data
parallel over R devices, ModelSplit and GPipe over K stages with M
micro-batches, each schedule, with and without rematerialisation, and
R x K hybrids), a `Candidate` with its predicted step time, its peak bytes
per device, whether it is feasible and why it was chosen or rejected.

Example:
    >>> from tfpar.planner.cost_model import LayerCost, Links, Machine, ModelProfile
    >>> # Time per row dominates each layer's fixed cost, so micro-batches
    >>> # overlap well; one device does not fit in 48 MiB.
    >>> layer = LayerCost("dense", (1e-5, 1e-5), (2e-5, 2e-5), 4 << 20, 4 << 20, 4096, 4096)
    >>> model = ModelProfile([layer] * 4, input_bytes=64, optimizer_slots=2, step_overhead=1e-3)
    >>> machine = Machine(["/cpu:0", "/cpu:1"], memory_limits=[48 << 20, 48 << 20])
    >>> links = Links({2: (1e-4, 1e9)}, (1e-5, 1e10))
    >>> chosen = choose(candidates(model, machine, links, batch_size=64))
    >>> chosen.name, chosen.feasible
    ('GPipe(2, M=4, zb1)', True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from tfpar.core import shares as shares_lib
from tfpar.pipeline import schedule as schedule_lib
from tfpar.planner import cost_model
from tfpar.planner.cost_model import Coefficients, Links, Machine, ModelProfile, Prediction, gib


@dataclasses.dataclass
class Candidate:
    """One layout: what it is, what it is predicted to cost, and why.

    Attributes:
      name: short readable layout, e.g. "GPipe(2, M=8, 1f1b)".
      kind: "one device", "DataParallel", "ModelSplit" or "GPipe".
      options: the strategy's arguments (devices, microbatches, ...).
      predicted_step_seconds: predicted seconds per training step.
      predicted_peak_bytes: predicted peak bytes on each device it uses.
      feasible: whether it can run (divides the batch, fits in memory).
      reason: why it was chosen, or why not.
      prediction: the cost model's terms behind the two predictions.
      measured_step_seconds, measured_peak_bytes: for the layouts the
        plan ran for real, what they took. The choice ranks a layout
        that ran by its measured time.
      anchor: whether it ran to calibrate the cost model (the others
        that ran were the fastest predicted, run to confirm the choice).
      factory: makes the strategy from the candidate (`plans` sets it).
    """
    name: str
    kind: str
    options: dict
    predicted_step_seconds: float
    predicted_peak_bytes: list[int]
    feasible: bool = True
    reason: str = ""
    prediction: Prediction | None = dataclasses.field(default=None, repr=False, compare=False)
    measured_step_seconds: float | None = None
    measured_peak_bytes: int | None = None
    anchor: bool = False
    factory: Callable | None = dataclasses.field(default=None, repr=False, compare=False)
    _strategy: object = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def strategy(self):
        """The ready strategy object, made by `factory(candidate)` when first
        asked for (a strategy holds devices and collective keys)."""
        if self._strategy is None and self.factory is not None:
            self._strategy = self.factory(self)
        return self._strategy


def candidates(model: ModelProfile, machine: Machine, links: Links, batch_size: int) -> list[Candidate]:
    """Every layout over the machine's devices, predicted; infeasible ones
    keep their reason (`feasible=False`)."""
    n = len(machine.devices)
    layers = len(model.layers)
    found = [_one_device(model, machine, links, batch_size)]
    for replicas in range(2, n + 1):
        found.append(_data_parallel(model, machine, links, batch_size, replicas))
    for replicas in range(1, n // 2 + 1):
        for stages in range(2, min(n // replicas, layers) + 1):
            found.extend(_pipelines(model, machine, links, batch_size, stages, replicas))
    check_memory(found, machine)
    return found


def recombined(found: list[Candidate], machine: Machine, coefficients: Coefficients) -> None:
    """Predicts every candidate again from its terms with `coefficients`
    (calibrated ones), and checks memory again."""
    for candidate in found:
        if candidate.prediction is not None:
            prediction = candidate.prediction.recombined(coefficients)
            candidate.prediction = prediction
            candidate.predicted_step_seconds = prediction.seconds
            candidate.predicted_peak_bytes = prediction.peak_bytes
    check_memory(found, machine)


def check_memory(found: list[Candidate], machine: Machine) -> None:
    """Marks the candidates that divide the batch but do not fit in memory
    (and those that fit again after a new prediction) with their reason."""
    for candidate in found:
        if candidate.prediction is None:
            continue  # rejected before predicting: does not divide the batch
        over = _over_limit(machine, candidate)
        if over:
            candidate.feasible, candidate.reason = False, over
        elif not candidate.feasible:
            candidate.feasible, candidate.reason = True, ""


def choose(found: list[Candidate]) -> Candidate:
    """Marks the fastest feasible candidate as chosen (fewer devices break a
    tie) and gives every other feasible one its reason; returns it.

    Raises:
      ValueError: no candidate is feasible (every reason is listed).
    """
    feasible = [c for c in found if c.feasible]
    if not feasible:
        reasons = "; ".join(f"{c.name}: {c.reason}" for c in found)
        raise ValueError(f"No layout fits: {reasons}. Use more devices, a smaller batch_size or a "
                         "higher memory_limit.")
    ranked = sorted(feasible, key=_rank)
    best = ranked[0]
    runner_up = ranked[1] if len(ranked) > 1 else None
    best.reason = f"fastest feasible: {_step(best)}"
    if runner_up is not None:
        best.reason += f", {expected_seconds(runner_up) / expected_seconds(best):.2f}x faster than {runner_up.name}"
    for other in ranked[1:]:
        other.reason = (f"slower: {_step(other)}, "
                        f"{expected_seconds(other) / expected_seconds(best):.2f}x {best.name}")
    return best


def ranked(found: list[Candidate]) -> list[Candidate]:
    """Best first: feasible by expected time, then the rejected ones."""
    return sorted(found, key=lambda c: (not c.feasible, *_rank(c)))


def expected_seconds(candidate: Candidate) -> float:
    """What the choice ranks by: a layout's measured step time if it ran
    (a measurement beats a prediction), else its predicted one."""
    if candidate.measured_step_seconds is not None:
        return candidate.measured_step_seconds
    return candidate.predicted_step_seconds


def _step(candidate: Candidate) -> str:
    predicted = f"{candidate.predicted_step_seconds * 1e3:.1f} ms/step predicted"
    if candidate.measured_step_seconds is None:
        return predicted
    return f"{candidate.measured_step_seconds * 1e3:.1f} ms/step measured ({predicted})"


def _rank(candidate: Candidate):
    return expected_seconds(candidate), len(candidate.predicted_peak_bytes)


def _one_device(model, machine, links, batch_size) -> Candidate:
    prediction = cost_model.data_parallel(model, machine, links, batch_size, 1)
    return _candidate("one device", "one device", {"devices": machine.devices[:1]}, prediction)


def _data_parallel(model, machine, links, batch_size, replicas) -> Candidate:
    options = {"devices": machine.devices[:replicas]}
    name = f"DataParallel({replicas})"
    speeds = machine.speeds[:replicas] if machine.speeds else None
    shares = None
    if speeds and len(set(speeds)) > 1:
        shares = shares_lib.shares(batch_size, speeds)
        options["device_speeds"] = list(speeds)
        name = f"DataParallel({replicas}, shares {':'.join(str(s) for s in shares)})"
    elif batch_size % replicas:
        return _rejected(name, "DataParallel", options,
                         f"batch_size {batch_size} is not divisible by {replicas} replicas")
    prediction = cost_model.data_parallel(model, machine, links, batch_size, replicas, shares)
    return _candidate(name, "DataParallel", options, prediction)


def _pipelines(model, machine, links, batch_size, stages, replicas) -> list[Candidate]:
    found = []
    devices = machine.devices[:stages * replicas]
    speeds = [min(machine.speed(r * stages + s) for r in range(replicas)) for s in range(stages)]
    hybrid = f"{replicas}x{stages}" if replicas > 1 else f"{stages}"
    layouts = [("ModelSplit", 1, "gpipe", False)]
    for m in (stages, 2 * stages, 4 * stages, 8 * stages):
        for schedule in schedule_lib.SCHEDULES:
            for remat in (False, True):
                layouts.append(("GPipe", m, schedule, remat))
    for kind, m, schedule, remat in layouts:
        name = (f"ModelSplit({hybrid})" if kind == "ModelSplit" else
                f"GPipe({hybrid}, M={m}, {schedule}{', remat' if remat else ''})")
        rows = batch_size / (replicas * m)
        sizes = cost_model.balanced_sizes(model, stages, rows, speeds if len(set(speeds)) > 1 else None)
        options = {"devices": devices, "balance": sizes}
        if replicas > 1:
            options["data_parallel"] = replicas
        if speeds and len(set(speeds)) > 1:
            options["device_speeds"] = speeds
        if kind == "GPipe":
            options.update(microbatches=m, schedule=schedule, rematerialize=remat)
        if batch_size % (replicas * m):
            what = f"{replicas} replicas x {m} micro-batches" if replicas > 1 else f"{m} micro-batches"
            found.append(_rejected(name, kind, options, f"batch_size {batch_size} is not divisible by {what}"))
            continue
        prediction = cost_model.pipeline(model, machine, links, batch_size, sizes, microbatches=m,
                                         schedule=schedule, rematerialize=remat, replicas=replicas)
        found.append(_candidate(name, kind, options, prediction))
    return found


def _candidate(name, kind, options, prediction: Prediction) -> Candidate:
    return Candidate(name, kind, options, prediction.seconds, prediction.peak_bytes, prediction=prediction)


def _rejected(name, kind, options, reason) -> Candidate:
    return Candidate(name, kind, options, float("inf"), [], feasible=False, reason=reason)


def _over_limit(machine: Machine, candidate: Candidate) -> str:
    """Why the candidate does not fit in memory, or "" when it does."""
    for index, peak in enumerate(candidate.predicted_peak_bytes):
        limit = machine.limit(index)
        if limit is not None and peak > limit:
            return f"needs {gib(peak)} on {machine.devices[index]}, limit {gib(limit)}"
    return ""
