"""Serve one task of a TensorFlow cluster: `python -m tfpar.server`.

Model-split and pipeline stages can live on other processes or hosts: each
runs a `tf.distribute.Server` for its task, and the training program connects
to the cluster (`tfpar.core.devices.connect(...)`) and names their devices, e.g.
"/job:worker/replica:0/task:1/device:CPU:0". The cluster and task come from
TF_CONFIG, or from the flags:

    python -m tfpar.server --cluster localhost:2222,localhost:2223 --index 1 --threads 1

The server binds its port on every interface that the address names; keep
these unauthenticated gRPC ports on a private network.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from tfpar.cluster import peers, tf_config


def serve(config: tf_config.ClusterConfig, *, threads: int | None = None, ready=None) -> None:
    """Runs the task's server until the process is stopped."""
    import tensorflow as tf  # Late: the thread settings must precede TF's start.

    peers.check_port_free(config.address)
    session_config = tf.compat.v1.ConfigProto()
    if threads:
        session_config.inter_op_parallelism_threads = threads
        session_config.intra_op_parallelism_threads = threads
    server = tf.distribute.Server(
        tf.train.ClusterSpec(config.cluster), job_name=config.task_type,
        task_index=config.task_index, config=session_config, protocol="grpc",
    )
    print(f"serving {config.task_type}:{config.task_index} at {config.address}", flush=True)
    if ready is not None:
        ready()
    server.join()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tfpar.server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cluster", help="comma-separated host:port of every worker task")
    parser.add_argument("--index", type=int, help="this task's index in --cluster")
    parser.add_argument("--threads", type=int, default=None, help="TensorFlow threads for this task")
    args = parser.parse_args(argv)
    if args.cluster is not None:
        if args.index is None:
            parser.error("--cluster needs --index (this task's position in the list)")
        text = json.dumps({"cluster": {"worker": args.cluster.split(",")},
                           "task": {"type": "worker", "index": args.index}})
        config = tf_config.parse(text)
    else:
        config = tf_config.from_environment()
    serve(config, threads=args.threads)


def run() -> None:
    """Command entry point: a bad cluster is a one-line error, exit code 2."""
    try:
        main()
    except ValueError as error:
        print(f"tfpar.server: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run()
