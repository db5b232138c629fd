"""The kinds of log the store's tests run on: a file layout (schema version) and a writer.

A test that asks for ``log_kind`` (a module does it for all its tests with
``pytest.mark.usefixtures("log_kind")``) runs once per kind its closest ``log_kinds`` mark names
(see ``_kinds.py``), with ``EventLog``'s defaults set to that kind, so every log the test makes
(through helpers and engines too) is of it. Each test is written once; its mark says what it
holds for.
"""

from __future__ import annotations

import pytest

from events import EventLog

from ._kinds import LogKind


def kind_id(kind: LogKind) -> str:
    return f"v{kind[0]}-{kind[1]}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "log_kinds(*kinds): the (schema version, writer) kinds of log a test runs on"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "log_kind" not in metafunc.fixturenames:
        return
    mark = metafunc.definition.get_closest_marker("log_kinds")
    if mark is None:
        raise pytest.UsageError(f"{metafunc.definition.nodeid} asks for log_kind but no log_kinds")
    metafunc.parametrize("log_kind", mark.args, ids=kind_id, indirect=True)


@pytest.fixture
def log_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> LogKind:
    """The kind of log this test runs on, made ``EventLog``'s default for its duration."""
    kind: LogKind = request.param
    defaults = EventLog.__init__.__kwdefaults__
    assert defaults is not None
    monkeypatch.setitem(defaults, "schema_version", kind[0])
    monkeypatch.setitem(defaults, "writer", kind[1])
    return kind
