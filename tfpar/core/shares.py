"""One batch's rows per replica, proportional to the replicas' speeds.

Pure Python: the planner predicts with it, and the data-parallel input
pipeline (`tfpar.replication.speed_shares`) cuts batches by the same rule.

Example:
    >>> shares(8, [3, 1])
    [6, 2]
    >>> shares(5, [1, 1, 1])
    [2, 1, 2]
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def shares(count: int, speeds: Sequence[float]) -> list[int]:
    """Rows of a `count`-row batch per replica, proportional to `speeds`.

    Cumulative rounding: replica r ends at round(count x (s_0 + ... + s_r)
    / sum(s)), so the shares add up to `count` and each is within one row
    of its exact proportion. The same rule runs in the input pipeline
    (`split_dataset`).
    """
    total, bounds = float(sum(speeds)), [0]
    for r in range(1, len(speeds) + 1):
        # The same float operations as the input pipeline's, in float64.
        bounds.append(math.floor(count * (sum(speeds[:r]) / total) + 0.5))
    return [b - a for a, b in zip(bounds, bounds[1:])]
