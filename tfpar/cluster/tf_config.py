"""The cluster a job runs on: TF_CONFIG, read and written.

TF_CONFIG is TensorFlow's (and Kubernetes TFJob's) description of a
multi-process job: `{"cluster": {"worker": ["host:port", ...]}, "task":
{"type": "worker", "index": 0}}`. `from_environment` reads and checks it with
errors that quote what was wrong; `local_configs` writes one per local
worker for the launcher (`peers.free_ports` finds the ports).

Example:
    >>> configs = local_configs([2222, 2223])
    >>> parse(configs[1]).task_index
    1
"""

from __future__ import annotations

import dataclasses
import json
import os

WORKER_JOBS = ("chief", "worker")


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """A parsed, checked TF_CONFIG."""

    cluster: dict
    task_type: str
    task_index: int

    @property
    def num_workers(self) -> int:
        return sum(len(self.cluster.get(job, [])) for job in WORKER_JOBS)

    @property
    def is_chief(self) -> bool:
        """The chief task if there is one, else worker 0 (TensorFlow's rule)."""
        if "chief" in self.cluster:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0

    @property
    def address(self) -> str:
        return self.cluster[self.task_type][self.task_index]


def from_environment(environ=None) -> ClusterConfig:
    """Parses TF_CONFIG from the environment.

    Raises:
      ValueError: TF_CONFIG missing or malformed, with what was received.
    """
    environ = os.environ if environ is None else environ
    text = environ.get("TF_CONFIG")
    if not text:
        raise ValueError(
            "Multi-worker training needs TF_CONFIG, e.g. "
            '{"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
            '"task": {"type": "worker", "index": 0}}. Received: TF_CONFIG is not set. '
            "Start workers with `python -m tfpar.launch -n N -- python train.py`, "
            "or set TF_CONFIG on each host."
        )
    return parse(text)


def parse(text: str) -> ClusterConfig:
    """Parses and checks one TF_CONFIG string.

    Raises:
      ValueError: not JSON, missing keys, an unknown task type, or a task
        index out of range.
    """
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG must be JSON ({error}). Received: TF_CONFIG={text!r}.") from error
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster or not isinstance(task, dict):
        raise ValueError(
            'TF_CONFIG must hold "cluster" (job name -> list of "host:port") and '
            f'"task" ({{"type": ..., "index": ...}}). Received: TF_CONFIG={text!r}.'
        )
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) and ":" in a for a in addresses):
            raise ValueError(
                f'TF_CONFIG cluster job {job!r} must list "host:port" addresses. '
                f"Received: {addresses!r}."
            )
    task_type, index = task.get("type"), task.get("index")
    if task_type not in cluster:
        raise ValueError(
            f"TF_CONFIG task type {task_type!r} is not a job of the cluster "
            f"{sorted(cluster)}. Received: TF_CONFIG={text!r}."
        )
    if not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
        raise ValueError(
            f"TF_CONFIG task index must be between 0 and {len(cluster[task_type]) - 1} "
            f"for job {task_type!r} ({len(cluster[task_type])} tasks). Received: index={index!r}."
        )
    if not any(job in cluster for job in WORKER_JOBS):
        raise ValueError(
            f'TF_CONFIG cluster needs a "worker" or "chief" job. Received jobs: {sorted(cluster)}.'
        )
    return ClusterConfig(cluster, task_type, index)


def local_configs(ports: list[int]) -> list[str]:
    """TF_CONFIG strings for one worker per port, on loopback.

    Example:
        >>> json.loads(local_configs([2222, 2223])[0])["cluster"]
        {'worker': ['localhost:2222', 'localhost:2223']}
    """
    workers = [f"localhost:{p}" for p in ports]
    return [
        json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
        for i in range(len(ports))
    ]
