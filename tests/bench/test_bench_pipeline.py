"""The pipeline benchmark CLI runs end to end on a tiny setting (no timing asserted)."""

import subprocess
import sys


def test_pipeline_benchmark_prints_speed_and_memory_tables():
    completed = subprocess.run(
        [sys.executable, "-m", "tfpar.bench", "pipeline", "--devices=2", "--microbatches=2",
         "--width=32", "--depth=2", "--batch_size=64", "--steps=2", "--repeats=1",
         "--memory_depth=2", "--memory_batch=64"],
        capture_output=True, text=True, timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    assert "speedup vs M=1" in out and "ideal K*M/(M+K-1)" in out and "cores busy" in out
    for schedule in ("gpipe", "1f1b", "zb1"):
        assert out.count(schedule) >= 3, out  # speed or bubble, and memory tables
    for table in ("measured bubble", "pipelined inference", "set-up of a one-epoch fit",
                  "TensorFlow's default"):
        assert table in out, out
