"""Shared fixtures. aiosqlite needs asyncio, so every async test runs on that backend."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

# `HYPOTHESIS_PROFILE=stress pytest ...` searches far deeper than the default 100 examples;
# run it after touching a property-tested function, since CI draws fresh examples every time.
settings.register_profile("stress", max_examples=3000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# A real PostgreSQL server for the store's tests (session-scoped, started on first use).
from tests._postgres import postgres_server, postgres_url  # noqa: E402, F401
