"""The multi-worker benchmark runs end to end on a tiny setting (no timing asserted).

Without the bare strategy.run rows: each row is two more TensorFlow
processes, and the suite's time is mostly process starts.
"""

import subprocess
import sys


def test_multi_worker_benchmark_reports_scaling():
    completed = subprocess.run(
        [sys.executable, "-m", "tfpar.bench", "multi_worker", "--repeats=1", "--width=32",
         "--per_worker_batch=64", "--steps=2", "--epochs=2", "--bytes_per_pack=0",
         "--steps_per_execution=2", "--bare=0"],
        capture_output=True, text=True, timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "scaling efficiency:" in completed.stdout and "bytes_per_pack" in completed.stdout
    assert "machine ceiling" in completed.stdout and "independent" in completed.stdout
    last = completed.stdout.strip().splitlines()[-1]
    assert last.startswith("multi_worker efficiency_vs_ceiling=") and float(last.split("=")[1]) > 0
