"""`python -m tfpar.bench NAME [options]`: run one benchmark, print its table."""

from __future__ import annotations

import argparse
import os
import sys

from tfpar.bench import data_parallel, hybrid, multi_worker, pipeline, plan, sharded

BENCHMARKS = {"data_parallel": data_parallel, "pipeline": pipeline, "multi_worker": multi_worker,
              "hybrid": hybrid, "plan": plan, "sharded": sharded}


def run(argv: list[str] | None = None) -> dict:
    """Parses `argv` (default: the command line) and runs that benchmark."""
    parser = argparse.ArgumentParser(prog="python -m tfpar.bench", description=__doc__)
    commands = parser.add_subparsers(dest="name", required=True)
    for name, module in BENCHMARKS.items():
        module.add_arguments(commands.add_parser(name, help=module.__doc__.splitlines()[0]))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    # The benchmarks read peak memory from TensorFlow's allocator stats. The
    # default CPU allocator keeps none unless something else switched them
    # on (a profiler run); the BFC allocator always does. TensorFlow reads
    # this when it creates its devices, so a process that already has
    # devices must have set it itself (tests/conftest.py does).
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
    return BENCHMARKS[args.name].main(args)


if __name__ == "__main__":
    run()
