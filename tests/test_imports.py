"""No import cycles inside tfpar, late (function-level) imports included,
and every import follows BUILD's layering.

A cycle hidden by a late import still ties the modules into one knot: the
layering (core < pipeline, cluster < strategies < tfpar's surface < bench)
must read from the imports alone.
"""

import ast
import importlib.util
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "tfpar"


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: pathlib.Path, modules: set) -> set:
    """The tfpar modules `path` imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tfpar"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tfpar"))
    return found & modules


def graph() -> dict:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    # A package's __init__ re-exports its modules; importing a module also
    # runs its package's __init__, which is not a dependency of the module.
    return {name: {d for d in imports_of(path, modules) if not name.startswith(d + ".")}
            for name, path in paths.items()}


def find_cycle(edges: dict) -> list | None:
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == "open":
                return trail[trail.index(dep):] + [dep]
            if dep not in state:
                cycle = visit(dep, trail + [dep])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for start in sorted(edges):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def module_path(name: str) -> str:
    path = PACKAGE.parent / pathlib.Path(*name.split("."))
    return str((path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).relative_to(PACKAGE.parent))


def build_layers():
    spec = importlib.util.spec_from_file_location("update_build", PACKAGE.parent / "tools" / "update_build.py")
    layers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layers)
    return layers


def layering_violations(edges: dict, library_of, library_deps) -> list[str]:
    found = []
    for module, deps in sorted(edges.items()):
        library = library_of(module_path(module))
        for dep in sorted(deps):
            other = library_of(module_path(dep))
            if other != library and other not in library_deps(library):
                found.append(f"{module} (:{library}) imports {dep} (:{other})")
    return found


def test_layering_check_finds_an_upward_import():
    layers = build_layers()
    upward = {"tfpar.core.checks": {"tfpar.strategies.registry"}}
    assert layering_violations(upward, layers.library_of, layers.library_deps) == [
        "tfpar.core.checks (:core) imports tfpar.strategies.registry (:strategies)"]


def test_every_import_follows_the_build_layering():
    layers = build_layers()
    assert layering_violations(graph(), layers.library_of, layers.library_deps) == [], \
        "import from a lower library, or add the dep in tools/update_build.py's LIBRARIES"


def test_tfpar_has_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle inside tfpar: " + " -> ".join(cycle)
