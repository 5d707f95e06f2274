"""Measures what communication costs on this machine, once, then caches it.

An all-reduce among R devices (a `DataParallel` over them, TensorFlow's own
collectives) and a copy from one device to another are timed at two sizes;
latency + bytes / bandwidth is fitted to each. The result is cached per
machine (TensorFlow version, device names, cores, thread settings) in
`$TFPAR_CACHE_DIR` (default `~/.cache/tfpar`), so planning again costs
nothing; delete the file to measure again.

Example:
    >>> links = measure(["/device:CPU:0", "/device:CPU:1"])
    >>> sorted(links.all_reduce)
    [2]
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Sequence

import tensorflow as tf

from tfpar.core import timing
from tfpar.planner.cost_model import Links

# Two sizes far apart, so that latency and bandwidth separate: 64 KiB is
# latency-bound, 4 MiB bandwidth-bound on every link measured here.
_SIZES = (1 << 16, 1 << 22)


def measure(devices: Sequence[str], *, replica_counts: Sequence[int] | None = None, repeats: int = 5,
            cache: bool = True) -> Links:
    """All-reduce costs among the first R of `devices` for each R in
    `replica_counts` (default 2..len(devices)), and the copy cost from the
    first device to the second."""
    devices = list(devices)
    counts = sorted(set(replica_counts or range(2, len(devices) + 1)))
    path = _cache_path(devices, counts)
    if cache and path.exists():
        stored = json.loads(path.read_text())
        return Links({int(r): tuple(v) for r, v in stored["all_reduce"].items()}, tuple(stored["copy"]))
    all_reduce = {r: _fit([_all_reduce_seconds(devices[:r], n, repeats) for n in _SIZES]) for r in counts}
    copy = (_fit([_copy_seconds(devices[0], devices[1], n, repeats) for n in _SIZES])
            if len(devices) > 1 else (0.0, float("inf")))
    links = Links(all_reduce, copy)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"all_reduce": {str(r): v for r, v in all_reduce.items()},
                                    "copy": list(copy)}))
    return links


def _cache_path(devices, counts) -> pathlib.Path:
    key = json.dumps([tf.__version__, devices, counts, os.cpu_count(),
                      tf.config.threading.get_intra_op_parallelism_threads(),
                      tf.config.threading.get_inter_op_parallelism_threads()])
    root = pathlib.Path(os.environ.get("TFPAR_CACHE_DIR", pathlib.Path.home() / ".cache" / "tfpar"))
    return root / f"links-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _fit(points) -> tuple[float, float]:
    """(latency, bytes per second) through the two measured sizes."""
    (n1, t1), (n2, t2) = zip(_SIZES, points)
    per_byte = max((t2 - t1) / (n2 - n1), 1e-15)
    return max(t1 - per_byte * n1, 0.0), 1.0 / per_byte


def _all_reduce_seconds(devices, nbytes: int, repeats: int) -> float:
    from tfpar.strategies.data_parallel import DataParallel  # a strategy per measurement

    strategy = DataParallel(devices)
    with strategy.scope():
        value = tf.Variable(tf.ones([nbytes // 4]))

    @tf.function
    def step():
        def replica():
            return tf.distribute.get_replica_context().all_reduce("sum", value.read_value())
        return strategy.run(replica)

    return timing.median_seconds(lambda: strategy.experimental_local_results(step()), repeats)


def _copy_seconds(source: str, target: str, nbytes: int, repeats: int) -> float:
    with tf.device(source):
        value = tf.Variable(tf.ones([nbytes // 4]))

    @tf.function
    def copy():
        with tf.device(target):
            # A reduction on the target makes the copy happen there.
            return tf.reduce_sum(tf.identity(value.read_value()))

    return timing.median_seconds(copy, repeats)
