"""The launcher: TF_CONFIG per worker, rank-prefixed logs, failure handling."""

import io
import signal
import subprocess
import sys
import time

import pytest

from tfpar.cluster import launch


def run(code, workers=2, **kwargs):
    out = io.StringIO()
    exit_code = launch.launch([sys.executable, "-c", code], workers, out=out, **kwargs)
    return exit_code, out.getvalue()


def test_each_worker_gets_its_task_and_threads_and_a_prefixed_log():
    code = ("import json, os; c = json.loads(os.environ['TF_CONFIG']); "
            "print(c['task']['index'], len(c['cluster']['worker']), os.environ['TF_NUM_INTRAOP_THREADS'])")
    exit_code, out = run(code, 3, threads_per_worker=1)
    assert exit_code == 0
    assert sorted(out.splitlines()) == ["[worker 0] 0 3 1", "[worker 1] 1 3 1", "[worker 2] 2 3 1"]


def test_a_failing_worker_stops_the_others_and_sets_the_exit_code():
    code = ("import json, os, sys, time; i = json.loads(os.environ['TF_CONFIG'])['task']['index']\n"
            "if i == 1: sys.exit(3)\n"
            "time.sleep(60)")
    start = time.monotonic()
    exit_code, _ = run(code, 2)
    assert exit_code == 3
    assert time.monotonic() - start < 30  # the sleeper was stopped, not waited for


def test_ctrl_c_is_forwarded_to_every_worker(tmp_path):
    code = ("import signal, sys, time, json, os\n"
            "i = json.loads(os.environ['TF_CONFIG'])['task']['index']\n"
            f"signal.signal(signal.SIGINT, lambda *a: (open(r'{tmp_path}/%d' % i, 'w').close(), sys.exit(1)))\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)")
    launcher = subprocess.Popen([sys.executable, "-m", "tfpar.launch", "-n", "2", "--", sys.executable, "-c", code],
                                stdout=subprocess.PIPE, text=True)
    try:
        ready = [launcher.stdout.readline() for _ in range(2)]
        assert all("ready" in line for line in ready)
        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(timeout=30) != 0
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0", "1"]


def test_cli_requires_a_command_and_positive_n(capsys):
    with pytest.raises(SystemExit):
        launch.main(["-n", "2"])
    assert "give the command to run after --" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        launch.main(["-n", "0", "--", "true"])
    assert "-n must be >= 1" in capsys.readouterr().err
