"""The package's layout is its data flow (docs/design.md "Layout"): each part imports only the
parts below it, and no two modules import each other, even through others or inside a
function. Read from the source with ast, so a lazy import counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "kala_celery"

# Lowest first: a part may import its own modules and those of any earlier line.
LAYERS = [
    {"schedule"},  # pure
    {"config", "errors"},
    {"wire"},  # Kala JSON in and out, the limits of a body
    {"store"},  # tables, engine, schema, job rules, history
    {"broker"},  # the embedded broker's transport (on the store's SQLite)
    {"celery_app"},
    {"runs"},  # record, publish, attempts, sweep, heartbeats
    {"beat", "tasks"},  # the two Celery sides: neither imports the other
    {"api"},
    {"web"},
    {"webapp"},  # the API and the dashboard put together
    {"ops"},  # the commands
    {"wsgi", "metrics", "__main__"},  # entry points and kept public names
]
LAYER = {part: n for n, parts in enumerate(LAYERS) for part in parts}
# A package's __init__ may name something above it, lazily, where users have always imported
# it from there (README: `from kala_celery.api import init_kala`).
KEPT_FOR_USERS = {("api", "webapp")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The kala_celery modules that `path` imports, anywhere in it."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("kala_celery.")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            if not base.startswith("kala_celery"):
                continue
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in known else base)
    return {m for m in found if m != "kala_celery"}  # the root's __init__ is lazy: always fine


def part_of(module: str) -> str:
    return module.split(".")[1]


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def test_every_part_of_the_package_has_a_place_in_the_layers() -> None:
    parts = {part_of(m) for m in modules() if m != "kala_celery"}
    assert parts == set(LAYER)


@pytest.mark.parametrize("module", sorted(graph()))
def test_a_module_imports_only_its_own_part_and_the_parts_below(module: str) -> None:
    if module == "kala_celery":
        return  # the root's lazy names (create_app, make_celery, the default Celery app)
    mine = part_of(module)
    upward = sorted(
        target for target in graph()[module]
        if LAYER[part_of(target)] > LAYER[mine]
        or (LAYER[part_of(target)] == LAYER[mine] and part_of(target) != mine)
    )
    if module.count(".") == 1:  # a package's __init__
        upward = [t for t in upward if (mine, part_of(t)) not in KEPT_FOR_USERS]
    assert upward == [], f"{module} reaches up to {upward}"


def test_no_two_modules_import_each_other_even_through_others() -> None:
    edges = graph()
    cycles = []
    state: dict[str, int] = {}  # 1 = on the path, 2 = done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if target.startswith(module + "."):
                continue  # a package's __init__ naming its own modules
            if state.get(target) == 1:
                cycles.append([*path[path.index(target):], target])
            elif target in edges and not state.get(target):
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(edges):
        if not state.get(module):
            visit(module, [module])
    assert cycles == []


def test_every_package_says_what_it_holds_and_what_it_may_import() -> None:
    for init in PACKAGE.glob("*/__init__.py"):
        if init.parent.name == "migrations":
            continue
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "import" in doc and len(doc.splitlines()) >= 3, f"{init}: {doc!r}"
