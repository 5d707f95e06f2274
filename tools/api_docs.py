"""Writes docs/api.md from the docstrings: `python tools/api_docs.py`.

The reference lists each public name of tfpar with its signature and its
docstring as written in the code. tests/test_docs.py fails when docs/api.md
differs from what this script writes, so the reference cannot drift.
"""

from __future__ import annotations

import importlib
import inspect
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # document the tree, not an installed copy
# (module, names): None means the module's public functions and classes.
SECTIONS = [
    ("tfpar", ["fit_distributed", "predict_distributed", "evaluate_distributed",
               "configure_devices", "describe_placement"]),
    ("tfpar.strategies", None),
    ("tfpar.models", None),
    ("tfpar.datasets", None),
    ("tfpar.timeline", None),  # tfpar.pipeline.timeline, public as tfpar.timeline
    ("tfpar.pipeline.schedule", None),
    ("tfpar.pipeline.partition", None),
    ("tfpar.cluster", None),
    ("tfpar.cluster.checkpoint", None),
    ("tfpar.launch", ["launch"]),
]
COMMANDS = ["tfpar.train", "tfpar.launch", "tfpar.server", "tfpar.bench"]


def render() -> str:
    """docs/api.md as the code documents itself now."""
    out = ["# tfpar API reference", "",
           "Generated from the docstrings by `python tools/api_docs.py`; do not edit by hand.", ""]
    out += ["## Commands", ""]
    for name in COMMANDS:
        module = importlib.import_module(name if name != "tfpar.bench" else "tfpar.bench.__main__")
        out += [f"### `python -m {name}`", "", _doc(module), ""]
    for module_name, names in SECTIONS:
        module = _module(module_name)
        out += [f"## `{module_name}`", ""]
        if module_name != "tfpar":
            out += [_doc(module), ""]
        for name in names or _public(module):
            obj = getattr(module, name)
            out += [f"### `{module_name}.{name}{_signature(obj)}`", "", _doc(obj), ""]
            if inspect.isclass(obj):
                for method_name, method in _methods(obj):
                    out += [f"#### `{name}.{method_name}{_signature(method)}`", "", _doc(method), ""]
    return "\n".join(out).rstrip() + "\n"


def _module(name: str):
    """The module a public name stands for: imported, or an attribute of
    its package (tfpar.timeline is tfpar.pipeline.timeline)."""
    package, _, attribute = name.rpartition(".")
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        return getattr(importlib.import_module(package), attribute)


def _public(module) -> list[str]:
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [n for n, o in vars(module).items()
            if not n.startswith("_") and (inspect.isfunction(o) or inspect.isclass(o))
            and getattr(o, "__module__", None) == module.__name__]


def _methods(cls) -> list:
    """Public methods and properties the class itself defines and documents."""
    found = []
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, (classmethod, staticmethod)):
            member = member.__func__
        if (inspect.isfunction(member) or isinstance(member, property)) and inspect.getdoc(member):
            found.append((name, member))
    return found


def _signature(obj) -> str:
    if isinstance(obj, property) or not callable(obj):
        return ""
    try:
        text = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"
    return text.replace("self, ", "").replace("(self)", "()")


SECTION_HEADERS = ("Args:", "Returns:", "Raises:", "Attributes:", "Yields:")
EXAMPLE_HEADERS = ("Example:", "Examples:")


def _doc(obj) -> str:
    """A Google-style docstring as Markdown: prose as written, argument
    sections as preformatted text, examples and indented blocks as code."""
    doc = inspect.getdoc(obj) or "(undocumented)"
    out, section, body = [], None, []

    def flush():
        if section is None:
            out.extend(_prose(body))
        elif section in EXAMPLE_HEADERS:
            out.extend(["**Example**", "", "```python", *_dedent(body), "```", ""])
        else:
            out.extend([f"**{section[:-1]}**", "", "```text", *_dedent(body), "```", ""])

    for line in doc.splitlines():
        if line.strip() in SECTION_HEADERS + EXAMPLE_HEADERS and not line.startswith(" "):
            flush()
            section, body = line.strip(), []
        elif section is not None and line and not line.startswith(" "):
            flush()  # unindented text ends a section
            section, body = None, [line]
        else:
            body.append(line)
    flush()
    return "\n".join(out).strip()


def _prose(lines: list[str]) -> list[str]:
    """Paragraphs as written; indented blocks (commands, code) fenced."""
    out, block = [], False
    for line in lines:
        indented = line.startswith("    ")
        if indented and not block:
            out.append("```")
            block = True
        elif block and line.strip() and not indented:
            out.append("```")
            block = False
        out.append(line[4:] if block else line)
    if block:
        while out and not out[-1].strip():
            out.pop()
        out.append("```")
    return out + [""]


def _dedent(lines: list[str]) -> list[str]:
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    width = min((len(l) - len(l.lstrip()) for l in lines if l.strip()), default=0)
    return [l[width:] for l in lines]


if __name__ == "__main__":
    path = ROOT / "docs" / "api.md"
    path.write_text(render())
    print(f"wrote {path}")
