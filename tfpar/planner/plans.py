"""`tfpar.plan`: which layout to train a model with, predicted and explained.

It measures the model's layers (`profile`) and this machine's links
(`links`, cached), predicts every layout (`search`, `cost_model`), runs a
few contrasting layouts for real to calibrate the predictions
(`calibrate`, `trials`), runs the fastest predicted few to confirm the
choice (fitting again to each), and returns a `Plan`: every candidate with
its predicted step time, peak memory per device and the reason it was chosen
or rejected. Printing a plan gives the table, best first.

Example:
    >>> devices = tfpar.configure_devices(cpu=2)
    >>> model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"),
    ...                           keras.layers.Dense(10, activation="softmax")])
    >>> model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    >>> plan = tfpar.plan(model, batch_size=64)
    >>> plan.chosen.feasible
    True
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence

import keras
import tensorflow as tf

from tfpar.core import checks, devices as devices_lib
from tfpar.core.table import format_table
from tfpar.planner import calibrate as calibrate_lib, links as links_lib, profile as profile_lib
from tfpar.planner import search, trials
from tfpar.planner.cost_model import Coefficients, Machine, gib
from tfpar.replication import device_speeds as speeds_lib

# At most this many of the fastest predicted layouts run for real before
# the choice.
CONFIRM = 3


class Plan:
    """Every layout considered for one model, batch and set of devices.

    Attributes:
      candidates: every `search.Candidate`, best first (feasible by
        predicted step time, then the rejected ones).
      chosen: the fastest feasible candidate (by measured time for the
        layouts that ran, else predicted).
      machine: the devices, speeds and memory limits planned for.
      coefficients: the cost model's calibrated coefficients (the
        defaults when not calibrated).
    """

    def __init__(self, candidates: list, chosen, machine: Machine, batch_size: int,
                 coefficients: Coefficients | None = None):
        self.candidates = search.ranked(candidates)
        self.chosen = chosen
        self.machine = machine
        self.batch_size = batch_size
        self.coefficients = coefficients or Coefficients()

    def table(self) -> str:
        """The candidates as a text table, best first."""
        rows = []
        for c in self.candidates:
            step = f"{c.predicted_step_seconds * 1e3:.2f}" if math.isfinite(c.predicted_step_seconds) else "-"
            peak = gib(max(c.predicted_peak_bytes)) if c.predicted_peak_bytes else "-"
            mark = "*" if c is self.chosen else ""
            tried = f"{c.measured_step_seconds * 1e3:.2f}" if c.measured_step_seconds is not None else ""
            rows.append((mark, c.name, step, peak, tried, "yes" if c.feasible else "no", c.reason))
        return format_table(rows, ("", "layout", "ms/step", "peak/device", "tried ms", "feasible", "why"),
                            align="left")

    def __str__(self) -> str:
        return (f"tfpar plan: batch_size {self.batch_size} on {len(self.machine.devices)} devices "
                f"{self.machine.devices}\n{self.table()}")

    def __repr__(self) -> str:
        return f"Plan(chosen={self.chosen.name!r}, candidates={len(self.candidates)})"


def plan(model: keras.Model, batch_size: int, devices: int | Sequence[str] | None = None, *,
         memory_limit: int | Sequence[int] | None = None,
         device_speeds: Sequence[float] | str | None = None, calibrate: bool = True) -> Plan:
    """Predicts every layout of `model` on `devices` and chooses the fastest
    that fits.

    Args:
      model: a compiled, built functional or Sequential model (its
        optimizer gives the optimizer state's size).
      batch_size: the global batch of the training to plan.
      devices: as for every strategy (None: every local device of the
        fastest kind).
      memory_limit: bytes per device (an int for all, or one per device);
        None: what TensorFlow reports for a GPU, no limit on CPUs.
      device_speeds: None (all devices alike), one relative speed per
        device, or "measure" (time the model on each device).
      calibrate: run up to six contrasting layouts for a few steps each
        (on a twin of the model, random data) and fit the cost model's
        coefficients to them; then, while the fastest layout is one that
        has not run, run it too (at most three) and fit again, so that the
        choice goes by measurement. Off, the predictions add the layers'
        timings as measured, which is faster but several times less
        accurate (see the README's figures).

    Returns:
      A `Plan`; `plan.chosen.strategy` is ready for `fit_distributed`.

    Raises:
      ValueError: a bad argument (the value received is named), or no
        layout fits (each candidate's reason is listed).
    """
    checks.whole_number("batch_size", batch_size)
    names = devices_lib.resolve(devices)
    if device_speeds == "measure":
        speeds = speeds_lib.measure_device_speeds(model, names, max(1, batch_size // len(names)))
    elif device_speeds is not None:
        from tfpar.replication import speed_shares

        speed_shares.check_speeds(device_speeds, len(names))
        speeds = [float(s) for s in device_speeds]
    else:
        speeds = None
    machine = Machine(names, speeds=speeds, groups=_groups(names), capacity=_capacity(names),
                      memory_limits=_limits(memory_limit, names))
    smallest = max(1, batch_size // (8 * len(names)))  # GPipe's largest M is 8 x stages
    profile = profile_lib.measure(model, batch_size, smallest_rows=smallest, device=names[0])
    links = links_lib.measure(names)
    found = search.candidates(profile, machine, links, batch_size)
    for candidate in found:
        candidate.factory = strategy_for
    coefficients = Coefficients()
    if calibrate:
        coefficients = _calibrated(model, found, batch_size, machine)
    chosen = search.choose(found)
    return Plan(found, chosen, machine, batch_size, coefficients)


def _calibrated(model: keras.Model, found: list, batch_size: int, machine: Machine) -> Coefficients:
    """Runs the anchors for real and fits the coefficients to them; then,
    while the fastest layout is one that has not run, runs it too (at most
    CONFIRM) and fits again to every layout that ran. The predictions'
    error, some 10%, is as large as the gaps between the best few, so the
    choice among them goes by measurement; and a layout that measured slower
    than predicted corrects the others like it (its siblings in another
    schedule share its terms) before the next is picked."""
    if getattr(model, "optimizer", None) is None:
        warnings.warn(f"tfpar.plan: model {model.name!r} is not compiled, so no layout can be run to "
                      "calibrate the predictions; they are uncalibrated. Compile the model first.",
                      stacklevel=3)
        return Coefficients()
    try:  # each trial trains a twin, never the caller's model
        tried = [c for c in calibrate_lib.anchors(found) if _tried(model, c, batch_size)]
    except trials.NoCopy as error:  # raised by the first trial, before it runs
        warnings.warn(f"tfpar.plan: model {model.name!r} cannot be rebuilt from its config, so no "
                      "layout can be run on a copy of it to calibrate the predictions; they are "
                      f"uncalibrated (the chosen layout trains the model itself). Cause: {error}",
                      stacklevel=3)
        return Coefficients()
    for candidate in tried:
        candidate.anchor = True
    memory_counted = all(c.measured_peak_bytes for c in tried)
    if not memory_counted:
        warnings.warn("tfpar.plan: the allocator reports no memory use, so the memory predictions are "
                      "uncalibrated (the time predictions are). On CPUs TensorFlow counts memory only "
                      "with TF_CPU_ALLOCATOR_USE_BFC=true set before it starts.", stacklevel=3)
    # With fewer than two anchors (a memory limit can leave one), the
    # confirmations still run and the fit starts once two layouts have.
    coefficients = _fitted(tried, found, machine, memory_counted)
    for _ in range(CONFIRM):
        best = next((c for c in search.ranked(found) if c.feasible), None)
        if best is None or best.measured_step_seconds is not None:
            break
        if _tried(model, best, batch_size):
            tried.append(best)
            coefficients = _fitted(tried, found, machine, memory_counted)
    if len(tried) < 2:
        warnings.warn(f"tfpar.plan: calibration needs two layouts that run; {len(tried)} did, so the "
                      "predictions are uncalibrated.", stacklevel=3)
    return coefficients


def _fitted(tried: list, found: list, machine: Machine, memory_counted: bool) -> Coefficients:
    """The coefficients that best match the layouts that ran (the defaults
    until two have); every candidate predicted again with them."""
    default = Coefficients()
    if len(tried) < 2:
        return default
    time = calibrate_lib.fit([c.prediction.terms for c in tried], [c.measured_step_seconds for c in tried],
                             prior=default.time)
    memory = default.memory
    counted = [c for c in tried if c.measured_peak_bytes]
    if memory_counted and len(counted) >= 2:
        memory = calibrate_lib.fit(
            [tuple(sum(device[j] for device in c.prediction.memory) for j in range(len(default.memory)))
             for c in counted], [c.measured_peak_bytes for c in counted], prior=default.memory)
    coefficients = Coefficients(tuple(time), tuple(memory))
    search.recombined(found, machine, coefficients)
    return coefficients


def _tried(model: keras.Model, candidate, batch_size: int) -> bool:
    """Runs `candidate` for real and records what it took; a layout tfpar
    refuses for this model becomes infeasible, with the refusal as reason."""
    try:
        # A fresh strategy: the candidate's own is for the user's training.
        seconds, peak = trials.run(model, strategy_for(candidate), batch_size,
                                   devices=candidate.options["devices"])
    except ValueError as error:
        candidate.feasible, candidate.prediction = False, None
        candidate.predicted_step_seconds, candidate.predicted_peak_bytes = float("inf"), []
        candidate.reason = f"refused when tried: {' '.join(str(error).split())[:300]}"
        return False
    # TensorFlow's default CPU allocator keeps no statistics: its peaks
    # read 0, which would calibrate memory to nothing. None: not measured.
    candidate.measured_step_seconds, candidate.measured_peak_bytes = seconds, (peak if peak > 0 else None)
    return True


def strategy_for(candidate: search.Candidate):
    """A new strategy object for the candidate's layout (its `factory`)."""
    from tfpar.strategies import DataParallel, GPipe, ModelSplit

    options = dict(candidate.options)
    if candidate.kind in ("one device", "DataParallel"):
        return DataParallel(options.pop("devices"), **options)
    devices = options.pop("devices")
    return (ModelSplit if candidate.kind == "ModelSplit" else GPipe)(devices, **options)


def _groups(names: list[str]) -> list[int]:
    """Logical CPUs are carved from one host CPU: one group. Each GPU is its
    own, unless TensorFlow split physical GPUs into more logical ones, whose
    owners it does not report: then they count as one."""
    gpus = [n for n in names if "GPU" in n.upper()]
    split_gpus = len(tf.config.list_logical_devices("GPU")) > len(tf.config.list_physical_devices("GPU"))
    groups = []
    for index, name in enumerate(names):
        if "GPU" in name.upper():
            groups.append(1 if split_gpus else 2 + gpus.index(name))
        else:
            groups.append(0)
    return groups


def _capacity(names: list[str]) -> dict:
    """How many lone devices' worth of work each group runs at once: for the
    host CPU, its cores over the threads one op may take."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = tf.config.threading.get_intra_op_parallelism_threads() or cores
    return {0: max(1.0, cores / threads), 1: 1.0}


def _limits(memory_limit, names: list[str]) -> list[int | None]:
    if memory_limit is None:
        return [_reported_limit(name) for name in names]
    limits = list(memory_limit) if isinstance(memory_limit, Sequence) else [memory_limit] * len(names)
    if len(limits) != len(names) or not all(checks.is_whole(v) for v in limits):
        raise ValueError(
            f"memory_limit must be bytes per device: one whole number for all, or one per device "
            f"({len(names)}). Received: memory_limit={memory_limit!r}.")
    return [int(v) for v in limits]


def _reported_limit(name: str) -> int | None:
    """A logical GPU's configured memory limit; None where TensorFlow sets
    none (CPUs, whole GPUs)."""
    if "GPU" not in name.upper():
        return None
    for physical in tf.config.list_physical_devices("GPU"):
        configs = tf.config.get_logical_device_configuration(physical) or []
        for config in configs:
            if config.memory_limit:
                return int(config.memory_limit) << 20
    return None
