"""Writes BUILD (Bazel) from the tree: `python tools/update_build.py`.

A py_library per layer of the package (LIBRARIES, lowest first), a
py_binary per command and a py_test per test file, run through pytest by
tests/pytest_main.py. Each library's third-party deps are read from its
imports. tests/test_build.py fails when BUILD differs from what this script
writes, so adding a module or a test means running it once; and
tests/test_imports.py fails when a module imports from a library its own
does not list. The script also writes the offline stand-in for @pypi
(tools/bazel_offline/pypi/BUILD), a target per requirement BUILD names.

Bazel 4.2 builds it (WORKSPACE, .bazelrc). Online, rules_python and pip
provide the packages: `bazel test //...`. Offline, as CI runs it (.ci/run),
stand-ins replace everything Bazel would download, and the packages are
those of the Python on PATH:

    tools/bazel_offline/bazel test --test_tag_filters=standalone //...

builds every target and runs the tests in STANDALONE_TESTS.
"""

from __future__ import annotations

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Named for the command, but the benchmarks' binary is bench_main: "bench"
# is the layer's library (LIBRARIES), and a package's names are unique.
BINARIES = {"train": "tfpar/train.py", "bench_main": "tfpar/bench/__main__.py",
            "launch": "tfpar/launch.py", "server": "tfpar/server.py"}
# name, what it holds (a folder or files), the libraries it may import.
LIBRARIES = [
    ("core", ["tfpar/core/"], []),
    ("comm", ["tfpar/comm/"], ["core"]),
    ("replication", ["tfpar/replication/"], ["core", "comm"]),
    ("pipeline", ["tfpar/pipeline/"], ["core"]),
    ("cluster", ["tfpar/cluster/"], ["core"]),
    ("strategies", ["tfpar/strategies/"], ["core", "comm", "replication", "pipeline", "cluster"]),
    ("planner", ["tfpar/planner/"], ["core", "replication", "pipeline", "strategies"]),
    ("models", ["tfpar/models/"], ["pipeline"]),
    ("tfpar", ["tfpar/"], ["core", "comm", "replication", "pipeline", "cluster", "strategies", "planner",
                          "models"]),
    ("bench", ["tfpar/bench/"], ["tfpar", "core", "comm", "pipeline", "cluster", "planner"]),
]
# Top-level import name -> pip requirement.
REQUIREMENTS = {"tensorflow": "tensorflow", "keras": "keras", "numpy": "numpy", "absl": "absl-py",
                "sklearn": "scikit-learn", "matplotlib": "matplotlib"}
# Used without an import: Keras' TensorBoard callback needs the package.
RUNTIME_REQUIREMENTS = {"tfpar": ["tensorboard"]}
TEST_SUPPORT = ("tests/conftest.py", "tests/multi_worker_job.py")
RUNNER = "tests/pytest_main.py"  # every py_test's entry point
# The test files CI runs under Bazel, which their targets' tag "standalone"
# selects (.ci/run). Each imports nothing from tests/ but other test files, so
# its target depends on the package and pytest only, without conftest.py (no
# logical devices), and all of them take seconds. All but the planner's load
# no TensorFlow (tfpar.planner imports it). CI builds the other targets too,
# without running them.
STANDALONE_TESTS = [
    "tests/core/test_checks.py", "tests/core/test_shares.py", "tests/core/test_table.py",
    "tests/pipeline/test_partition.py", "tests/pipeline/test_schedule.py",
    "tests/planner/test_calibrate.py", "tests/planner/test_search.py",
]
PYPI_STANDIN = "tools/bazel_offline/pypi/BUILD"
HEADER = """\
# Bazel build for tfpar, written by tools/update_build.py (tests/test_build.py
# checks it is current, so it cannot fall behind the tree; the script's
# docstring has the commands). Third-party packages are requirement() labels:
# pip's wheels through rules_python (WORKSPACE) online, and offline, as CI
# builds every target and runs those tagged "standalone", stand-ins for the
# packages of the Python the tests run on (tools/bazel_offline/).

load("@rules_python//python:defs.bzl", "py_binary", "py_library", "py_test")
load("@pypi//:requirements.bzl", "requirement")

package(default_visibility = ["//visibility:public"])
"""


