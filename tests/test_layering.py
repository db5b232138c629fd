"""The layers, read from the imports themselves: every import in the three packages (at module
level, in a function, under ``TYPE_CHECKING``) points to its own layer or one below, and no
chain of imports comes back to where it started.

From the bottom: ``events`` (the log), ``maker.core`` (what MAKER decides, no I/O),
``maker.tasks``, ``maker.clients``, ``maker.engine``, ``maker.otel``, ``replay``, then
``maker.apps`` (CLI, HTTP service, servers, MCP) and last the face, ``maker`` itself, which
nothing in the project imports.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOPS = ("events", "maker", "replay")

LAYERS = (
    "events",
    "maker.core",
    "maker.tasks",
    "maker.clients",
    "maker.engine",
    "maker.otel",
    "replay",
    "maker.apps",
    "maker",
)
"""Bottom first. A module belongs to the longest of these its name starts with; ``maker``
itself is the face (its ``__init__`` and ``__main__``)."""

HEAVY = ("click", "rich", "aiohttp", "mcp", "openai", "anthropic", "opentelemetry.sdk")
"""What ``import maker`` must not load: the CLI's, the servers' and the providers' dependencies,
and the OpenTelemetry SDK (an application's choice, not a library's)."""


def layer_of(module: str) -> int:
    """The rank of ``module``'s layer (0 is the bottom)."""
    best = -1
    for rank, prefix in enumerate(LAYERS):
        if (module == prefix or module.startswith(prefix + ".")) and (
            best < 0 or len(prefix) > len(LAYERS[best])
        ):
            best = rank
    if best < 0:
        raise KeyError(module)
    return best


def imports_of(
    source: str, module: str, *, is_package: bool, modules: frozenset[str] | set[str]
) -> set[str]:
    """The project modules ``source`` (the module ``module``) imports, wherever the import is.

    ``from X import name`` imports ``X.name`` when that is a module, else ``X``: so a module's
    ``from . import _sibling`` is an arrow to the sibling, not to its package's face.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                child = f"{target}.{alias.name}"
                found.add(child if child in modules else target)
    return {m for m in found if m in modules and m != module}


def project_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for top in TOPS:
        for path in (ROOT / top).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    names = frozenset(modules)
    return {
        name: imports_of(
            path.read_text(), name, is_package=path.name == "__init__.py", modules=names
        )
        for name, path in modules.items()
    }


def climbing(graph: dict[str, set[str]]) -> list[str]:
    """The imports that point to a higher layer than their module's."""
    return sorted(
        f"{source} -> {target}"
        for source, targets in graph.items()
        for target in targets
        if layer_of(target) > layer_of(source)
    )


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the chain of modules, or None."""
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack, node, nxt]
            if nxt not in state and (found := visit(nxt, [*stack, node])):
                return found
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (found := visit(name, [])):
            return found
    return None


def test_every_module_has_a_layer() -> None:
    modules = project_modules()
    assert "maker.engine._engine" in modules
    for name in modules:
        layer_of(name)  # raises for a module outside every layer


def test_no_import_climbs_a_layer() -> None:
    assert climbing(import_graph(project_modules())) == []


def test_there_is_no_import_cycle() -> None:
    assert cycle(import_graph(project_modules())) is None


def _graph_of(sources: dict[str, str]) -> dict[str, set[str]]:
    known = set(sources) | set(project_modules())
    return {
        name: imports_of(text, name, is_package=False, modules=known)
        for name, text in sources.items()
    }


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("maker.core._tally", "def f():\n    from ..engine import Engine\n"),
        ("maker.core._tally", "if TYPE_CHECKING:\n    from maker.engine._engine import Engine\n"),
        ("maker.engine._engine", "import replay"),
        ("maker.engine._engine", "from maker import Engine"),
        ("replay._fold", "def f():\n    import maker.apps.cli\n"),
        ("events._log", "try:\n    from maker.core import Task\nexcept ImportError:\n    pass\n"),
        ("maker.tasks._hanoi", "from ..clients import make_client"),
    ],
)
def test_the_layer_check_catches_an_import_that_climbs(module: str, source: str) -> None:
    assert climbing(_graph_of({module: source}))


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("maker.engine._engine", "def f():\n    from ..core._errors import ConfigError\n"),
        ("replay._fold", "from maker.engine import Engine"),
        ("maker.apps.cli._cli", "import replay"),
        ("maker.core._tally", "import msgspec\nfrom . import _errors"),
    ],
)
def test_the_layer_check_allows_imports_down_or_level(module: str, source: str) -> None:
    assert climbing(_graph_of({module: source})) == []


def test_the_cycle_check_catches_a_cycle_through_a_function_level_import() -> None:
    graph = _graph_of(
        {
            "maker.engine._a": "from ._b import x",
            "maker.engine._b": "def f():\n    from ._a import y\n",
        }
    )
    assert cycle(graph) == ["maker.engine._a", "maker.engine._b", "maker.engine._a"]


def test_import_maker_loads_the_library_alone() -> None:
    code = (
        "import json, sys; import maker; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{sorted({h.split('.')[0] for h in HEAVY})!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    loaded = json.loads(out)
    heavy = [m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert heavy == []


def test_the_face_loads_the_servers_names_on_first_use() -> None:
    code = (
        "import sys, maker; before = 'maker.apps.service' in sys.modules; "
        "serve = maker.serve; print(before, 'maker.apps.service' in sys.modules, "
        "serve.__module__, 'serve' in dir(maker))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    assert out == ["False", "True", "maker.apps.service._service", "True"]
