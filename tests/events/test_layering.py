"""events/ is the bottom layer: it imports nothing from maker/ or replay/, and has a sorted face."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import events

PACKAGE_DIR = Path(events.__file__).resolve().parent
FORBIDDEN = {"maker", "replay"}


def forbidden_imports(source: str, module_parts: tuple[str, ...]) -> list[str]:
    """Imports in ``source`` (the module named by ``module_parts``) that reach maker/ or replay/.

    A relative import that climbs out of the top-level package can only mean a sibling package,
    so it counts as forbidden whatever it names.
    """
    found: list[str] = []
    depth = len(module_parts) - 1  # how many packages enclose the module
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in FORBIDDEN]
        elif isinstance(node, ast.ImportFrom):
            written = "." * node.level + (node.module or "")
            escapes = node.level > depth
            absolute = node.level == 0 and (node.module or "").split(".")[0] in FORBIDDEN
            if escapes or absolute:
                found.append(written)
    return found


def module_parts(path: Path) -> tuple[str, ...]:
    relative = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
    return tuple(relative.parts)


def test_events_imports_nothing_from_maker_or_replay() -> None:
    files = sorted(PACKAGE_DIR.rglob("*.py"))
    assert PACKAGE_DIR / "_log.py" in files
    offenders = {
        str(path.relative_to(PACKAGE_DIR.parent)): bad
        for path in files
        if (bad := forbidden_imports(path.read_text(), module_parts(path)))
    }
    assert offenders == {}


@pytest.mark.parametrize(
    "source",
    [
        "import maker",
        "import maker._engine as engine",
        "import os, replay.export",
        "from maker import Engine",
        "from replay._verify import verify",
        "from .. import maker",
        "from ..maker import Engine",
        "from ...elsewhere import thing",
        "def f():\n    from maker import Engine\n",
        "try:\n    import replay\nexcept ImportError:\n    pass\n",
    ],
)
def test_the_import_check_catches_forbidden_imports(source: str) -> None:
    assert forbidden_imports(source, ("events", "_log"))


@pytest.mark.parametrize(
    "source",
    [
        "import msgspec",
        "from . import _codec",
        "from ._types import Event",
        "from .._log import EventLog",  # from events/sub/mod.py: still inside events
        "import makers_guide",
        "from replayable import x",
    ],
)
def test_the_import_check_allows_the_package_and_third_parties(source: str) -> None:
    parts = ("events", "sub", "mod") if source.startswith("from ..") else ("events", "_log")
    assert forbidden_imports(source, parts) == []


def isort_key(name: str) -> tuple[int, list[int | str]]:
    """The order ruff's RUF022 keeps ``__all__`` in: CONSTANTS, then Classes, then the rest,
    each in natural order (digit runs compare as numbers)."""
    if len(name) > 1 and name.isupper():
        kind = 0
    elif name[:1].isupper():
        kind = 1
    else:
        kind = 2
    natural: list[int | str] = [
        int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)
    ]
    return kind, natural


def test_isort_key_orders_like_ruff() -> None:
    names = ["decode", "Event", "SCHEMA_VERSION", "A", "v10", "v9", "APPLICATION_ID", "_x"]
    assert sorted(names, key=isort_key) == [
        "APPLICATION_ID",
        "SCHEMA_VERSION",
        "A",
        "Event",
        "_x",
        "decode",
        "v9",
        "v10",
    ]


def test_public_names_are_sorted_and_exist() -> None:
    names = events.__all__
    assert names == sorted(names, key=isort_key)
    assert len(names) == len(set(names))
    for name in names:
        assert hasattr(events, name), name


def test_every_public_class_and_function_is_exported() -> None:
    public = {
        name
        for name, value in vars(events).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("events.")
    }
    assert public <= set(events.__all__)
