"""`python -m tfpar.bench NAME [options]`: run one benchmark, print its table."""

from __future__ import annotations

import argparse
import sys

from tfpar.bench import data_parallel, hybrid, multi_worker, pipeline, plan

BENCHMARKS = {"data_parallel": data_parallel, "pipeline": pipeline, "multi_worker": multi_worker,
              "hybrid": hybrid, "plan": plan}


def run(argv: list[str] | None = None) -> dict:
    """Parses `argv` (default: the command line) and runs that benchmark."""
    parser = argparse.ArgumentParser(prog="python -m tfpar.bench", description=__doc__)
    commands = parser.add_subparsers(dest="name", required=True)
    for name, module in BENCHMARKS.items():
        module.add_arguments(commands.add_parser(name, help=module.__doc__.splitlines()[0]))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return BENCHMARKS[args.name].main(args)


if __name__ == "__main__":
    run()
