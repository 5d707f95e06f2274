"""Stages on other processes: two `python -m tfpar.server` tasks on loopback.

The client (a subprocess, so that its cluster connection does not touch the
test process) trains ModelSplit and GPipe with one stage per server and
checks the weights against one-device training (float32 round-off).
"""

import os
import pathlib
import socket
import subprocess
import sys

import pytest

from tfpar.cluster import server

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLIENT = """import os, subprocess, sys, time
import numpy as np
import keras
from tfpar.cluster import peers
import tfpar

ports = peers.free_ports(2)
addresses = [f"localhost:{p}" for p in ports]
servers = [subprocess.Popen([sys.executable, "-m", "tfpar.server", "--cluster", ",".join(addresses),
                             "--index", str(i), "--threads", "1"], stdout=subprocess.PIPE, text=True)
           for i in range(2)]
try:
    for s in servers:
        assert "serving" in s.stdout.readline()
    devices = tfpar.core.devices.connect(addresses)
    print("remote devices", devices)
    def build():
        keras.utils.set_random_seed(0)
        m = tfpar.models.mlp(12, 3, hidden=(16, 16, 8))
        m.compile(optimizer=keras.optimizers.Adam(0.01), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return m
    rng = np.random.default_rng(0); x = rng.normal(size=(64, 12)).astype("float32"); y = rng.integers(0, 3, 64)
    reference = build(); reference.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    for strategy in [tfpar.strategies.ModelSplit(devices), tfpar.strategies.GPipe(devices, microbatches=4, schedule="1f1b")]:
        model = build()
        tfpar.fit_distributed(model, x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, strategy=strategy)
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(model.get_weights(), reference.get_weights()))
        print(type(strategy).__name__, "max weight difference", diff)
        assert diff < 1e-5
    print("REMOTE OK")
finally:
    for s in servers:
        s.kill()
        s.wait()
"""


def test_model_split_and_gpipe_run_stages_on_server_processes(tmp_path):
    (tmp_path / "client.py").write_text(CLIENT)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    completed = subprocess.run([sys.executable, str(tmp_path / "client.py")], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-4000:]
    assert "REMOTE OK" in completed.stdout
    assert "/job:worker/replica:0/task:1/device:CPU:0" in completed.stdout


def test_server_refuses_a_port_in_use():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        completed = subprocess.run(
            [sys.executable, "-m", "tfpar.server", "--cluster", f"localhost:{port}", "--index", "0"],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2 and f"Port {port}" in completed.stderr and "already in use" in completed.stderr


# The flag errors come before any server starts, so they are checked in
# this process (each binary start is a TensorFlow import).
@pytest.mark.parametrize("argv, message", [
    (["--cluster", "localhost:1"], "--cluster needs --index"),
    (["--cluster", "localhost:1,localhost:2", "--index", "5"], "between 0 and 1"),
])
def test_server_refuses_bad_flags(argv, message, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["python -m tfpar.server", *argv])
    with pytest.raises(SystemExit) as exit_info:
        server.run()
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
