"""Local devices: discover them, split them into logical devices, name them.

Every strategy takes devices by name; this module is the one place that turns
what a user wrote (`2`, `"/gpu:1"`, `["cpu:0", "cpu:1"]`) into TensorFlow's
canonical logical-device names, or says clearly why it cannot.

Example:
    >>> import tfpar
    >>> tfpar.configure_devices(cpu=2)   # before any other TensorFlow work
    ['/device:CPU:0', '/device:CPU:1']
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import tensorflow as tf

from tfpar.core import checks

_LOG = logging.getLogger("tfpar")

# TensorFlow needs a memory cap for each logical GPU it carves out of a
# physical one; 1 GiB is TensorFlow's own documented example value.
_DEFAULT_GPU_MEMORY_MB = 1024


def configure_devices(
    cpu: int | None = None,
    gpu: int | None = None,
    *,
    gpu_memory_mb: int = _DEFAULT_GPU_MEMORY_MB,
    intra_op_threads: int | str | None = "auto",
) -> list[str]:
    """Splits each physical CPU and/or GPU into logical devices.

    Logical devices let one machine stand in for several: tests and benchmarks
    run data parallel and pipelines on `cpu=4` logical CPUs, and one accelerator
    can be shared between replicas. TensorFlow fixes the device layout when it
    initialises, so call this before any other TensorFlow work (building a
    model, creating a tensor). Calling it again with the same layout is a no-op.

    Args:
      cpu: number of logical devices per physical CPU, or None to leave CPUs.
      gpu: number of logical devices per physical GPU, or None to leave GPUs.
      gpu_memory_mb: memory limit of each logical GPU, in MiB.
      intra_op_threads: threads one op may use (process-wide). Logical CPUs
        share one thread pool; with 1, each op takes one core, so K logical
        devices running concurrently behave like K single-core devices.
        "auto" (the default): with `cpu=K` > 1, the machine's cores // K
        (at least 1), so that the K devices' ops do not fight over the same
        cores: measured on 2 cores, a 2-stage GPipe then beats ModelSplit
        under TensorFlow's default threading, which it does not with every
        op taking both cores (docs/guide.md); otherwise, or once TensorFlow
        has started, TF's threads as they are. None keeps TF's default.

    Returns:
      The names of all logical devices, e.g. `['/device:CPU:0', ...]`.

    Raises:
      ValueError: a count below 1, or `gpu` given on a machine with no GPU.
      RuntimeError: TensorFlow already initialised a different layout.

    Example:
        >>> tfpar.configure_devices(cpu=2)
        ['/device:CPU:0', '/device:CPU:1']
    """
    for kind, count in (("cpu", cpu), ("gpu", gpu)):
        if count is not None and not checks.is_whole(count):
            raise ValueError(
                f"configure_devices: `{kind}` must be a whole number >= 1 or "
                f"None. Received: {kind}={count!r}."
            )
    if gpu is not None and not tf.config.list_physical_devices("GPU"):
        raise ValueError(
            "configure_devices: `gpu` was given but this machine has no GPU. "
            f"Received: gpu={gpu}. Pass gpu=None, or use cpu=N."
        )
    if intra_op_threads == "auto":
        threads = _auto_threads(cpu)
        # A repeated call, after TensorFlow started, keeps the threads the
        # first call set (a layout cannot change then either).
        if threads is not None and tf.config.threading.get_intra_op_parallelism_threads() == 0:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
            except RuntimeError:
                pass
    elif intra_op_threads is not None:
        _set_intra_op_threads(intra_op_threads)
    wanted = {"CPU": cpu, "GPU": gpu}
    for kind, count in wanted.items():
        if count is not None:
            _split(kind, count, gpu_memory_mb)
    return [d.name for d in tf.config.list_logical_devices()]


def split_cpus(count: int) -> None:
    """Lays each physical CPU out as `count` logical devices without starting
    TensorFlow's runtime (configure_devices lists the devices, which starts
    it): for MultiWorker, whose collectives must be configured after this
    and before the runtime starts."""
    checks.whole_number("virtual_devices", count)
    _split("CPU", count, _DEFAULT_GPU_MEMORY_MB)


def _auto_threads(cpu: int | None) -> int | None:
    """Cores per logical CPU device when a CPU is split, else None."""
    if cpu is None or cpu == 1:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // cpu)
    _LOG.info("configure_devices: %d logical CPUs on %d cores, so each op gets %d intra-op "
              "thread(s) (pass intra_op_threads=None to keep TensorFlow's default).", cpu, cores,
              threads)
    return threads


def _set_intra_op_threads(threads: int) -> None:
    checks.whole_number("intra_op_threads", threads)
    if tf.config.threading.get_intra_op_parallelism_threads() == threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError as error:
        raise RuntimeError(
            "configure_devices must run before any other TensorFlow work: "
            f"TensorFlow has already started and cannot change to "
            f"intra_op_threads={threads}. Call tfpar.configure_devices(...) at "
            "the top of your program."
        ) from error


def _split(kind: str, count: int, gpu_memory_mb: int) -> None:
    if kind == "CPU":
        config = tf.config.LogicalDeviceConfiguration()
    else:
        config = tf.config.LogicalDeviceConfiguration(memory_limit=gpu_memory_mb)
    physical = tf.config.list_physical_devices(kind)
    try:
        for device in physical:
            tf.config.set_logical_device_configuration(device, [config] * count)
    except RuntimeError as error:
        have = len(tf.config.list_logical_devices(kind))
        if have == count * len(physical):
            return  # Already laid out this way: calling twice is harmless.
        raise RuntimeError(
            f"configure_devices must run before any other TensorFlow work: "
            f"TensorFlow has already initialised {have} logical {kind} "
            f"device(s) and cannot change to {count} per physical {kind}. "
            "Call tfpar.configure_devices(...) at the top of your program, "
            "before building models or creating tensors."
        ) from error


def connect(workers: Sequence[str], *, job: str = "worker") -> list[str]:
    """Connects this program to other processes' devices (TensorFlow gRPC).

    Each address must be served by `python -m tfpar.server` (a
    `tf.distribute.Server`). Afterwards their devices can hold model-split or
    pipeline stages, e.g. "/job:worker/replica:0/task:1/device:CPU:0".

    Args:
      workers: "host:port" of each task, in task order.
      job: the job name the servers were started with.

    Returns:
      The names of the remote devices now usable.

    Example:
        >>> tfpar.core.devices.connect(["localhost:2222", "localhost:2223"])  # doctest: +SKIP
        ['/job:worker/replica:0/task:0/device:CPU:0', '/job:worker/replica:0/task:1/device:CPU:0']
    """
    workers = list(workers)
    if not workers or not all(isinstance(w, str) and ":" in w for w in workers):
        raise ValueError(f'connect needs "host:port" addresses. Received: workers={workers!r}.')
    tf.config.experimental_connect_to_cluster(tf.train.ClusterSpec({job: workers}))
    return [d.name for d in tf.config.list_logical_devices() if f"/job:{job}/" in d.name]


def local_devices(kind: str | None = None) -> list[str]:
    """Returns the local logical devices of one kind, fastest kind by default.

    Args:
      kind: "CPU", "GPU" or "TPU"; None picks GPU if there is one, else CPU.

    Example:
        >>> tfpar.core.devices.local_devices("CPU")[:1]
        ['/device:CPU:0']
    """
    if kind is None:
        kind = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
    return [d.name for d in tf.config.list_logical_devices(kind.upper())]


def resolve(devices: int | str | Sequence[str] | None) -> list[str]:
    """Turns a user's device request into canonical logical-device names.

    Args:
      devices: None (all devices of the fastest kind), an int N (the first N
        of them), or one name or a list of names such as "/gpu:0", "CPU:1".

    Returns:
      Canonical names, e.g. ['/device:CPU:0', '/device:CPU:1'].

    Raises:
      ValueError: a count out of range, a duplicate, or a device that does
        not exist (the message lists the ones that do).
    """
    if devices is None:
        return local_devices()
    if isinstance(devices, bool) or not isinstance(devices, (int, str, Sequence)):
        raise TypeError(
            "devices must be None, an int or a list of device names. "
            f"Received: devices={devices!r}."
        )
    if isinstance(devices, int):
        return _first(devices)
    if isinstance(devices, str):
        devices = [devices]
    names = [_canonical(name) for name in devices]
    if not names:
        raise ValueError(
            "devices must name at least one device. Received: devices=[]. "
            f"Available: {local_devices()}."
        )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"devices must not repeat a device. Received: devices={list(devices)} "
            f"(repeated: {duplicates})."
        )
    return names


def _first(count: int) -> list[str]:
    available = local_devices()
    if not 1 <= count <= len(available):
        raise ValueError(
            f"devices={count} asks for {count} device(s) but {len(available)} "
            f"are available: {available}. Ask for at most {len(available)}, or "
            "split devices with tfpar.configure_devices(cpu=N) before any "
            "other TensorFlow work."
        )
    return available[:count]


def _canonical(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"A device name must be a string. Received: {name!r}.")
    try:
        spec = tf.DeviceSpec.from_string(name if "/" in name else "/" + name)
    except ValueError as error:
        raise ValueError(
            f"Unrecognised device name {name!r}. Use names such as "
            f"'/device:CPU:0' or 'gpu:1'. Available: {_all_names()}."
        ) from error
    if spec.job not in (None, "localhost"):
        return _remote(name, spec)
    wanted = f"/device:{(spec.device_type or '').upper()}:{spec.device_index or 0}"
    if wanted not in _all_names():
        raise ValueError(
            f"Device {name!r} does not exist on this machine. Available: "
            f"{_all_names()}. Pick one of those, or create logical devices "
            "with tfpar.configure_devices(cpu=N) before any other TensorFlow work."
        )
    return wanted


def _remote(name: str, spec: tf.DeviceSpec) -> str:
    spec = spec.replace(replica=spec.replica or 0, task=spec.task or 0,
                        device_type=(spec.device_type or "CPU").upper(), device_index=spec.device_index or 0)
    wanted = spec.to_string()
    remote = [d.name for d in tf.config.list_logical_devices() if d.name.startswith("/job:")]
    if wanted not in remote:
        raise ValueError(
            f"Device {name!r} is not part of a connected cluster. Connected remote "
            f"devices: {remote}. Start a server for that task (python -m tfpar.server) "
            "and call tfpar.core.devices.connect([...]) first."
        )
    return wanted


def _all_names() -> list[str]:
    return [d.name for d in tf.config.list_logical_devices()]
