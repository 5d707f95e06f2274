"""Runs every docstring Example in tfpar as a doctest: `python tests/doctest_run.py`.

Run on its own (tests/test_doctests.py starts it), because the Examples lay
out devices as a user's program does, `tfpar.configure_devices(cpu=2)`, and
the test processes use 4. Each docstring gets fresh fixtures: `model` (a
compiled MLP, 12 features, 3 classes, accuracy), `x`, `y` (256 samples),
and runs in an empty working directory. Only Examples that need several
processes may carry `# doctest: +SKIP`, each listed in NEEDS_PROCESSES with
the test that runs the same code for real.
"""

from __future__ import annotations

import doctest
import importlib
import os
import pathlib
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The planner caches its link measurements; not in the user's home.
os.environ.setdefault("TFPAR_CACHE_DIR", tempfile.mkdtemp(prefix="tfpar-cache-"))
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfpar  # noqa: E402

# Docstring -> the test that runs its Example's code across processes.
NEEDS_PROCESSES = {
    "tfpar.strategies.multi_worker.MultiWorker": "tests/strategies/test_multi_worker.py",
    "tfpar.core.devices.connect": "tests/cluster/test_server.py",
}


def fixtures() -> dict:
    keras.utils.set_random_seed(0)
    model = tfpar.models.mlp(12, 3, hidden=(16, 8))
    model.compile(optimizer="adam", metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 12)).astype("float32")
    y = rng.integers(0, 3, size=256).astype("int32")
    return {"tfpar": tfpar, "keras": keras, "np": np, "tf": tf, "model": model, "x": x, "y": y}


def modules() -> list[str]:
    names = []
    for path in sorted((ROOT / "tfpar").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def run(names: list[str]) -> tuple[int, int, list[str]]:
    """Runs the Examples of the named modules: (examples run, failed, names of
    docstrings that skip an Example without being in NEEDS_PROCESSES)."""
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    wrongly_skipped = []
    for name in names:
        module = importlib.import_module(name)
        for test in doctest.DocTestFinder().find(module):
            if not test.examples or not test.name.startswith(name):
                continue  # another module's docstring, found through an import
            if any(e.options.get(doctest.SKIP) for e in test.examples) and test.name not in NEEDS_PROCESSES:
                wrongly_skipped.append(test.name)
            test.globs.update(fixtures())
            with tempfile.TemporaryDirectory() as folder:
                cwd = os.getcwd()
                os.chdir(folder)
                try:
                    runner.run(test)
                finally:
                    os.chdir(cwd)
    result = runner.summarize(verbose=False)
    return result.attempted, result.failed, wrongly_skipped


def main() -> int:
    tfpar.configure_devices(cpu=2)
    attempted, failed, wrongly_skipped = run(modules())
    print(f"doctests: {attempted} examples run, {failed} failed")
    if wrongly_skipped:
        print(f"+SKIP outside NEEDS_PROCESSES: {wrongly_skipped}")
    return 1 if failed or wrongly_skipped or not attempted else 0


if __name__ == "__main__":
    sys.exit(main())
