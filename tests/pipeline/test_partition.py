"""partition is optimal: checked against brute force on random inputs."""

import itertools
import math
import random

import pytest

from tfpar.pipeline.partition import check_sizes, partition, stage_times


def brute_force(costs, stages, speeds=None):
    """The smallest slowest-stage time over every contiguous split."""
    best = math.inf
    for cuts in itertools.combinations(range(1, len(costs)), stages - 1):
        bounds = (0, *cuts, len(costs))
        sizes = [b - a for a, b in zip(bounds, bounds[1:])]
        best = min(best, max(stage_times(costs, sizes, speeds)))
    return best


@pytest.mark.parametrize("seed", range(300))
def test_matches_brute_force_on_random_inputs(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 10)
    stages = rng.randint(1, n)
    costs = [rng.choice([0, rng.randint(1, 9), rng.random() * 100]) for _ in range(n)]
    speeds = [rng.choice([1, 2, 8, 0.5, rng.random() + 0.1]) for _ in range(stages)] if seed % 2 else None
    sizes = partition(costs, stages, device_speeds=speeds)
    assert len(sizes) == stages and sum(sizes) == n and min(sizes) >= 1
    got = max(stage_times(costs, sizes, speeds))
    assert math.isclose(got, brute_force(costs, stages, speeds), rel_tol=1e-9, abs_tol=1e-12)


def test_examples():
    assert partition([1, 1, 1, 1], 2) == [2, 2]
    assert partition([1, 1, 1, 1, 4], 2) == [4, 1]
    assert partition([1, 1, 1, 1, 4], 2, device_speeds=[1, 4]) == [1, 4]
    assert partition([5], 1) == [1]
    assert partition([0, 0, 0], 3) == [1, 1, 1]
    # A GPU 8x faster than the CPU takes the bulk of the work.
    assert partition([1] * 9, 2, device_speeds=[8, 1]) == [8, 1]


def test_more_stages_than_layers():
    with pytest.raises(ValueError, match=r"More stages than layers.*stages: 4, layers: 3"):
        partition([1, 2, 3], 4)


@pytest.mark.parametrize("costs, stages, speeds, message", [
    ([], 1, None, "at least one layer"),
    ([1, -2], 1, None, r"finite numbers >= 0.*-2"),
    ([1, float("nan")], 1, None, "finite numbers"),
    ([1, 2], 0, None, "num_stages must be a whole number >= 1"),
    ([1, 2], 2, [1], r"one finite speed > 0 per stage \(stages: 2\)"),
    ([1, 2], 2, [1, 0], "device_speeds"),
])
def test_bad_input(costs, stages, speeds, message):
    with pytest.raises(ValueError, match=message):
        partition(costs, stages, device_speeds=speeds)


def test_check_sizes():
    assert check_sizes((2, 3), 5, 2) == [2, 3]
    with pytest.raises(ValueError, match=r"different length \(layers: 5, sum of balance: 4\)"):
        check_sizes([2, 2], 5, 2)
    with pytest.raises(ValueError, match=r"one layer count per stage \(stages: 3"):
        check_sizes([2, 3], 5, 3)
    with pytest.raises(ValueError, match=">= 1"):
        check_sizes([0, 5], 5, 2)


def test_no_tensorflow_import():
    import pathlib
    import subprocess
    import sys

    # tfpar/__init__ imports TensorFlow; load the module file on its own.
    code = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('p', 'tfpar/pipeline/partition.py'); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); print('tensorflow' in sys.modules)")
    root = pathlib.Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

