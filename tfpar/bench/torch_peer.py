"""PyTorch's own pipeline schedules on the same MLP, batch, M and cores: the
peer that `python -m tfpar.bench pipeline --peer torch` runs beside tfpar.

Run as a script (`python tfpar/bench/torch_peer.py ...`), never imported
through `tfpar`, so that its processes hold PyTorch alone, not TensorFlow.
With `--stages 1` it times torch's plain one-device step on one thread; with
`--stages K` it starts K gloo processes on loopback, one thread each, one
stage each (`torch.distributed.pipelining.PipelineStage`), and times
`ScheduleGPipe` or `Schedule1F1B`. It prints one JSON line: the median step
seconds over the steps after the first.

torch is an optional dependency (`pip install tfpar[bench]`); tfpar never
needs it otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time


def layers(width: int, depth: int, classes: int = 10):
    """The bench's MLP as a list of torch layers: depth x (Linear, ReLU), a head."""
    import torch

    torch.manual_seed(0)
    out = []
    for _ in range(depth):
        out += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    return out + [torch.nn.Linear(width, classes)]


def split(modules: list, stages: int) -> list:
    """Contiguous stages of near-equal Linear counts (tfpar's "flops" split
    of an MLP of equal widths)."""
    import torch

    linear = [i for i, m in enumerate(modules) if isinstance(m, torch.nn.Linear)]
    per = [len(linear) // stages + (s < len(linear) % stages) for s in range(stages)]
    bounds, start = [], 0
    for count in per:
        end = linear[start + count] if start + count < len(linear) else len(modules)
        bounds.append((linear[start] if start < len(linear) else len(modules), end))
        start += count
    bounds[0] = (0, bounds[0][1])
    return [torch.nn.Sequential(*modules[a:b]) for a, b in bounds]


def one_device(args) -> list[float]:
    import torch

    torch.set_num_threads(1)
    model = torch.nn.Sequential(*layers(args.width, args.depth))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.randn(args.batch_size, args.width)
    y = torch.randint(0, 10, (args.batch_size,))
    seconds = []
    for _ in range(args.steps):
        start = time.perf_counter()
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    return seconds


def pipeline_rank(args) -> list[float]:
    import torch
    import torch.distributed as dist
    from torch.distributed import pipelining

    torch.set_num_threads(1)
    rank, world = args.rank, args.stages
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            init_method=f"tcp://127.0.0.1:{args.port}")
    module = split(layers(args.width, args.depth), world)[rank]
    stage = pipelining.PipelineStage(module, rank, world, torch.device("cpu"))
    schedules = {"gpipe": pipelining.ScheduleGPipe, "1f1b": pipelining.Schedule1F1B}
    loss_fn = torch.nn.CrossEntropyLoss()
    schedule = schedules[args.schedule](stage, n_microbatches=args.microbatches, loss_fn=loss_fn)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01)
    x = torch.randn(args.batch_size, args.width)
    y = torch.randint(0, 10, (args.batch_size,))
    seconds = []
    for _ in range(args.steps):
        dist.barrier()
        start = time.perf_counter()
        optimizer.zero_grad()
        if rank == 0:
            schedule.step(x)
        elif rank == world - 1:
            schedule.step(target=y)
        else:
            schedule.step()
        optimizer.step()
        dist.barrier()  # the step ends when every stage is done
        seconds.append(time.perf_counter() - start)
    dist.destroy_process_group()
    return seconds


def run(stages: int, schedule: str, width: int, depth: int, batch_size: int, microbatches: int,
        steps: int, timeout: float = 600.0) -> float:
    """Median step seconds of torch on `stages` processes (1: one-device step).

    Raises:
      RuntimeError: a peer process failed (its stderr is in the message).
    """
    common = [f"--width={width}", f"--depth={depth}", f"--batch_size={batch_size}",
              f"--microbatches={microbatches}", f"--steps={steps}", f"--schedule={schedule}",
              f"--stages={stages}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if stages == 1:
        commands = [[sys.executable, __file__, *common, "--rank=0"]]
    else:
        port = _free_port()
        commands = [[sys.executable, __file__, *common, f"--rank={r}", f"--port={port}"]
                    for r in range(stages)]
    processes = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for c in commands]
    try:
        outputs = [p.communicate(timeout=timeout) for p in processes]
    finally:
        for p in processes:  # never leave a peer behind
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(processes, outputs):
        if p.returncode:
            raise RuntimeError(f"The torch peer failed (exit {p.returncode}): {err[-2000:]}")
    # Every rank timed the same barrier-to-barrier steps; rank 0's stand.
    return json.loads(outputs[0][0].strip().splitlines()[-1])["median_seconds"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("width", 512), ("depth", 8), ("batch_size", 2048), ("microbatches", 8),
                          ("steps", 6), ("stages", 2), ("rank", 0), ("port", 0)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--schedule", default="gpipe", choices=("gpipe", "1f1b"))
    args = parser.parse_args()
    seconds = one_device(args) if args.stages == 1 else pipeline_rank(args)
    print(json.dumps({"median_seconds": statistics.median(seconds[1:] or seconds)}))


if __name__ == "__main__":
    main()
