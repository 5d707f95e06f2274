"""Start N local workers with a TF_CONFIG each: `python -m tfpar.launch`.

    python -m tfpar.launch -n 2 [--threads-per-worker 1] [--timeout-seconds 60]
                           [--virtual-devices 2] -- python train.py

Each worker gets its own loopback port in one shared TF_CONFIG cluster (the
launcher binds loopback only), its log lines prefixed with its rank. If one
worker fails, the others are stopped and the launcher exits with that
worker's code; Ctrl-C is forwarded to every worker.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from tfpar.cluster import peers, startup, tf_config

GRACE_SECONDS = 10.0


def launch(command: Sequence[str], workers: int, *, threads_per_worker: int | None = None,
           timeout_seconds: float | None = None, strategy_options: dict | None = None,
           env: dict | None = None, out=None) -> int:
    """Runs `command` as `workers` local workers; returns the job's exit code.

    Args:
      command: the program and its arguments, run once per worker.
      workers: how many workers (N >= 1).
      threads_per_worker: TensorFlow intra- and inter-op threads per worker;
        None keeps TensorFlow's default (every core).
      timeout_seconds: the workers' MultiWorker collective timeout: a dead or
        hung peer becomes an error after this long instead of a hang.
      strategy_options: further MultiWorker arguments for the workers, e.g.
        {"compression": "bf16", "bytes_per_pack": 1 << 20}.
      env: environment for the workers (default: this process's).
      out: where prefixed log lines go (default: sys.stdout).

    Example:
        >>> import io
        >>> log = io.StringIO()
        >>> launch([sys.executable, "-c", "print('hello')"], 2, out=log)
        0
        >>> sorted(log.getvalue().splitlines())
        ['[worker 0] hello', '[worker 1] hello']
    """
    if not command:
        raise ValueError("launch needs a command to run, e.g. -- python train.py. Received: none.")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"The number of workers must be >= 1. Received: -n {workers!r}.")
    out = out or sys.stdout
    lock = threading.Lock()
    processes, readers = [], []
    # From here Ctrl-C only sets a flag, also while the workers start: a
    # KeyboardInterrupt raised inside Popen.poll() can leave its waitpid
    # lock held, and the wait that follows then hangs for ever (seen once
    # in the suite under load).
    interrupted = threading.Event()
    installed = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set()) if installed else None
    try:
        for rank, config in enumerate(tf_config.local_configs(peers.free_ports(workers))):
            processes.append(_start(command, rank, config, threads_per_worker, timeout_seconds,
                                    strategy_options, env))
            reader = threading.Thread(target=_relay, args=(processes[-1], rank, out, lock), daemon=True)
            reader.start()
            readers.append(reader)
        code = _wait(processes, interrupted)
    finally:
        if installed:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
    if code is None:
        _stop(processes, signal.SIGINT)
        code = 130
    for reader in readers:
        reader.join(timeout=GRACE_SECONDS)
    return code


def _start(command, rank: int, config: str, threads_per_worker, timeout_seconds, strategy_options,
           env) -> subprocess.Popen:
    # `import tfpar` in the worker makes its MultiWorker strategy from
    # this, before the program's first TensorFlow op (startup.py).
    options = dict(strategy_options or {})
    if timeout_seconds:
        options["timeout_seconds"] = timeout_seconds
    worker_env = dict(os.environ if env is None else env, TF_CONFIG=config,
                      **{startup.ENV: startup.encode(options)})
    if threads_per_worker:
        worker_env["TF_NUM_INTRAOP_THREADS"] = str(threads_per_worker)
        worker_env["TF_NUM_INTEROP_THREADS"] = str(max(2, threads_per_worker))
    return subprocess.Popen(
        list(command), env=worker_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, text=True, bufsize=1,
        start_new_session=True,  # Ctrl-C reaches workers only through us
    )


def _relay(process, rank: int, out, lock) -> None:
    for line in process.stdout:
        with lock:
            out.write(f"[worker {rank}] {line}")
            out.flush()


def _wait(processes, interrupted: threading.Event) -> int | None:
    """Waits for all; on the first failure stops the rest and returns its
    code; None once `interrupted` is set."""
    while not interrupted.is_set():
        codes = [p.poll() for p in processes]
        failed = [c for c in codes if c not in (None, 0)]
        if failed:
            _stop(processes, signal.SIGTERM)
            return failed[0]
        if all(c == 0 for c in codes):
            return 0
        interrupted.wait(0.1)
    return None


def _stop(processes, sig) -> None:
    for p in processes:
        if p.poll() is None:
            p.send_signal(sig)
    deadline = time.monotonic() + GRACE_SECONDS
    for p in processes:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = []
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1:]
    parser = argparse.ArgumentParser(prog="python -m tfpar.launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--workers", type=int, required=True, help="number of workers")
    parser.add_argument("--threads-per-worker", type=int, default=None,
                        help="TensorFlow threads per worker (default: all cores)")
    parser.add_argument("--timeout-seconds", type=float, default=None,
                        help="collective timeout: a dead or hung peer fails the job after this long")
    parser.add_argument("--virtual-devices", type=int, default=None,
                        help="split each worker's CPU into this many logical devices (the stages "
                             "of a pipeline replica per worker)")
    parser.add_argument("--compression", choices=("fp16", "bf16", "powersgd"), default=None,
                        help="how the workers' MultiWorker strategy sends gradients")
    parser.add_argument("--microbatches", type=int, default=None,
                        help="micro-batches per replica's share (gradients summed locally, one "
                             "all-reduce per step)")
    args = parser.parse_args(argv)
    if not command:
        parser.error("give the command to run after --, e.g. -- python train.py")
    if args.workers < 1:
        parser.error(f"-n must be >= 1. Received: -n {args.workers}.")
    if args.virtual_devices is not None and args.virtual_devices < 1:
        parser.error(f"--virtual-devices must be >= 1. Received: {args.virtual_devices}.")
    if args.microbatches is not None and args.microbatches < 1:
        parser.error(f"--microbatches must be >= 1. Received: {args.microbatches}.")
    options = {name: getattr(args, name) for name in ("virtual_devices", "compression", "microbatches")
               if getattr(args, name)} or None
    return launch(command, args.workers, threads_per_worker=args.threads_per_worker,
                  timeout_seconds=args.timeout_seconds, strategy_options=options)


def run() -> None:
    """Console-script entry point (`tfpar-launch`)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
