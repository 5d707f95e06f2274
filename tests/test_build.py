"""BUILD lists every module and test file, so it cannot rot."""

import importlib.util
import pathlib
import re

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


def test_build_is_what_the_generator_writes():
    spec = importlib.util.spec_from_file_location("update_build", ROOT / "tools" / "update_build.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert (ROOT / "BUILD").read_text() == generator.render(), "run: python tools/update_build.py"
