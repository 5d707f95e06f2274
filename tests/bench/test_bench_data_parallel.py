"""The benchmark CLI runs end to end on a tiny setting (no timing is asserted).

It runs in its own process: it configures its own logical devices, and its
native-Keras runs use plain MirroredStrategy objects, whose collective keys
TensorFlow does not separate between instances in one process.
"""

import subprocess
import sys


def test_data_parallel_benchmark_reports_every_run():
    completed = subprocess.run(
        [sys.executable, "-m", "tfpar.bench", "data_parallel", "--devices=2", "--repeats=1",
         "--epochs=2", "--samples=512", "--batch_size=128", "--width=32",
         "--microbatches=2", "--memory_batch=256", "--memory_width=32", "--memory_depth=2"],
        capture_output=True, text=True, timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    for run in ("native", "tfpar", "single"):
        assert f"\n{run:>6}" in out, out
    assert "tfpar / native:" in out
    micro = out[out.index("micro-batches:"):]
    # k = 1 is always run, as the reference; one all-reduce per step each.
    assert [line.split()[3] for line in micro.splitlines()[3:5]] == ["1.000", "1.000"], micro
    assert "gradient compression:" in out and "powersgd" in out
