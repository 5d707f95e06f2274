"""Prints the idiom x strategy table of the conformance catalogue.

    python tools/conformance_table.py > /tmp/table.md
    python tools/conformance_table.py --multi_worker > /tmp/multi_worker.md
    python tools/conformance_table.py --only=keras_hub,clip   # rows whose name has either

Trains every idiom of tests/conformance/idioms.py under each in-process
strategy of tests/conformance/test_conformance.py and against one-device
`model.fit`, and prints, per cell, the largest |w - w_one_device| over all
weights (exact idioms), the ratio of weight travel (curve idioms), or
"refused". With --multi_worker it runs the catalogue's two-worker job
(tests/conformance/multi_worker_conformance.py) instead and prints that
column. The tests assert the bounds; this prints the measured values for
docs/guide.md.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile
import warnings

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "conformance")]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import conftest  # noqa: E402,F401  (4 logical CPUs, before TensorFlow starts)
import numpy as np  # noqa: E402
import test_conformance as conformance  # noqa: E402

import tfpar  # noqa: E402
from tfpar.strategies import ModelSplit  # noqa: E402


def cell(idiom, make_strategy) -> str:
    strategy = make_strategy()
    x, y, extra = idiom.data()
    model = idiom.build()
    # Refused before training, as tests/conformance/test_conformance.py expects.
    refused = (idiom.pipelines if isinstance(strategy, ModelSplit)
               else getattr(strategy, "microbatches", 1) > 1 and idiom.own_train_step)
    if refused:
        try:
            tfpar.fit_distributed(model, x, y, strategy=strategy, **idiom.fit_kwargs(extra))
        except ValueError:
            return "refused"
        return "NOT REFUSED"
    tfpar.fit_distributed(model, x, y, strategy=strategy, **idiom.fit_kwargs(extra))
    return measured(idiom, conftest.weights_of(model))


def measured(idiom, weights) -> str:
    _, expected, _, _ = conformance.reference(idiom.name)
    if idiom.compare == "exact":
        return f"{max(float(np.max(np.abs(a - b))) for a, b in zip(weights, expected)):.1e}"
    return f"travel {conformance.travel_ratio(idiom, weights):.2f}x"


def multi_worker_column() -> None:
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path[:3]))
        subprocess.run(
            [sys.executable, "-m", "tfpar.launch", "-n", "2", "--threads-per-worker", "1", "--",
             sys.executable, str(ROOT / "tests" / "conformance" / "multi_worker_conformance.py"), out],
            cwd=ROOT, env=env, check=True, capture_output=True)
        print("| idiom | MultiWorker (2 workers) |\n|---|---|")
        for index, idiom in enumerate(conformance.idioms.MULTI_WORKER):
            weights = list(np.load(os.path.join(out, f"{index}_0.npz")).values())
            print(f"| {idiom.name} | {measured(idiom, weights)} |", flush=True)


def main() -> None:
    warnings.simplefilter("ignore")
    if "--multi_worker" in sys.argv:
        multi_worker_column()
        return
    names = list(conformance.STRATEGIES)
    print("| idiom | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    only = [arg.split("=", 1)[1].split(",") for arg in sys.argv if arg.startswith("--only=")]
    for idiom in conformance.idioms.IDIOMS:
        if only and not any(part in idiom.name for part in only[0]):
            continue
        row = [cell(idiom, conformance.STRATEGIES[name]) for name in names]
        print(f"| {idiom.name} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
