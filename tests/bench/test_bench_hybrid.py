"""The hybrid benchmark CLI runs end to end on a tiny setting (no timing asserted)."""

import subprocess
import sys


def test_hybrid_benchmark_prints_one_row_per_layout():
    completed = subprocess.run(
        [sys.executable, "-m", "tfpar.bench", "hybrid", "--width=16", "--depth=3", "--batch_size=32",
         "--microbatches=2", "--steps=2", "--repeats=1"],
        capture_output=True, text=True, timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    assert "samples/s" in out and "max weights+optimizer MiB/device" in out
    for layout in ("DataParallel(4)", "GPipe K=4", "GPipe 2 x 2"):
        assert layout in out, out
