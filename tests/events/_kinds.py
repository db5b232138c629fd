"""The kinds of log the store's tests run on (see conftest.py)."""

from __future__ import annotations

from typing import Literal

import pytest

from events import WriterKind

LogKind = tuple[Literal[1, 2], WriterKind]

EVERY_KIND: tuple[LogKind, ...] = ((1, "thread"), (2, "thread"), (2, "process"))
"""What a test of the log's contract, whatever the layout, runs on: both layouts with the
thread writer, and the default layout with the process writer."""

V1_KINDS: tuple[LogKind, ...] = ((1, "thread"), (1, "process"))
"""What a test that reads version 1 rows with plain SQL runs on: version 1 files are still
continued in their own layout, by either writer."""

V2_KINDS: tuple[LogKind, ...] = ((2, "thread"), (2, "process"))
"""What a test of the version 2 layout runs on."""


def log_kinds(*kinds: LogKind) -> pytest.MarkDecorator:
    """Run the marked tests (or module, as ``pytestmark``) on these kinds of log."""
    return pytest.mark.log_kinds(*kinds)
