"""Pipeline schedules: in what order each stage runs its micro-batches.

Pure Python, no TensorFlow. A task is a forward ("F") or backward ("B") pass
of one micro-batch on one stage. A schedule gives each stage its sequence of
tasks; `emission_order` puts them in one global order, and `step_order`
makes the whole program of a training step from it: every pipeline
replica's tasks, and each stage's gradient all-reduce ("A"). The pipeline
engine emits exactly that program and chains each stage's tasks in the
graph, so a device runs them exactly in this order.

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

Zero bubble ("zb1", ZB-H1 of Qi et al., 2024) splits each backward in two:
B, the gradient of the stage's inputs, which the stage upstream waits for,
and W, the gradient of its weights, which nobody waits for. B runs as soon
as it can; W fills the slots where the stage would otherwise wait. Each
stage holds at most K micro-batches (the most 1F1B's first stage holds),
and the idle share falls from 1F1B's (K-1)/(M+K-1). Stage 0 has no input
gradient to send: its B is empty (not drawn) and its W the whole backward.

    >>> print(render(per_stage("zb1", 2, 4)))
    stage 0 | F0 F1 .  W0 W0 F2 W1 W1 F3 W2 W2 W3 W3
    stage 1 | .  F0 B0 F1 B1 W0 F2 B2 W1 F3 B3 W2 W3
    >>> round(ideal_bubble(per_stage("1f1b", 2, 8)), 3), round(ideal_bubble(per_stage("zb1", 2, 8)), 3)
    (0.111, 0.04)
"""

from __future__ import annotations

from typing import NamedTuple

SCHEDULES = ("gpipe", "1f1b", "zb1")


# Task kinds: a micro-batch's forward and backward ("zb1": the backward's
# input-gradient half, W its weight-gradient half), and (data-parallel
# pipeline replicas) the stage's gradient all-reduce, after its last backward.
KINDS = ("F", "B", "W", "A")


