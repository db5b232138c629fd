"""The public faces: sorted ``__all__`` that names real objects, and no import cycles."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("events", "maker", "maker.tasks", "replay")


def _ruff_order(names: list[str]) -> list[str]:
    # RUF022's "isort-style" order: SCREAMING_CASE, then CamelCase, then the rest.
    def key(name: str) -> tuple[int, str]:
        if name.isupper() or re.fullmatch(r"[A-Z0-9_]+", name):
            return (0, name)
        if name[:1].isupper():
            return (1, name)
        return (2, name)

    return sorted(names, key=key)


@pytest.mark.parametrize("package", PACKAGES)
def test_all_is_sorted_and_names_real_objects(package: str) -> None:
    module = importlib.import_module(package)
    names = list(module.__all__)
    assert names == _ruff_order(names)
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(module, name), f"{package}.{name}"


def _module_imports(path: Path, module: str) -> set[str]:
    """Modules imported at module level (function bodies are lazy and cannot form a cycle)."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            for alias in node.names:
                found.add(f"{target}.{alias.name}")
    return found


def test_there_are_no_import_cycles_between_modules() -> None:
    modules: dict[str, Path] = {}
    for top in ("events", "maker", "replay"):
        for path in (ROOT / top).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    graph = {
        name: {m for m in _module_imports(path, name) if m in modules and m != name}
        for name, path in modules.items()
    }
    # A package's __init__ re-exporting its own submodules is not a cycle between modules.
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError(" -> ".join([*stack, node, nxt]))
            if nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_events_depends_on_nothing_above_it() -> None:
    for path in (ROOT / "events").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import)\s+(maker|replay)\b", text, re.M), path
