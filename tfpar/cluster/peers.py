"""A cluster's processes finding each other: free ports and peers' start-up.

TensorFlow's collective start-up waits forever for a worker that never
comes, so tfpar checks the ports and waits for the peers itself first, with
errors that say which address is missing.

Example:
    >>> port = free_ports(1)[0]
    >>> check_port_free(f"localhost:{port}")
"""

from __future__ import annotations

import socket
import threading
import time

from tfpar.cluster.tf_config import WORKER_JOBS, ClusterConfig


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
