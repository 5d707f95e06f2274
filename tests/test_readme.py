"""The README opens with the two commands; CI runs the second as written."""

import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_opens_with_exactly_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[0].startswith("```") and lines[3] == "```"
    assert lines[1] == "pip install . && python -m tfpar.train"
    assert lines[2] == "pip install '.[test]' && python -m pytest -q tests"


def test_ci_runs_the_second_readme_command():
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    readme = (ROOT / "README.md").read_text().splitlines()
    assert script[-1] == readme[2]
