"""The README opens with the two commands; CI runs the second as written."""

import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_opens_with_exactly_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[0].startswith("```") and lines[3] == "```"
    assert lines[1] == "pip install . && python -m tfpar.train"
    assert lines[2] == "pip install '.[test]' && python -m pytest -q tests"


def test_ci_runs_the_second_readme_command():
    # As written, and last: .ci/run's Bazel step comes before it
    # (tests/test_build.py checks that step).
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    readme = (ROOT / "README.md").read_text().splitlines()
    assert script[-1] == readme[2]


def test_the_layout_section_names_every_module():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    layout = layout[: layout.index("\n```\n", layout.index("```") + 3)]
    missing = []
    for path in sorted((ROOT / "tfpar").rglob("*.py")):
        folder = path.parent.relative_to(ROOT).as_posix() + "/"
        if path.name in ("__init__.py", "__main__.py") and folder != "tfpar/":
            continue  # a package's folder line speaks for it
        if folder in ("tfpar/models/", "tfpar/bench/"):
            named = path.stem in layout or path.name in layout
        else:
            named = f" {path.name} " in layout or f" {path.name}," in layout or f", {path.name} " in layout
        if not named:
            missing.append(str(path.relative_to(ROOT)))
    assert missing == [], "add these to the README's layout section"
