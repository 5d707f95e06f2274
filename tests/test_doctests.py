"""Every docstring Example in tfpar runs, as the user would type it."""

import re
import subprocess
import sys
import types

import doctest_run


def test_every_docstring_example_holds():
    # Its own process: the Examples lay out 2 devices, these tests 4.
    done = subprocess.run([sys.executable, "tests/doctest_run.py"], cwd=doctest_run.ROOT,
                          capture_output=True, text=True, timeout=900)
    summary = re.search(r"doctests: (\d+) examples run, (\d+) failed", done.stdout)
    assert done.returncode == 0 and summary, done.stdout[-4000:] + done.stderr[-2000:]
    # About 100 today; far fewer means docstrings stopped being found.
    assert int(summary.group(1)) >= 90


def module_from(name: str, code: str, monkeypatch) -> str:
    module = types.ModuleType(name)
    exec(code, module.__dict__)  # its functions' globals are the module's
    monkeypatch.setitem(sys.modules, name, module)
    return name


def test_a_wrong_example_fails_the_run(monkeypatch):
    name = module_from("tfpar_fake_wrong", 'def f():\n    """>>> 1 + 1\n    3\n    """\n', monkeypatch)
    attempted, failed, _ = doctest_run.run([name])
    assert (attempted, failed) == (1, 1)


def test_a_skip_outside_the_list_fails_the_run(monkeypatch):
    name = module_from("tfpar_fake_skip", 'def g():\n    """>>> 1 + 1  # doctest: +SKIP\n    3\n    """\n',
                       monkeypatch)
    assert doctest_run.run([name])[2] == ["tfpar_fake_skip.g"]
