"""Pipeline schedules: in what order each stage runs its micro-batches.

Pure Python, no TensorFlow. A task is a forward ("F") or backward ("B") pass
of one micro-batch on one stage. A schedule gives each stage its sequence of
tasks; the pipeline engine emits them in `emission_order` and chains each
stage's tasks in the graph, so a device runs them exactly in this order.

Drawn by `render` with K=3 stages and M=4 micro-batches, a forward taking
one tick and a backward two (its usual cost):

    >>> print(render(per_stage("gpipe", 3, 4)))
    stage 0 | F0 F1 F2 F3 .  .  .  .  .  .  B3 B3 B2 B2 B1 B1 B0 B0
    stage 1 | .  F0 F1 F2 F3 .  .  .  B3 B3 B2 B2 B1 B1 B0 B0 .  .
    stage 2 | .  .  F0 F1 F2 F3 B3 B3 B2 B2 B1 B1 B0 B0 .  .  .  .

GPipe runs every forward, then every backward, so stage 0 holds all M
micro-batches' activations at once. PipeDream-flush ("1f1b") lets stage s
run K-1-s warm-up forwards, then alternate one forward and one backward: it
starts the backward of micro-batch i before the forward of i+K and holds at
most K-s micro-batches, with the same arithmetic and the same result:

    >>> print(render(per_stage("1f1b", 3, 4)))
    stage 0 | F0 F1 F2 .  .  .  .  B0 B0 F3 B1 B1 .  B2 B2 .  B3 B3
    stage 1 | .  F0 F1 .  .  B0 B0 F2 B1 B1 F3 B2 B2 .  B3 B3 .  .
    stage 2 | .  .  F0 B0 B0 F1 B1 B1 F2 B2 B2 F3 B3 B3 .  .  .  .
"""

from __future__ import annotations

from typing import NamedTuple

SCHEDULES = ("gpipe", "1f1b")


# Task kinds: a micro-batch's forward and backward, and (data-parallel
# pipeline replicas) the stage's gradient all-reduce, after its last backward.
KINDS = ("F", "B", "A")


class Task(NamedTuple):
    """One pass of one micro-batch on a stage: a forward ("F") or a
    backward ("B"); or the stage's gradient all-reduce ("A", micro 0) when
    pipeline replicas train data parallel. Still a tuple, so ("F", 3)
    compares equal; prints as "F3" and parses back.

    >>> str(Task("B", 3)), Task.parse("F12") == ("F", 12), str(Task("A", 0))
    ('B3', True, 'A0')
    """

    kind: str
    micro: int

    def __str__(self) -> str:
        return f"{self.kind}{self.micro}"

    @classmethod
    def parse(cls, text: str) -> "Task":
        """The task a string such as "F3" names.

        Raises:
          ValueError: not a kind (F, B or A) followed by a micro-batch index.
        """
        if len(text) < 2 or text[0] not in KINDS or not text[1:].isdigit():
            raise ValueError(f'A task is "F", "B" or "A" and a micro-batch index, e.g. "F3". '
                             f"Received: {text!r}.")
        return cls(text[0], int(text[1:]))


