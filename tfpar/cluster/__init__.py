"""Jobs of several processes, on TensorFlow's own gRPC runtime.

- `tf_config`: TF_CONFIG, read, checked and written.
- `peers`: free ports, and waiting for every peer before TensorFlow starts.
- `startup`: how a launched worker knows to make its MultiWorker strategy.
- `launch`: `python -m tfpar.launch`, N local workers with a TF_CONFIG each.
- `server`: `python -m tfpar.server`, one task of a cluster for remote stages.
- `chief`: only the chief writes checkpoints, logs and saved models.
- `checkpoint`: exact resume of a training interrupted mid-epoch.

The `MultiWorker` strategy (`tfpar.strategies`) builds on it.
"""

from tfpar.cluster import tf_config as _tf_config
from tfpar.cluster.peers import check_port_free, free_ports, wait_for_peers
from tfpar.cluster.tf_config import WORKER_JOBS, ClusterConfig, from_environment, parse


def local_configs(count: int, *, ports: list[int] | None = None) -> list[str]:
    """TF_CONFIG strings for `count` workers on free loopback ports (or `ports`).

    Example:
        >>> len(local_configs(2))
        2
    """
    return _tf_config.local_configs(ports or free_ports(count))


__all__ = ["WORKER_JOBS", "ClusterConfig", "check_port_free", "free_ports", "from_environment",
           "local_configs", "parse", "wait_for_peers"]