def render() -> str:
    """The BUILD file for the tree as it is now."""
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tfpar").rglob("*.py"))
    tests = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py"))
    support = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*.py")
                     if not p.name.startswith("test_"))
    parts = [HEADER]
    members = {name: [s for s in sources if library_of(s) == name] for name, _, _ in LIBRARIES}
    for name, _, deps in LIBRARIES:
        needed = sorted({REQUIREMENTS[m] for f in members[name] for m in _third_party(ROOT / f)}
                        | set(RUNTIME_REQUIREMENTS.get(name, [])))
        parts.append(_rule("py_library", name, [
            f"srcs = {_list(_quoted(members[name]))}",
            f"deps = {_list(_quoted(f':{d}' for d in deps) + [f'requirement({q})' for q in _quoted(needed)])}",
        ]))
    for name, main in BINARIES.items():
        library = library_of(main)
        parts.append(_rule("py_binary", name, [f'srcs = ["{main}"]', f'main = "{main}"',
                                               f'deps = [":{library}"]']))
    parts.append(_rule("py_library", "test_support", [
        "testonly = True", f"srcs = {_list(_quoted(support))}", 'imports = ["tests"]',
        'deps = [":tfpar", ":bench", requirement("pytest")]',
    ]))
    unknown = sorted(set(STANDALONE_TESTS) - set(tests))
    if unknown:
        raise ValueError(f"STANDALONE_TESTS names files that do not exist: {unknown}")
    for test in tests:
        name = test[len("tests/"):-len(".py")].replace("/", "_")
        # The test files it imports, which pytest finds next to it.
        folder = pathlib.Path(test).parent
        siblings = sorted(f"{folder}/{m}.py" for m in _imports(ROOT / test) if f"{folder}/{m}.py" in tests)
        # pytest runs the file: a test file as `main` would only define
        # its tests and exit 0. No __init__.py made in the runfiles: tests/
        # has none, so pytest imports each test file by its own name, and
        # one test file imports another (`from test_search import ...`).
        attributes = [f"srcs = [{', '.join(_quoted([test, *siblings, RUNNER]))}]",
                      f'main = "{RUNNER}"', f'args = ["{test}"]', "legacy_create_init = False"]
        if test in STANDALONE_TESTS:
            # Seconds each: small's minute is ample (medium's five would hide a hang).
            attributes.insert(0, 'size = "small"')
            needs = sorted({m for f in [test, *siblings] for m in _imports(ROOT / f)}
                           & {pathlib.Path(s).stem for s in support if s != RUNNER})
            if needs:
                raise ValueError(f"{test} is in STANDALONE_TESTS but imports {needs} from tests/")
            attributes += ['tags = ["standalone"]',
                           'deps = [":tfpar", requirement("pytest"), requirement("pytest-xdist")]']
        else:
            attributes.insert(0, 'size = "medium"')
            data = '["README.md", ".ci/run", "BUILD"] + glob(["notebooks/*.ipynb", "docs/*.md"])'
            attributes += [f"data = {data}", 'deps = [":test_support", requirement("pytest-xdist")]']
        parts.append(_rule("py_test", name, attributes))
    return "\n".join(parts)


def render_pypi_standin(build: str) -> str:
    """tools/bazel_offline/pypi/BUILD: an empty py_library per requirement
    `build` names, for the offline config (tools/bazel_offline/README.md)."""
    names = sorted(set(re.findall(r'requirement\("([^"]+)"\)', build)))
    parts = ["""\
# Offline stand-in for @pypi, written by tools/update_build.py: a target per
# requirement BUILD names, empty because offline the packages are the ones
# installed in the Python the tests run on (tools/bazel_offline/README.md).

package(default_visibility = ["//visibility:public"])
"""]
    parts += [f'py_library(name = "{name}")\n' for name in names]
    return "\n".join(parts)


def library_of(path: str) -> str:
    """The library a source file belongs to: the most specific match."""
    best = None
    for name, holds, _ in LIBRARIES:
        for item in holds:
            if path == item or (item.endswith("/") and path.startswith(item)):
                if best is None or len(item) > best[0]:
                    best = (len(item), name)
    if best is None:
        raise ValueError(f"{path} is in no library of tools/update_build.py's LIBRARIES")
    return best[1]


def library_deps(name: str) -> list[str]:
    """The libraries `name` may import."""
    return next(deps for library, _, deps in LIBRARIES if library == name)


def _third_party(path: pathlib.Path) -> set[str]:
    return _imports(path) & set(REQUIREMENTS)


def _imports(path: pathlib.Path) -> set[str]:
    """The top-level names `path` imports (absolute imports only)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _rule(kind: str, name: str, attributes: list[str]) -> str:
    body = "".join(f"    {a},\n" for a in attributes)
    return f'{kind}(\n    name = "{name}",\n{body})\n'


def _quoted(items) -> list[str]:
    return [f'"{item}"' for item in items]


def _list(items) -> str:
    """A Bazel list of already-quoted items, one per line when several."""
    items = list(items)
    if len(items) <= 1:
        return "[" + ", ".join(items) + "]"
    return "[\n" + "".join(f"        {item},\n" for item in items) + "    ]"


if __name__ == "__main__":
    build = render()
    (ROOT / "BUILD").write_text(build)
    (ROOT / PYPI_STANDIN).write_text(render_pypi_standin(build))
    print(f"wrote {ROOT / 'BUILD'} and {ROOT / PYPI_STANDIN}")
