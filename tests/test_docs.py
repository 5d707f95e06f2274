"""The docs: the API reference is generated from the docstrings and current;
the strategy guide and README point to each other."""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_generator():
    spec = importlib.util.spec_from_file_location("api_docs", ROOT / "tools" / "api_docs.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    return generator


def test_api_reference_is_generated_from_the_current_docstrings():
    assert (ROOT / "docs" / "api.md").read_text() == load_generator().render(), \
        "run: python tools/api_docs.py"


def test_api_reference_covers_the_public_api():
    text = (ROOT / "docs" / "api.md").read_text()
    for name in ("tfpar.fit_distributed(", "tfpar.strategies.GPipe(", "tfpar.strategies.MultiWorker(",
                 "tfpar.models.transformer(", "tfpar.datasets.tfrecord(", "tfpar.timeline.PipelineTimeline(",
                 "python -m tfpar.launch", "python -m tfpar.train"):
        assert name in text, name


def test_docstring_sections_render_as_markdown():
    generator = load_generator()

    def sample(x):
        """Does a thing.

        Args:
          x: the input.

        Example:
            >>> sample(1)
        """

    assert generator._doc(sample).split("\n") == [
        "Does a thing.", "", "", "**Args**", "", "```text", "x: the input.", "```", "",
        "**Example**", "", "```python", ">>> sample(1)", "```"]


def test_guide_answers_which_strategy_when_and_readme_links_the_docs():
    guide = (ROOT / "docs" / "guide.md").read_text()
    for point in ("fits on one device", "microbatches >= 4 x stages", "(K-1)/(M+K-1)",
                  "rematerialize=True", "schedule=\"1f1b\""):
        assert point in guide, point
    readme = (ROOT / "README.md").read_text()
    assert "docs/guide.md" in readme and "docs/api.md" in readme