class Task(NamedTuple):
    """One pass of one micro-batch on a stage: a forward ("F"), a backward
    ("B"; under "zb1" only its input gradients, "W" its weight gradients);
    or the stage's gradient all-reduce ("A", micro 0) when
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
          ValueError: not a kind (F, B, W or A) followed by a micro-batch index.
        """
        if len(text) < 2 or text[0] not in KINDS or not text[1:].isdigit():
            raise ValueError(f'A task is "F", "B", "W" or "A" and a micro-batch index, e.g. "F3". '
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
    if schedule == "zb1":
        return _zero_bubble(num_stages, num_microbatches)
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


def _zero_bubble(k: int, m: int) -> list[list[Task]]:
    # List scheduling on the unit clock: whenever a stage is free it starts,
    # of the tasks whose inputs exist, the one that starts earliest; on a
    # tie a B (someone upstream waits for it), then an F (unless the stage
    # already holds K micro-batches' activations, freed by their W), then a
    # W (nobody waits for it).
    sequences = [[] for _ in range(k)]
    done: dict[tuple[int, Task], int] = {}
    free_at = [0] * k
    count = [{"F": 0, "B": 0, "W": 0} for _ in range(k)]
    priority = {"B": 0, "F": 1, "W": 2}
    for _ in range(3 * k * m):
        best = None
        for stage in range(k):
            n = count[stage]
            options = []
            if n["B"] < n["F"]:
                options.append(Task("B", n["B"]))
            if n["F"] < m and n["F"] - n["W"] < k:
                options.append(Task("F", n["F"]))
            if n["W"] < n["B"]:
                options.append(Task("W", n["W"]))
            for task in options:
                needs = task_needs(stage, task, chain(k))
                if all(need in done for need in needs):
                    start = max([free_at[stage]] + [done[need] for need in needs])
                    key = (start, priority[task.kind], stage)
                    if best is None or key < best[0]:
                        best = (key, stage, task)
        (start, _, _), stage, task = best
        done[(stage, task)] = free_at[stage] = start + ticks(task, True, stage)
        count[stage][task.kind] += 1
        sequences[stage].append(task)
    return sequences


def emission_order(sequences: list[list[Task]]) -> list[tuple[int, Task]]:
    """A global order of (stage, task) that respects every dependency.

    F(m) on stage s needs F(m) on s-1; B(m) on s needs B(m) on s+1 (and F(m)
    on s, earlier in s's own sequence); W(m), B(m) on s; each stage keeps its
    own order. The
    order follows the ideal clock (`clock`), so emission tracks execution.

    Raises:
      ValueError: the sequences deadlock (no valid order exists).
    """
    return [(stage, task) for _, stage, task in clock(sequences)]


def step_order(schedule: str, num_stages: int, num_microbatches: int, replicas: int = 1,
               all_reduce: bool = False) -> list[tuple[int, Task]]:
    """Every task of a training step, as (stage, task) in the order the
    engine runs them and the timeline records them; stage r x K + s is
    stage s of replica r.

    Each replica runs the `emission_order` of `schedule`, replica after
    replica. With `all_reduce` (replicas trained data parallel, in this
    process or across workers), each stage's gradients are then summed
    across the replicas: an "A" task per replica and stage, the last
    stage's first, as the backward pass frees them. The A tasks follow every
    other task, not just their stage's last: a shared layer's weights, held
    by the first stage that uses them, also sum the gradients of later
    stages' tasks, and a stage's last task can come before a later stage's
    (under "zb1", stage 0's last W before stage 1's). In the graph an A
    task waits only for its stage's previous task (`task_needs`) and for
    the gradients it sums.

    >>> [f"{stage}:{task}" for stage, task in step_order("gpipe", 2, 1, replicas=2, all_reduce=True)]
    ['0:F0', '1:F0', '1:B0', '0:B0', '2:F0', '3:F0', '3:B0', '2:B0', '1:A0', '3:A0', '0:A0', '2:A0']
    """
    base = emission_order(per_stage(schedule, num_stages, num_microbatches))
    order = [(r * num_stages + stage, task) for r in range(replicas) for stage, task in base]
    if all_reduce:
        order += [(r * num_stages + stage, Task("A", 0))
                  for stage in reversed(range(num_stages)) for r in range(replicas)]
    return order


def clock(sequences: list[list[Task]], duration=None):
    """Simulates the schedule; returns (start, stage, task) of every task.

    By default on the unit clock: a forward takes one tick and a backward
    two, or one each for its B and W halves when split. `duration(stage,
    task)` gives other lengths (the planner's predicted seconds). Each
    stage starts its next task as soon as that task's inputs exist and the
    stage is free: the ideal timeline the graph chaining reproduces.
    """
    k = len(sequences)
    feeds = chain(k)
    split = is_split(sequences)
    if duration is None:
        duration = lambda stage, task: ticks(task, split, stage)  # noqa: E731
    position = [0] * k
    free_at = [0] * k
    done: dict[tuple[int, Task], float] = {}
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
        end = start + duration(stage, task)
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
    its own forward; a weight half W, its B; an all-reduce, none but the
    stage's previous task, which every task follows. The one statement of
    the rules, used by the simulator here and by the engine
    (`PipelineModel.task_needs`), whose stages may also read past their
    neighbour (a skip connection).

    >>> task_needs(1, Task("B", 0), chain(3))
    [(2, Task(kind='B', micro=0)), (1, Task(kind='F', micro=0))]
    """
    kind, micro = task
    if kind == "A":
        return []
    if kind == "W":
        return [(stage, Task("B", micro))]
    if kind == "F":
        return [(source, Task("F", micro)) for source in feeds[stage]]
    readers = [reader for reader, sources in enumerate(feeds) if stage in sources]
    return [(reader, Task("B", micro)) for reader in readers] + [(stage, Task("F", micro))]


def render(sequences: list[list[Task]]) -> str:
    """Draws the ideal timeline of `sequences` as one text row per stage
    (a task of no length, stage 0's B under "zb1", is not drawn)."""
    events = clock(sequences)
    split = is_split(sequences)
    length = max(start + ticks(task, split, stage) for start, stage, task in events)
    rows = [[".  "] * length for _ in sequences]
    for start, stage, task in events:
        for tick in range(start, start + ticks(task, split, stage)):
            rows[stage][tick] = f"{str(task):<3}"
    return "\n".join(f"stage {i} | " + "".join(row).rstrip() for i, row in enumerate(rows))


def is_split(sequences: list[list[Task]]) -> bool:
    """Whether the backwards are split into B and W tasks ("zb1")."""
    return any(task[0] == "W" for sequence in sequences for task in sequence)


def ticks(task: Task, split: bool = False, stage: int = 1) -> int:
    """A task's length on the unit clock: a forward 1, a whole backward 2,
    a split backward's B and W 1 each, except on stage 0: the model's inputs
    need no gradient, so its B is empty and its W the whole backward."""
    if task[0] == "F" or not split:
        return 1 if task[0] == "F" else 2
    if stage == 0:
        return 0 if task[0] == "B" else 2
    return 1


def ideal_bubble(sequences: list[list[Task]]) -> float:
    """The idle share of the step on the unit clock: 1 - busy / (K x span).

    For "gpipe" and "1f1b" it is (K-1)/(M+K-1) (`bubble_fraction`).

    >>> round(ideal_bubble(per_stage("gpipe", 4, 4)), 6) == round(bubble_fraction(4, 4), 6)
    True
    """
    events = clock(sequences)
    split = is_split(sequences)
    span = max(start + ticks(task, split, stage) for start, stage, task in events)
    busy = sum(ticks(task, split, stage) for _, stage, task in events)
    return 1.0 - busy / (len(sequences) * span)


def bubble_fraction(num_stages: int, num_microbatches: int) -> float:
    """The ideal idle share of a fill-drain pipeline: (K-1) / (M+K-1)."""
    return (num_stages - 1) / (num_microbatches + num_stages - 1)


def ideal_speedup(num_stages: int, num_microbatches: int) -> float:
    """Ideal speedup over naive model split: K*M / (M+K-1)."""
    return num_stages * num_microbatches / (num_microbatches + num_stages - 1)


def max_in_flight(sequence: list[Task]) -> int:
    """Most micro-batches whose forward ran but backward did not, at once
    (split backwards: whose W did not; a B alone frees nothing)."""
    release = "W" if any(task[0] == "W" for task in sequence) else "B"
    live = peak = 0
    for kind, _ in sequence:
        live += 1 if kind == "F" else -1 if kind == release else 0
        peak = max(peak, live)
    return peak
