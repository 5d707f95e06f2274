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

from tfpar.cluster.peers import check_port_free, free_ports, wait_for_peers
from tfpar.cluster.tf_config import ClusterConfig, from_environment, parse

__all__ = ["ClusterConfig", "check_port_free", "free_ports", "from_environment", "parse",
           "wait_for_peers"]
