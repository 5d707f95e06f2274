"""Fits the cost model's coefficients to a few layouts run for real.

The layers' timings come from each layer alone, in its own function; in
one training step the same ops run in one graph, where TensorFlow's
executor overlaps independent ops on the cores, a micro-batch's fixed cost
is far below a lone call's, and Keras adds its own per-step work. Rather
than guess those effects, the plan runs a handful of contrasting layouts
(`anchors`: one device, data parallel over every device, a two-stage
split, pipelines with few and many micro-batches, a hybrid) for a few
steps and fits how much each predicted term (`cost_model.TIME_TERMS`,
`MEMORY_TERMS`) really costs here: a least-squares fit of the relative
errors, drawn towards the uncalibrated coefficients (so that a term the
anchors barely vary keeps its measured value) and kept non-negative.
Pure Python.

Example:
    >>> # Two terms; what was measured took twice the first term plus the second.
    >>> terms = [(1.0, 1.0), (2.0, 1.0), (1.0, 3.0)]
    >>> measured = [2 * a + b for a, b in terms]
    >>> [round(c, 2) for c in fit(terms, measured, prior=(1.0, 1.0), strength=1e-6)]
    [2.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Sequence

# How strongly the fit is drawn towards the uncalibrated coefficients,
# relative to the anchors' errors: weak, so that six anchors decide, but
# enough to keep a term that no anchor varies from drifting.
STRENGTH = 0.05


def anchors(found: list, limit: int = 6) -> list:
    """Up to `limit` feasible candidates that vary every term: one device,
    data parallel over the most devices, a two-stage ModelSplit, two
    stages with 4 micro-batches per stage on the gpipe schedule (all of
    them in flight), the most stages with 8 per stage on 1f1b (the most
    micro-batches any candidate has, few in flight), and the smallest
    pipeline of two replicas."""
    feasible = [c for c in found if c.feasible and c.prediction is not None]

    def stages(c) -> int:
        return len(c.options.get("balance", ())) or 1

    def first(match, key=lambda c: 0):
        chosen = sorted((c for c in feasible if match(c)), key=key)
        return chosen[0] if chosen else None

    rules = [
        lambda: first(lambda c: c.kind == "one device"),
        lambda: first(lambda c: c.kind == "DataParallel", key=lambda c: -len(c.options["devices"])),
        lambda: first(lambda c: c.kind == "ModelSplit" and stages(c) == 2 and "data_parallel" not in c.options),
        # The gpipe schedule keeps all 8 micro-batches' activations, the
        # 1f1b anchors below few: memory's activation term varies too.
        lambda: first(lambda c: _pipeline(c, replicas=1, schedule="gpipe") and stages(c) == 2
                      and c.options["microbatches"] == 8),
        lambda: first(lambda c: _pipeline(c, replicas=1) and c.options["microbatches"] == 8 * stages(c),
                      key=lambda c: -stages(c)),
        lambda: first(lambda c: _pipeline(c, replicas=2), key=lambda c: c.options["microbatches"]),
    ]
    picked = []
    for rule in rules:
        candidate = rule()
        if candidate is not None and candidate not in picked:
            picked.append(candidate)
    return picked[:limit]


def _pipeline(candidate, replicas: int, schedule: str = "1f1b") -> bool:
    return (candidate.kind == "GPipe" and candidate.options.get("data_parallel", 1) == replicas
            and candidate.options.get("schedule") == schedule and not candidate.options.get("rematerialize"))


def fit(terms: Sequence[Sequence[float]], measured: Sequence[float], prior: Sequence[float], *,
        strength: float = STRENGTH) -> list[float]:
    """Non-negative coefficients c minimising the anchors' squared relative
    errors, sum_i (terms_i . c / measured_i - 1)^2, plus
    strength x sum_j (scale_j x (c_j - prior_j))^2, where scale_j is term
    j's mean share of a measurement (a coefficient counts by how much of
    the step its term explains).

    Raises:
      ValueError: a measurement that is not positive (relative errors
        need one), or terms and measurements of different lengths.
    """
    if len(terms) != len(measured) or not all(m > 0 for m in measured):
        raise ValueError(f"calibrate.fit needs one positive measurement per row of terms "
                         f"({len(terms)} rows). Received: measured={list(measured)!r}.")
    rows = [[t / m for t in row] for row, m in zip(terms, measured)]
    n = len(prior)
    scale = [sum(r[j] for r in rows) / len(rows) for j in range(n)]
    free = [j for j in range(n)]
    while True:
        solution = _solve_ridge(rows, prior, scale, strength, free)
        negative = [j for j in free if solution[j] < 0]
        if not negative:
            return solution
        free = [j for j in free if j not in negative]  # held at 0, the rest refitted


def _solve_ridge(rows, prior, scale, strength, free) -> list[float]:
    """The normal equations of the penalised fit over the `free`
    coefficients (the others are 0), solved by Gaussian elimination."""
    n = len(free)
    a = [[0.0] * n for _ in range(n)]
    b = [0.0] * n
    for r in rows:
        for p, j in enumerate(free):
            b[p] += r[j]
            for q, k in enumerate(free):
                a[p][q] += r[j] * r[k]
    for p, j in enumerate(free):
        weight = strength * max(scale[j], 1e-12) ** 2
        a[p][p] += weight
        b[p] += weight * prior[j]
    solution = _gauss(a, b)
    result = [0.0] * len(prior)
    for p, j in enumerate(free):
        result[j] = solution[p]
    return result


def _gauss(a: list[list[float]], b: list[float]) -> list[float]:
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        m[col], m[pivot] = m[pivot], m[col]
        if abs(m[col][col]) < 1e-300:
            continue  # a coefficient nothing constrains: the ridge keeps this from happening
        for r in range(n):
            if r != col:
                factor = m[r][col] / m[col][col]
                for c in range(col, n + 1):
                    m[r][c] -= factor * m[col][c]
    return [m[i][n] / m[i][i] if abs(m[i][i]) > 1e-300 else 0.0 for i in range(n)]
