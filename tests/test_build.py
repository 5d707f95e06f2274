"""BUILD lists every module and test file, so it cannot rot; Bazel builds it
in CI (.ci/run), and these checks come first."""

import importlib.util
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_module_and_test_file_is_in_build():
    build = (ROOT / "BUILD").read_text()
    listed = set(re.findall(r'"((?:tfpar|tests)/[^"]+\.py)"', build))
    on_disk = {str(p.relative_to(ROOT)) for p in (ROOT / "tfpar").rglob("*.py")}
    on_disk |= {str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*.py")}
    assert sorted(on_disk - listed) == [], "add these files to BUILD"
    assert sorted(listed - on_disk) == [], "BUILD lists files that do not exist"


def test_each_test_file_has_its_own_py_test():
    build = (ROOT / "BUILD").read_text()
    tests = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py"))
    for test in tests:
        assert re.search(r'py_test\(\s*name = "[^"]+",[^)]*srcs = \["' + re.escape(test), build), test


def _generator():
    spec = importlib.util.spec_from_file_location("update_build", ROOT / "tools" / "update_build.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    return generator


def test_build_is_what_the_generator_writes():
    generator = _generator()
    build = generator.render()
    assert (ROOT / "BUILD").read_text() == build, "run: python tools/update_build.py"
    assert (ROOT / generator.PYPI_STANDIN).read_text() == generator.render_pypi_standin(build), \
        "run: python tools/update_build.py"


def test_target_names_are_unique():
    # Bazel refuses a package that declares a name twice.
    names = re.findall(r'^\w+\(\n    name = "([^"]+)"', (ROOT / "BUILD").read_text(), flags=re.M)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert names and duplicates == []


def test_the_requirements_file_has_every_requirement_build_names():
    named = set(re.findall(r'requirement\("([^"]+)"\)', (ROOT / "BUILD").read_text()))
    lines = (ROOT / "tools" / "bazel_requirements.txt").read_text().splitlines()
    listed = {re.match(r"[A-Za-z0-9._-]+", line).group() for line in lines if line and not line.startswith("#")}
    assert named == listed, "tools/bazel_requirements.txt and BUILD's requirement() names differ"


def test_ci_runs_the_standalone_bazel_tests_before_the_readme_command():
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    bazel = [i for i, line in enumerate(script) if line.startswith("tools/bazel_offline/bazel ")]
    assert len(bazel) == 1 and bazel[0] < len(script) - 1
    assert script[bazel[0]].endswith(" test --test_tag_filters=standalone //..."), script[bazel[0]]
    standalone = re.findall(r'py_test\(\n    name = "[^"]+",[^)]*tags = \["standalone"\]',
                            (ROOT / "BUILD").read_text())
    assert len(standalone) == len(_generator().STANDALONE_TESTS) > 0


def test_each_py_test_runs_its_file_through_pytest_and_fails_when_a_test_fails(tmp_path):
    build = (ROOT / "BUILD").read_text()
    targets = re.findall(r"py_test\((.*?)\n\)", build, flags=re.S)
    assert targets and all('main = "tests/pytest_main.py"' in t for t in targets)
    (tmp_path / "test_fails.py").write_text("def test_fails():\n    assert 1 == 2\n")
    (tmp_path / "test_passes.py").write_text("def test_passes():\n    assert 1 == 1\n")
    runner = [sys.executable, str(ROOT / "tests" / "pytest_main.py")]
    # From the tree's root, as Bazel runs a target from its runfiles root.
    failed = subprocess.run(runner + [str(tmp_path / "test_fails.py")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    passed = subprocess.run(runner + [str(tmp_path / "test_passes.py")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode != 0 and "1 failed" in failed.stdout, failed.stdout[-2000:]
    assert passed.returncode == 0 and "1 passed" in passed.stdout, passed.stdout[-2000:]
