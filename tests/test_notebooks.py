"""Every notebook runs top to bottom, headless, in its reduced configuration.

Code cells are executed in order as one script in a fresh process (each
notebook configures its own logical devices), in a scratch directory; the
install cell is skipped because the suite runs against the tree under test.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS] == [
        "01_data_parallel.ipynb", "02_model_split.ipynb", "03_pipeline.ipynb", "04_multi_worker.ipynb",
        "05_hybrid.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    cells = json.loads(path.read_text())["cells"]
    assert cells[0]["cell_type"] == "markdown" and "pip" in "".join(cells[1]["source"])
    code = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    env = dict(os.environ, TFPAR_NOTEBOOK_SMALL="1", TFPAR_SKIP_INSTALL="1", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=str(ROOT))  # the tree under test, not an older install
    # Run in a scratch directory: notebooks write pictures and job files.
    completed = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
