"""What every event store offers, and the one way to open one from a target string.

A target is a path (a SQLite file, :class:`events.EventLog`) or a ``postgresql://`` (or
``postgres://``) URL (a PostgreSQL database, :class:`events.PostgresLog`). Both stores hold the
same rows: the same compact bodies, blobs and dictionaries, the same hash chain and heads, so a
run reads, verifies and exports the same from either.

:class:`Store` is what the engine, the run handles and the readers use of a log, and nothing
more: a store is an async context manager that appends without awaiting, bounds its queue
(:meth:`Store.room`), commits in batches (:meth:`Store.flush`), continues a run
(:meth:`Store.attach`) and reads runs back in seq order.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self, runtime_checkable

from ._targets import DATABASE_SCHEMES, is_database_url, redact_url
from ._types import AnyEvent, Event

if TYPE_CHECKING:
    from ._log import LogStatistics, RunInfo, WriterKind

__all__ = ["DATABASE_SCHEMES", "Store", "is_database_url", "open_log", "redact_url"]


@runtime_checkable
class Store(Protocol):
    """An append-only log of many runs' events: :class:`events.EventLog` (SQLite) or
    :class:`events.PostgresLog`.

    ``path`` is the target it was opened with (a file's path, or the database URL) and is what
    messages name; ``mode`` is ``"w"`` or ``"r"``.
    """

    path: str
    mode: Literal["w", "r"]

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...

    @property
    def schema_version(self) -> int: ...

    @property
    def full(self) -> bool: ...

    async def room(self) -> None: ...

    async def put(self, event: Event) -> None: ...

    def append(self, event: Event) -> None: ...

    async def attach(self, run_id: str) -> int: ...

    async def flush(self) -> None: ...

    def statistics(self) -> LogStatistics: ...

    @property
    def writer_pid(self) -> int | None: ...

    def read(
        self, run_id: str, *, after_seq: int = -1, steps: tuple[int, int] | None = None
    ) -> AsyncGenerator[AnyEvent, None]: ...

    def tail(self, run_id: str, *, after_seq: int = -1) -> AsyncGenerator[AnyEvent, None]: ...

    async def runs(self) -> list[RunInfo]: ...

    async def run(self, run_id: str | None = None) -> RunInfo: ...


def open_log(
    target: str | os.PathLike[str],
    *,
    mode: Literal["w", "r"] = "w",
    writer: WriterKind | None = None,
    **options: Any,
) -> Store:
    """The store ``target`` names, not open yet (use it as ``async with``).

    A ``postgresql://`` or ``postgres://`` URL opens a :class:`events.PostgresLog`; anything
    else is a path and opens an :class:`events.EventLog`. ``writer`` is where a SQLite log's
    writer runs (see :class:`events.EventLog`); a PostgreSQL store encodes on the event loop's
    thread and leaves the rest to the server, so it has no writer process to ask for and takes
    either. ``options`` are the stores' own (``batch_size``, ``commit_interval``,
    ``max_pending``, ...).
    """
    if is_database_url(target):
        from ._postgres import PostgresLog

        assert isinstance(target, str)
        return PostgresLog(target, mode=mode, **options)
    from ._log import EventLog

    if writer is not None:
        options["writer"] = writer
    return EventLog(target, mode=mode, **options)
