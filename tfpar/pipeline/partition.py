"""Balancing a sequence of layers into contiguous pipeline stages.

Pure Python, no TensorFlow: given each layer's cost (parameters, FLOPs or
measured time) and, for mixed devices, each stage device's relative speed,
`partition` returns how many consecutive layers each stage gets so that the
slowest stage, the one that sets a pipeline's pace, is as fast as possible.

Example:
    >>> partition([1, 1, 1, 1, 4], 2)
    [4, 1]
    >>> partition([1, 1, 1, 1, 4], 2, device_speeds=[1, 4])   # stage 1 is 4x faster
    [1, 4]
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def partition(
    costs: Sequence[float],
    num_stages: int,
    *,
    device_speeds: Sequence[float] | None = None,
) -> list[int]:
    """Splits `costs` into `num_stages` contiguous, non-empty stages.

    Minimises the largest stage time, where a stage's time is the sum of its
    layers' costs divided by its device's speed. Optimal over all contiguous
    partitions (dynamic programming, O(stages x layers^2)). Among optimal
    partitions it returns the one that gives earlier stages as many layers as
    possible, so the result is deterministic.

    Args:
      costs: non-negative cost of each layer, in order.
      num_stages: number of stages, 1 <= num_stages <= len(costs).
      device_speeds: relative speed of each stage's device (e.g. [8, 1] for a
        GPU that is 8x a CPU); None means all equal.

    Returns:
      The number of layers in each stage; sums to len(costs).

    Raises:
      ValueError: a bad cost, stage count or speed, with the values received.
    """
    _check(costs, num_stages, device_speeds)
    speeds = list(device_speeds) if device_speeds is not None else [1.0] * num_stages
    prefix = [0.0]
    for cost in costs:
        prefix.append(prefix[-1] + cost)
    n = len(costs)
    # best[k][i]: the smallest possible slowest-stage time when the first i
    # layers fill the first k stages; cut[k][i]: where stage k-1 starts.
    best = [[math.inf] * (n + 1) for _ in range(num_stages + 1)]
    cut = [[0] * (n + 1) for _ in range(num_stages + 1)]
    best[0][0] = 0.0
    for k in range(1, num_stages + 1):
        speed = speeds[k - 1]
        for i in range(k, n - (num_stages - k) + 1):
            for j in range(i - 1, k - 2, -1):  # stage k-1 holds layers j..i-1
                time = max(best[k - 1][j], (prefix[i] - prefix[j]) / speed)
                if time < best[k][i] - 1e-12 * max(1.0, abs(time)):
                    best[k][i], cut[k][i] = time, j
    return _sizes(cut, num_stages, n)


def chain_order(inputs_of: Sequence[Sequence[int]]) -> list[int]:
    """A topological order of a layer graph that keeps each chain together.

    Stages are contiguous runs of one order, so the order decides what a
    split can separate. Keras lists layers by depth, which interleaves
    parallel branches (an encoder and a decoder that meet only at
    cross-attention): no cut then separates them. This order follows a chain
    as far as it goes before starting another (depth first over ready
    layers), taking ready layers in their given order.

    Args:
      inputs_of: for each layer, the indices of the layers it consumes
        (layers with none consume only model inputs).

    Returns:
      The layer indices, each after every layer it consumes.

    Raises:
      ValueError: a cycle or an index out of range.

    Example:
        >>> # two chains 0->2 and 1->3, joined by 4
        >>> chain_order([[], [], [0], [1], [2, 3]])
        [0, 2, 1, 3, 4]
    """
    n = len(inputs_of)
    waiting = [len(set(deps)) for deps in inputs_of]
    consumers: list[list[int]] = [[] for _ in range(n)]
    for node, deps in enumerate(inputs_of):
        for dep in set(deps):
            if not 0 <= dep < n:
                raise ValueError(f"Layer {node} consumes layer {dep}, which does not exist (n={n}).")
            consumers[dep].append(node)
    stack = [node for node in reversed(range(n)) if not waiting[node]]
    order = []
    while stack:
        node = stack.pop()
        order.append(node)
        ready = []
        for consumer in consumers[node]:
            waiting[consumer] -= 1
            if not waiting[consumer]:
                ready.append(consumer)
        stack.extend(sorted(ready, reverse=True))
    if len(order) != n:
        raise ValueError(f"The layer graph has a cycle through layers {sorted(set(range(n)) - set(order))}.")
    return order


def stage_times(
    costs: Sequence[float], sizes: Sequence[int], device_speeds: Sequence[float] | None = None
) -> list[float]:
    """Time of each stage for a given split: its costs' sum over its speed."""
    speeds = list(device_speeds) if device_speeds is not None else [1.0] * len(sizes)
    times, start = [], 0
    for size, speed in zip(sizes, speeds):
        times.append(sum(costs[start : start + size]) / speed)
        start += size
    return times


def check_sizes(sizes: Sequence[int], num_layers: int, num_stages: int) -> list[int]:
    """Validates an explicit balance given by the user; returns it as a list."""
    sizes = list(sizes)
    if len(sizes) != num_stages:
        raise ValueError(
            f"balance must give one layer count per stage (stages: {num_stages}, "
            f"balance: {sizes}). Give {num_stages} counts, or a cost name "
            "such as balance='flops'."
        )
    if any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in sizes):
        raise ValueError(
            f"balance must hold whole numbers >= 1 (every stage needs a layer). "
            f"Received: balance={sizes}."
        )
    if sum(sizes) != num_layers:
        raise ValueError(
            f"model and sum of balance have different length (layers: "
            f"{num_layers}, sum of balance: {sum(sizes)}). Received: balance={sizes}."
        )
    return sizes


def _sizes(cut: list[list[int]], num_stages: int, n: int) -> list[int]:
    sizes, end = [], n
    for k in range(num_stages, 0, -1):
        start = cut[k][end]
        sizes.append(end - start)
        end = start
    return sizes[::-1]


def _check(costs, num_stages, device_speeds) -> None:
    costs = list(costs)
    if not costs:
        raise ValueError("partition needs at least one layer cost. Received: costs=[].")
    bad = [c for c in costs if not isinstance(c, (int, float)) or c < 0 or c != c or c == math.inf]
    if bad:
        raise ValueError(
            f"Layer costs must be finite numbers >= 0. Received bad costs: {bad[:5]}."
        )
    if not isinstance(num_stages, int) or isinstance(num_stages, bool) or num_stages < 1:
        raise ValueError(f"num_stages must be a whole number >= 1. Received: {num_stages!r}.")
    if num_stages > len(costs):
        raise ValueError(
            f"More stages than layers: every stage needs at least one layer "
            f"(stages: {num_stages}, layers: {len(costs)}). Use at most "
            f"{len(costs)} devices, or a model with more layers."
        )
    if device_speeds is not None:
        speeds = list(device_speeds)
        if len(speeds) != num_stages or any(
            not isinstance(s, (int, float)) or not s > 0 or s == math.inf for s in speeds
        ):
            raise ValueError(
                f"device_speeds must give one finite speed > 0 per stage "
                f"(stages: {num_stages}). Received: device_speeds={speeds}."
            )