def per_stage(schedule: str, num_stages: int, num_microbatches: int) -> list[list[Task]]:
    """Each stage's task sequence under `schedule`.

    Raises:
      ValueError: an unknown schedule name, or counts below 1.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {list(SCHEDULES)}. Received: schedule={schedule!r}.")
    for name, value in (("num_stages", num_stages), ("num_microbatches", num_microbatches)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1. Received: {value!r}.")
    if schedule == "gpipe":
        return [_gpipe(num_microbatches) for _ in range(num_stages)]
    return [_one_f_one_b(s, num_stages, num_microbatches) for s in range(num_stages)]


def _gpipe(m: int) -> list[Task]:
    # Backward from the last micro-batch: its forward finished last.
    return [Task("F", i) for i in range(m)] + [Task("B", i) for i in reversed(range(m))]


def _one_f_one_b(stage: int, k: int, m: int) -> list[Task]:
    warmup = min(k - 1 - stage, m)
    tasks = [Task("F", i) for i in range(warmup)]
    for i in range(m - warmup):
        tasks += [Task("F", warmup + i), Task("B", i)]
    tasks += [Task("B", i) for i in range(m - warmup, m)]
    return tasks


def emission_order(sequences: list[list[Task]]) -> list[tuple[int, Task]]:
    """A global order of (stage, task) that respects every dependency.

    F(m) on stage s needs F(m) on s-1; B(m) on s needs B(m) on s+1 (and F(m)
    on s, earlier in s's own sequence); each stage keeps its own order. The
    order follows the ideal clock (`clock`), so emission tracks execution.

    Raises:
      ValueError: the sequences deadlock (no valid order exists).
    """
    return [(stage, task) for _, stage, task in clock(sequences)]


def clock(sequences: list[list[Task]], forward_ticks: int = 1, backward_ticks: int = 2):
    """Simulates the schedule with unit task costs; returns (start, stage, task).

    Each stage starts its next task as soon as that task's inputs exist and
    the stage is free: the ideal timeline the graph chaining reproduces.
    """
    k = len(sequences)
    feeds = chain(k)
    position = [0] * k
    free_at = [0] * k
    done: dict[tuple[int, Task], int] = {}
    events = []
    remaining = sum(len(s) for s in sequences)
    while remaining:
        ready = []
        for stage in range(k):
            if position[stage] == len(sequences[stage]):
                continue
            task = sequences[stage][position[stage]]
            needs = task_needs(stage, task, feeds)
            if all(n in done for n in needs):
                start = max([free_at[stage]] + [done[n] for n in needs])
                ready.append((start, stage, task))
        if not ready:
            raise ValueError(f"The schedule deadlocks: stages stuck at {position} in {sequences}.")
        start, stage, task = min(ready)
        end = start + _ticks(task, forward_ticks, backward_ticks)
        done[(stage, task)] = end
        free_at[stage] = end
        position[stage] += 1
        remaining -= 1
        events.append((start, stage, task))
    return events


def chain(num_stages: int) -> list[list[int]]:
    """`feeds` of a plain chain of stages: stage s reads stage s-1."""
    return [[stage - 1] if stage else [] for stage in range(num_stages)]


def task_needs(stage: int, task: Task, feeds: list[list[int]]) -> list[tuple[int, Task]]:
    """The tasks whose results `task` on `stage` waits for: a forward, the
    same micro-batch's forward on each stage it reads (`feeds[stage]`); a
    backward, the micro-batch's backward on each stage that reads it, and
    its own forward. The one statement of the rules, used by the simulator
    here and by the engine (`PipelineModel.task_needs`), whose stages may
    also read past their neighbour (a skip connection).

    >>> task_needs(1, Task("B", 0), chain(3))
    [(2, Task(kind='B', micro=0)), (1, Task(kind='F', micro=0))]
    """
    kind, micro = task
    if kind == "A":  # after the stage's own last backward: its previous task
        return []
    if kind == "F":
        return [(source, Task("F", micro)) for source in feeds[stage]]
    readers = [reader for reader, sources in enumerate(feeds) if stage in sources]
    return [(reader, Task("B", micro)) for reader in readers] + [(stage, Task("F", micro))]


def render(sequences: list[list[Task]]) -> str:
    """Draws the ideal timeline of `sequences` as one text row per stage."""
    events = clock(sequences)
    ticks = max(start + _ticks(task) for start, _, task in events)
    rows = [[".  "] * ticks for _ in sequences]
    for start, stage, task in events:
        for tick in range(start, start + _ticks(task)):
            rows[stage][tick] = f"{str(task):<3}"
    return "\n".join(f"stage {i} | " + "".join(row).rstrip() for i, row in enumerate(rows))


def _ticks(task: Task, forward_ticks: int = 1, backward_ticks: int = 2) -> int:
    return forward_ticks if task[0] == "F" else backward_ticks


def bubble_fraction(num_stages: int, num_microbatches: int) -> float:
    """The ideal idle share of a fill-drain pipeline: (K-1) / (M+K-1)."""
    return (num_stages - 1) / (num_microbatches + num_stages - 1)


def ideal_speedup(num_stages: int, num_microbatches: int) -> float:
    """Ideal speedup over naive model split: K*M / (M+K-1)."""
    return num_stages * num_microbatches / (num_microbatches + num_stages - 1)


def max_in_flight(sequence: list[Task]) -> int:
    """Most micro-batches whose forward ran but backward did not, at once."""
    live = peak = 0
    for kind, _ in sequence:
        live += {"F": 1, "B": -1}.get(kind, 0)
        peak = max(peak, live)
    return peak
