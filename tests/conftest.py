"""Shared fixtures. aiosqlite needs asyncio, so every async test runs on that backend."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
