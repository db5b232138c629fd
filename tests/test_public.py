"""The public faces: sorted ``__all__`` that names real objects (the layers and import cycles:
``test_layering``)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (
    "events",
    "maker",
    "maker.apps.cli",
    "maker.apps.mcp",
    "maker.apps.serve_sim",
    "maker.apps.service",
    "maker.apps.worker",
    "maker.clients",
    "maker.core",
    "maker.engine",
    "maker.otel",
    "maker.tasks",
    "replay",
)


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


def test_events_depends_on_nothing_above_it() -> None:
    for path in (ROOT / "events").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import)\s+(maker|replay)\b", text, re.M), path
