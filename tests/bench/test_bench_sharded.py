"""The sharded benchmark runs end to end on a tiny setting (no timing is
asserted), in its own process (it configures its own logical devices)."""

import re
import subprocess
import sys


def test_sharded_benchmark_reports_every_level_and_its_last_line():
    completed = subprocess.run(
        [sys.executable, "-m", "tfpar.bench", "sharded", "--replicas=1,2", "--layers=1", "--width=32",
         "--vocabulary=128", "--sequence=8", "--batch_size=8", "--steps=2", "--repeats=1"],
        capture_output=True, text=True, timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.strip().splitlines()
    rows = {tuple(line.split()[:2]): line.split() for line in lines if re.match(r"^[12] +\w+ ", line)}
    assert set(rows) == {("1", "none"), ("2", "none"), ("2", "optimizer"), ("2", "gradients")}, lines
    # Measured from the variables' placement: each level holds less state
    # per device than the one before (columns: weights, grads, slots, state).
    state = {level: float(rows[("2", level)][5]) for level in ("none", "optimizer", "gradients")}
    assert state["gradients"] < state["optimizer"] < state["none"], state
    assert float(rows[("2", "gradients")][3]) < float(rows[("2", "none")][3])  # a share of the gradient
    assert re.fullmatch(r"sharded R=2 state_vs_replicated optimizer=[\d.]+ gradients=[\d.]+ weights=n/a "
                        r"step_vs_replicated optimizer=[\d.]+ gradients=[\d.]+ weights=n/a", lines[-1]), lines[-1]
