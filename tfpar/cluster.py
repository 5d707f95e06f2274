"""The cluster a job runs on: TF_CONFIG, read and written.

TF_CONFIG is TensorFlow's (and Kubernetes TFJob's) description of a
multi-process job: `{"cluster": {"worker": ["host:port", ...]}, "task":
{"type": "worker", "index": 0}}`. `from_environment` reads and checks it with
errors that quote what was wrong; `local_configs` writes one per local
worker for the launcher, on free loopback ports.

Example:
    >>> configs = local_configs(2)
    >>> parse(configs[1]).task_index
    1
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
import time

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


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports that were free on `host` a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def check_port_free(address: str) -> None:
    """Raises a clear error if this task's port is already taken."""
    host, port = address.rsplit(":", 1)
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1" if host in ("localhost", "127.0.0.1") else "", int(port)))
        except OSError as error:
            raise ValueError(
                f"Port {port} of this task's address {address!r} is already in use "
                f"({error.strerror}). Stop the process holding it or pick another port "
                "in TF_CONFIG."
            ) from error


def wait_for_peers(config: ClusterConfig, timeout_seconds: float) -> None:
    """Waits until every other worker of the cluster has been seen listening.

    TensorFlow's own start-up waits for missing workers forever, and does not
    even yield to SIGTERM. Before it starts, each worker listens on its own
    port and probes the others; a peer counts once it has answered, as a
    probe listener or as its TensorFlow server.

    Raises:
      ValueError: some workers listed in TF_CONFIG did not start in time (the
        cluster has fewer workers than it declares).
    """
    check_port_free(config.address)
    peers = [a for job in WORKER_JOBS for a in config.cluster.get(job, []) if a != config.address]
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("", int(config.address.rsplit(":", 1)[1])))
    listener.listen()
    stop = threading.Event()
    threading.Thread(target=_answer, args=(listener, stop), daemon=True).start()
    pending, deadline = list(peers), time.monotonic() + timeout_seconds
    try:
        while pending and time.monotonic() < deadline:
            pending = [peer for peer in pending if not _reachable(peer)]
            if pending:
                time.sleep(0.2)
    finally:
        stop.set()
        time.sleep(0.6)  # let the answering thread finish with its probes
        listener.close()
    if pending:
        raise ValueError(
            f"TF_CONFIG lists {config.num_workers} workers, but {len(pending)} of them "
            f"did not start within {timeout_seconds:g} s: {pending}. Start every worker "
            "that TF_CONFIG lists (or list only the workers you start)."
        )


def _answer(listener, stop) -> None:
    # Accepted probes are closed only at the end, after the prober closed its
    # side: the side that closes first keeps the port in TIME_WAIT, and
    # TensorFlow's server must bind this port right after.
    listener.settimeout(0.2)
    accepted = []
    while not stop.is_set():
        try:
            accepted.append(listener.accept()[0])
        except OSError:
            continue
    time.sleep(0.3)
    for connection in accepted:
        connection.close()


def _reachable(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def local_configs(count: int, *, ports: list[int] | None = None) -> list[str]:
    """TF_CONFIG strings for `count` workers on loopback ports."""
    ports = ports or free_ports(count)
    workers = [f"localhost:{p}" for p in ports]
    return [
        json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
        for i in range(count)
    ]
