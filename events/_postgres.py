"""The append-only event log in a PostgreSQL database (asyncpg), behind the same contract as the
SQLite :class:`events.EventLog`.

Same rows as a SQLite log of schema version 3: an integer run key, the envelope in columns, the
compact msgpack body, interned zstd blobs and dictionaries, each row's hash chained to its
predecessor and each run's head (last seq and hash) in ``runs``, updated in the same transaction
as its rows. The rows are made by the same encoder (:class:`events._formats.V3Writer`), so a run
written here has the very bodies and hashes it would have in a fresh SQLite file, and the same
integrity checks read it (:mod:`events._postgres_check`).

What the database enforces rather than this code:

- **append-only**: triggers refuse UPDATE, DELETE and TRUNCATE on ``events``, ``blobs`` and
  ``dictionaries``; ``runs`` is the one table updated, a head at a time;
- **one writer per run**: ``(run, seq)`` is the primary key, so two writers can never
  interleave a run; a writer holds a session advisory lock on each run it writes (taken when it
  attaches, or in the transaction of the run's first rows), which the server drops when the
  writer's connection ends, a ``kill -9`` included; and a head moves only from the seq this
  writer last committed (``UPDATE ... WHERE head_seq = previous``);
- **ids across writers**: every writer claims a block of ids (an advisory lock on the block's
  number, the first free one) and numbers its runs, blobs and dictionaries inside it, so that
  several writers (the workers to come) never collide, and a lone writer numbers as a SQLite
  file does (block 0 continues from the largest id).

Appending is what :class:`events.EventLog` does with its thread writer: :meth:`append` encodes
and chains on the event loop's thread and never awaits; the queue is bounded (:meth:`room`,
:meth:`put`); a writer task commits batches (binary COPY, one transaction a batch) at least once
per ``commit_interval``, on its own connection. Each commit notifies the ``maker_events``
channel with the run ids it covers: :meth:`tail` sleeps on LISTEN instead of polling. Reads use
a small pool, each in one repeatable-read snapshot through a server-side cursor (memory holds a
batch of rows).

asyncpg is imported when a database is first opened: ``pip install 'maker[postgres]'``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

import anyio
import msgspec

from ._errors import (
    AmbiguousRunError,
    CorruptEventError,
    EventLogError,
    InvalidOptionError,
    LogClosedError,
    LogWriteError,
    NotALogError,
    RunBusyError,
    RunNotNamedError,
    SchemaVersionError,
    SequenceError,
    UnknownRunError,
)
from ._formats import V2Reader, V2Writer
from ._log import RunInfo
from ._queue import AppendQueue
from ._targets import redact_url
from ._types import SCHEMA_VERSION, AnyEvent, Event, RunFinished, RunStarted

if TYPE_CHECKING:
    from ._formats import _V2Batch

__all__ = ["PostgresLog", "StoreUnavailableError"]

VERSIONS = (2, 3)
"""Schema versions a database may hold (both version 2's layout); new ones are made in 3."""

APPLICATION = "maker"
"""``meta.application`` of every maker database: what tells it from another application's."""

CHANNEL = "maker_events"
"""The channel each commit notifies, with the id of every run it covers."""

ID_BLOCK = 1 << 40
"""Ids (run keys, blob and dictionary ids) per writer's block: a million million blobs."""

_LOCK_SPACE = 0x4D414B52  # "MAKR": the first key of the advisory locks on id blocks
_FETCH = 1024  # rows a reader fetches at a time

SCHEMA = """
CREATE TABLE meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
-- One row per run: its key in the events table and its head (last seq and hash), written in
-- the same transaction as its rows. Updated in place: the seal that makes truncation visible.
CREATE TABLE runs (
    key bigint PRIMARY KEY,
    run_id text NOT NULL UNIQUE,
    head_seq bigint NOT NULL,
    head_hash bytea NOT NULL,
    finished_seq bigint
);
CREATE TABLE events (
    run bigint NOT NULL,
    seq bigint NOT NULL,
    type integer NOT NULL,
    step bigint,
    ts double precision NOT NULL,
    body bytea NOT NULL,
    hash bytea NOT NULL,
    PRIMARY KEY (run, seq)
);
CREATE TABLE blobs (
    id bigint PRIMARY KEY,
    data bytea NOT NULL
);
CREATE TABLE dictionaries (
    id bigint PRIMARY KEY,
    data bytea NOT NULL
);
-- Blobs are zstd frames already: the server's own compression would only spend time.
ALTER TABLE blobs ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE FUNCTION maker_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the % table is append-only', TG_TABLE_NAME;
END
$$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION maker_append_only();
CREATE TRIGGER blobs_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON blobs
    FOR EACH STATEMENT EXECUTE FUNCTION maker_append_only();
CREATE TRIGGER dictionaries_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON dictionaries
    FOR EACH STATEMENT EXECUTE FUNCTION maker_append_only();
"""


class StoreUnavailableError(EventLogError):
    """The database cannot be reached or refuses us (down, wrong credentials, no such
    database, asyncpg missing). Nothing was read or written."""

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(f"cannot open {url}: {detail}")
        self.url = url
        self.detail = detail


def _asyncpg() -> Any:
    try:
        import asyncpg
    except ImportError:
        return None
    return asyncpg


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _failure_detail(exc: BaseException) -> str:
    """What went wrong in one line: the server's message, or the socket's."""
    if isinstance(exc, OSError) and exc.strerror:
        return _one_line(exc.strerror)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return _one_line(str(exc)) or type(exc).__name__


def database_errors() -> tuple[type[BaseException], ...]:
    """What a failing connection or statement raises (asyncpg's errors and the socket's)."""
    asyncpg = _asyncpg()
    errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)
    if asyncpg is not None:
        errors += (asyncpg.PostgresError, asyncpg.InterfaceError)
    return errors


async def connect(url: str, *, timeout: float = 10.0) -> Any:  # noqa: ASYNC109 (asyncpg's)
    """An asyncpg connection to ``url``, or :class:`StoreUnavailableError` in one line."""
    shown = redact_url(url)
    asyncpg = _asyncpg()
    if asyncpg is None:
        raise StoreUnavailableError(
            shown, "PostgreSQL logs need asyncpg (pip install 'maker[postgres]')"
        )
    try:
        return await asyncpg.connect(url, timeout=timeout)
    except database_errors() as exc:
        raise StoreUnavailableError(shown, _failure_detail(exc)) from None
    except ValueError as exc:  # a URL asyncpg cannot parse
        raise StoreUnavailableError(shown, _one_line(str(exc))) from None


async def identify(conn: Any, shown: str) -> int:
    """The schema version of the maker log in ``conn``'s database, 0 when it holds none (no
    table of ours); refuses another application's tables and a newer version."""
    found = await conn.fetchrow(
        "SELECT to_regclass('meta') IS NOT NULL, to_regclass('events') IS NOT NULL"
    )
    has_meta, has_events = bool(found[0]), bool(found[1])
    if not has_meta:
        if has_events:
            raise NotALogError(shown, "it has an events table but no maker meta table")
        return 0
    meta = {str(k): str(v) for k, v in await conn.fetch("SELECT key, value FROM meta")}
    if meta.get("application") != APPLICATION:
        raise NotALogError(shown, "its meta table belongs to another application")
    try:
        version = int(meta.get("schema_version", ""))
    except ValueError:
        raise NotALogError(shown, "its meta table holds no schema version") from None
    if version not in VERSIONS:
        raise SchemaVersionError(shown, version, SCHEMA_VERSION)
    return version


async def _create(conn: Any, shown: str, version: int) -> int:
    """Make the schema if the database holds none (one creator at a time); the version."""
    async with conn.transaction():
        # Two writers opening a new database at once: the second waits, then finds the schema.
        await conn.execute("SELECT pg_advisory_xact_lock($1, -1)", _LOCK_SPACE)
        found = await identify(conn, shown)
        if found:
            return found
        await conn.execute(SCHEMA)
        await conn.executemany(
            "INSERT INTO meta (key, value) VALUES ($1, $2)",
            [("application", APPLICATION), ("schema_version", str(version))],
        )
    return version


def run_lock(run_id: str) -> int:
    """The advisory lock key of a run: 64 bits of its id's hash, as PostgreSQL's bigint."""
    digest = hashlib.blake2b(b"maker run\x00" + run_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class _Writer(V2Writer):
    """The shared row encoder, told the key of a run found in the database (what
    :meth:`V2Writer.attach` learns from a SQLite connection)."""

    def learn(self, run_id: str, key: int) -> None:
        self._keys[run_id] = key
        self._run_ids[key] = run_id
        self._runs.pop(run_id, None)


class _V2(_Writer):
    version = 2


class _V3(_Writer):
    version = 3


class PostgresLog(AppendQueue):
    """An append-only log of many runs' events in a PostgreSQL database.

    Use it as an async context manager, as :class:`events.EventLog`; ``url`` is a
    ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB`` URL (query parameters as libpq's, and any
    other one a server setting, such as ``?search_path=maker`` for a schema of its own)::

        async with PostgresLog("postgresql://maker@db/maker") as log:
            log.append(event)
            async for ev in log.read(run_id):
                ...

    ``mode="w"`` makes the schema on first use if the database holds none (which needs the
    CREATE privilege on the schema, once); ``mode="r"`` never writes and refuses a database
    without one. The options mean what they mean for the SQLite log; ``pool_size`` bounds the
    reading connections (a tail holds none while it waits: one shared listening connection
    wakes them all).
    """

    def __init__(
        self,
        url: str,
        *,
        mode: Literal["w", "r"] = "w",
        batch_size: int = 16384,
        commit_interval: float = 0.05,
        max_pending: int = 65536,
        max_pending_bytes: int = 64 * 1024 * 1024,
        schema_version: int = SCHEMA_VERSION,
        pool_size: int = 8,
        connect_timeout: float = 10.0,
        poll_interval: float | None = None,
    ) -> None:
        if mode not in ("w", "r"):
            raise InvalidOptionError("mode", "'w' or 'r'", mode)
        if batch_size < 1:
            raise InvalidOptionError("batch_size", "at least 1", batch_size)
        if not commit_interval >= 0:
            raise InvalidOptionError("commit_interval", ">= 0", commit_interval)
        if max_pending < 1:
            raise InvalidOptionError("max_pending", "at least 1", max_pending)
        if max_pending_bytes < 1:
            raise InvalidOptionError("max_pending_bytes", "at least 1", max_pending_bytes)
        if schema_version not in VERSIONS:
            known = ", ".join(map(str, VERSIONS))
            raise InvalidOptionError("schema_version", f"one of {known}", schema_version)
        if pool_size < 1:
            raise InvalidOptionError("pool_size", "at least 1", pool_size)
        del poll_interval  # the SQLite log's; a tail here is woken by NOTIFY
        self.path = url
        self.shown = redact_url(url)
        self.mode: Literal["w", "r"] = mode
        self._batch_size = batch_size
        self._commit_interval = commit_interval
        self._new_version = schema_version
        self._pool_size = pool_size
        self._timeout = connect_timeout
        self._version = 0
        self._pool: Any = None
        self._conn: Any = None  # the writer's connection: its advisory locks are its runs
        self._conn_lock = anyio.Lock()
        self._format: _Writer | None = None
        self._block = (0, ID_BLOCK)
        self._init_queue(max_pending, max_pending_bytes)
        self._heads: dict[str, tuple[int, bytes]] = {}
        self._stored: dict[int, int] = {}  # run key -> head seq committed by this writer
        self._locked: set[str] = set()
        self._listener: Any = None
        self._listener_lock = anyio.Lock()
        self._waiters: dict[str, set[anyio.Event]] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        conn = await connect(self.path, timeout=self._timeout)
        try:
            if self.mode == "r":
                version = await identify(conn, self.shown)
                if not version:
                    raise NotALogError(
                        self.shown,
                        "the database holds no maker log yet; the first run written to it "
                        "makes one",
                    )
                self._version = version
                await conn.close()
            else:
                self._version = await _create(conn, self.shown, self._new_version)
                self._format = await self._open_writer(conn)
                self._conn = conn
            self._pool = await _asyncpg().create_pool(
                self.path, min_size=0, max_size=self._pool_size, timeout=self._timeout
            )
        except database_errors() as exc:
            await _close_quietly(conn)
            raise StoreUnavailableError(self.shown, _failure_detail(exc)) from None
        except BaseException:
            await _close_quietly(conn)
            raise
        if self.mode == "w":
            self._tg = anyio.create_task_group()
            await self._tg.__aenter__()
            self._tg.start_soon(self._writer)
        return self

    async def _open_writer(self, conn: Any) -> _Writer:
        """Claim the first free id block and continue its ids."""
        block = 0
        while not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", _LOCK_SPACE, block):
            block += 1
        lo, hi = block * ID_BLOCK, (block + 1) * ID_BLOCK
        self._block = (lo, hi)

        async def top(sql: str) -> int:
            return int(await conn.fetchval(sql, lo, hi))

        key = await top("SELECT coalesce(max(key), $1) FROM runs WHERE key >= $1 AND key < $2")
        blob = await top("SELECT coalesce(max(id), $1) FROM blobs WHERE id >= $1 AND id < $2")
        dictionary = await top(
            "SELECT coalesce(max(id), $1) FROM dictionaries WHERE id >= $1 AND id < $2"
        )
        dictionaries = {
            int(i): bytes(d) for i, d in await conn.fetch("SELECT id, data FROM dictionaries")
        }
        cls = _V3 if self._version == 3 else _V2
        return cls(
            next_key=key + 1,
            next_blob_id=blob + 1,
            next_dictionary_id=dictionary + 1,
            dictionaries=dictionaries,
            keys={},
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._closing = True
        self._wake.set()
        self._urgent.set()
        try:
            if self._tg is not None:
                # As the SQLite log: the shielded writer drains the queue before it returns.
                try:
                    await self._tg.__aexit__(None, None, None)
                finally:
                    self._tg = None
        finally:
            with anyio.CancelScope(shield=True):
                for conn in (self._conn, self._listener):
                    await _close_quietly(conn)
                self._conn = self._listener = None
                if self._pool is not None:
                    pool, self._pool = self._pool, None
                    try:
                        await pool.close()
                    except database_errors():
                        pool.terminate()
        return None

    @property
    def schema_version(self) -> int:
        """The database's schema version (0 before it is opened)."""
        return self._version

    # -- writing ---------------------------------------------------------------------------

    def _target(self) -> str:
        return self.shown

    def append(self, event: Event) -> None:
        """Queue an event for the writer. Never blocks (see :meth:`put`); raises if the seq
        does not follow on."""
        if self.mode != "w" or self._tg is None or self._closing:
            raise LogClosedError(f"{self.shown} is not open for appending")
        self._check_failure()
        head = self._heads.get(event.run_id)
        expected = 0 if head is None else head[0] + 1
        if event.seq != expected:
            raise SequenceError(event.run_id, expected, event.seq)
        assert self._format is not None
        queued = self._format.encode(event, b"" if head is None else head[1])
        self._heads[event.run_id] = (event.seq, queued.digest)
        self._appended += 1
        self._pending_bytes += queued.size
        pending = self._appended - self._written
        self._high_water = max(self._high_water, pending)
        self._high_water_bytes = max(self._high_water_bytes, self._pending_bytes)
        if self.full or pending >= self._batch_size:
            self._urgent.set()
        if not self._wake.is_set():
            self._wake.set()

    async def attach(self, run_id: str) -> int:
        """Continue an existing run: hold it, load and check its head. Returns the next seq."""
        if self._tg is None or self._closing:
            raise LogClosedError(f"{self.shown} is not open for appending")
        head = self._heads.get(run_id)
        if head is None:
            await self.flush()
            async with self._conn_lock:
                head = await self._load_head(run_id)
            self._heads[run_id] = head
        return head[0] + 1

    async def _load_head(self, run_id: str) -> tuple[int, bytes]:
        """Hold ``run_id`` and return its head, refusing a run whose head disagrees with its
        rows (continuing a truncated run would hide the truncation for good)."""
        conn = self._conn
        lock = run_lock(run_id)
        if run_id not in self._locked:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock):
                raise RunBusyError(self.shown, run_id, None)
            self._locked.add(run_id)
        try:
            stored = await conn.fetchrow(
                "SELECT key, head_seq, head_hash FROM runs WHERE run_id = $1", run_id
            )
            last = None
            if stored is not None:
                last = await conn.fetchrow(
                    "SELECT seq, hash FROM events WHERE run = $1 ORDER BY seq DESC LIMIT 1",
                    stored[0],
                )
            check = f"check it with 'maker verify {self.shown}'"
            if stored is None:
                raise UnknownRunError(run_id)
            sealed = (int(stored[1]), bytes(stored[2]))
            if last is None:
                raise CorruptEventError(
                    f"{self.shown}: run {run_id} has a head at seq {sealed[0]} but no rows "
                    f"(deleted); {check}"
                )
            found = (int(last[0]), bytes(last[1]))
            if found != sealed:
                raise CorruptEventError(
                    f"{self.shown}: run {run_id} ends at seq {found[0]} but its head says "
                    f"{sealed[0]}; {check}"
                )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.execute("SELECT pg_advisory_unlock($1)", lock)
            self._locked.discard(run_id)
            raise
        key = int(stored[0])
        assert self._format is not None
        self._format.learn(run_id, key)
        self._stored[key] = found[0]
        return found

    async def flush(self) -> None:
        """Wait until every event appended so far is committed."""
        target = self._appended
        if self._written < target:
            self._urgent.set()
        while self._written < target:
            self._check_failure()
            if self._tg is None:
                raise LogClosedError(f"{self.shown} is closed with events unwritten")
            await self._progress.wait()

    async def _writer(self) -> None:
        assert self._format is not None
        layout = self._format
        # Shielded for its whole life, as the SQLite log's: it stops only when the log closes,
        # after draining the queue.
        with anyio.CancelScope(shield=True):
            began = -math.inf
            while True:
                began, todo = await self._round(began)
                while todo > 0:
                    batch = layout.take(min(todo, self._batch_size))
                    if batch is None:
                        break
                    todo -= batch.events
                    failures: tuple[type[BaseException], ...] = (
                        *database_errors(),
                        EventLogError,
                    )
                    try:
                        async with self._conn_lock:
                            await self._write_batch(batch)
                    except failures as exc:
                        self._failure = exc
                        self._progress.set()
                        raise LogWriteError(
                            self.shown, _failure_detail(exc), list(self._heads)
                        ) from exc
                    self._written += batch.events
                    self._pending_bytes -= batch.size
                    self._batches += 1
                    progress, self._progress = self._progress, anyio.Event()
                    progress.set()
                if self._closing and self._written == self._appended:
                    return

    async def _write_batch(self, batch: _V2Batch) -> None:
        """One batch and its runs' heads in one transaction, notified at its commit."""
        conn = self._conn
        lo, hi = self._block
        if any(not lo < i < hi for i, _ in (*batch.blobs[-1:], *batch.dictionaries)):
            raise EventLogError(f"this writer has used up its block of {ID_BLOCK} ids")
        new = [run for run in batch.runs if run[0] not in self._stored]
        old = [run for run in batch.runs if run[0] in self._stored]
        async with conn.transaction():
            fresh = [run[1] for run in new if run[1] not in self._locked]
            if fresh:
                held = await conn.fetch(
                    "SELECT pg_try_advisory_lock(k) FROM unnest($1::bigint[]) AS k",
                    [run_lock(run_id) for run_id in fresh],
                )
                for run_id, (granted,) in zip(fresh, held, strict=True):
                    if not granted:
                        raise RunBusyError(self.shown, run_id, None)
                    self._locked.add(run_id)
            # Dictionaries and blobs first, as in SQLite: no committed row refers to a missing
            # one (no reader sees the transaction before its end anyway).
            if batch.dictionaries:
                await conn.copy_records_to_table(
                    "dictionaries", records=batch.dictionaries, columns=("id", "data")
                )
            if batch.blobs:
                await conn.copy_records_to_table(
                    "blobs", records=batch.blobs, columns=("id", "data")
                )
            if batch.rows:
                await conn.copy_records_to_table(
                    "events",
                    records=batch.rows,
                    columns=("run", "seq", "type", "step", "ts", "body", "hash"),
                )
            if new:
                await conn.execute(
                    "INSERT INTO runs (key, run_id, head_seq, head_hash, finished_seq)"
                    " SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[],"
                    " $4::bytea[], $5::bigint[])",
                    *_columns(new, 5),
                )
            if old:
                status = await conn.execute(
                    "UPDATE runs AS r SET head_seq = u.seq, head_hash = u.hash,"
                    " finished_seq = coalesce(u.fin, r.finished_seq)"
                    " FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bytea[],"
                    " $5::bigint[]) AS u(key, prev, seq, hash, fin)"
                    " WHERE r.key = u.key AND r.head_seq = u.prev",
                    [run[0] for run in old],
                    [self._stored[run[0]] for run in old],
                    [run[2] for run in old],
                    [run[3] for run in old],
                    [run[4] for run in old],
                )
                if int(str(status).split()[-1]) != len(old):
                    raise EventLogError(
                        "a run's head moved under this writer (another writer appended to it)"
                    )
            await conn.execute(
                "SELECT pg_notify($1, r) FROM unnest($2::text[]) AS r",
                CHANNEL,
                [run[1] for run in batch.runs],
            )
        for run in batch.runs:
            self._stored[run[0]] = run[2]

    @property
    def writer_pid(self) -> int | None:
        """None: the database commits the rows, no writer process of ours."""
        return None

    # -- reading ---------------------------------------------------------------------------

    @asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[Any]:
        """A pooled connection in one read-only repeatable-read transaction."""
        if self._pool is None:
            raise LogClosedError(f"{self.shown} is not open")
        try:
            async with (
                self._pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                yield conn
        except database_errors() as exc:
            raise EventLogError(f"reading {self.shown} failed: {_failure_detail(exc)}") from exc

    async def read(
        self,
        run_id: str,
        *,
        after_seq: int = -1,
        steps: tuple[int, int] | None = None,
    ) -> AsyncGenerator[AnyEvent, None]:
        """Yield a run's committed events in seq order (see :meth:`EventLog.read`)."""
        async with self._snapshot() as conn:
            key = await conn.fetchval("SELECT key FROM runs WHERE run_id = $1", run_id)
            if key is None:
                raise UnknownRunError(run_id)
            reader = await _reader(conn)
            sql = "SELECT seq, type, step, ts, body FROM events WHERE run = $1 AND seq > $2"
            args: list[object] = [key, after_seq]
            if steps is not None:
                sql += " AND step BETWEEN $3 AND $4"
                args += [steps[0], steps[1]]
            cursor = await conn.cursor(sql + " ORDER BY seq", *args)
            while rows := await cursor.fetch(_FETCH):
                for event in await _decode_rows(conn, reader, run_id, rows):
                    yield event

    async def tail(self, run_id: str, *, after_seq: int = -1) -> AsyncGenerator[AnyEvent, None]:
        """Follow a run as it is written, until its ``run_finished`` event: woken by the
        commits' notifications (any writer's, any process's), never by a timer."""
        last = after_seq
        woken = anyio.Event()
        await self._listen()
        waiters = self._waiters.setdefault(run_id, set())
        waiters.add(woken)
        try:
            while True:
                # Re-armed before each read: a commit during the read wakes the next wait.
                waiters.discard(woken)
                woken = anyio.Event()
                waiters.add(woken)
                async with aclosing(self.read(run_id, after_seq=last)) as events:
                    async for event in events:
                        last = event.seq
                        yield event
                        if isinstance(event, RunFinished):
                            return
                await woken.wait()
        finally:
            waiters.discard(woken)
            if not waiters:
                self._waiters.pop(run_id, None)

    async def _listen(self) -> None:
        """Start the one listening connection of this log, if it is not yet."""
        async with self._listener_lock:
            if self._listener is not None:
                return
            conn = await connect(self.path, timeout=self._timeout)

            def notified(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
                for waiter in self._waiters.get(payload, ()):
                    waiter.set()

            try:
                await conn.add_listener(CHANNEL, notified)
            except BaseException:
                await _close_quietly(conn)
                raise
            self._listener = conn

    async def runs(self) -> list[RunInfo]:
        """Every run in the log, in the order they started."""
        async with self._snapshot() as conn:
            reader = await _reader(conn)
            rows = await conn.fetch(
                "SELECT r.run_id, r.head_seq, e.seq, e.type, e.step, e.ts, e.body FROM runs r"
                " JOIN events e ON e.run = r.key AND (e.seq = 0 OR e.seq = r.finished_seq)"
                " ORDER BY r.key, e.seq"
            )
            heads = {str(row[0]): int(row[1]) for row in rows}
            started: dict[str, RunStarted] = {}
            finished: dict[str, RunFinished] = {}
            for i in range(0, len(rows), _FETCH):
                part = rows[i : i + _FETCH]
                events = await _decode_rows(conn, reader, "", [tuple(row)[2:] for row in part])
                for row, event in zip(part, events, strict=True):
                    event = msgspec.structs.replace(event, run_id=str(row[0]))
                    if isinstance(event, RunStarted) and row[2] == 0:
                        started[event.run_id] = event
                    elif isinstance(event, RunFinished):
                        finished[event.run_id] = event
        out = [RunInfo(rid, start, finished.get(rid), heads[rid]) for rid, start in started.items()]
        out.sort(key=lambda info: (info.started.ts, info.run_id))
        return out

    async def run(self, run_id: str | None = None) -> RunInfo:
        """One run: the one named (a unique prefix of its id will do), or the only run in the
        log when none is named (see :meth:`EventLog.run`)."""
        runs = await self.runs()
        if run_id is None:
            if len(runs) != 1:
                raise RunNotNamedError([info.run_id for info in runs])
            return runs[0]
        for info in runs:
            if info.run_id == run_id:
                return info
        matches = [info for info in runs if info.run_id.startswith(run_id)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise AmbiguousRunError(run_id, [info.run_id for info in matches])
        raise UnknownRunError(run_id)


def _columns(rows: list[tuple[Any, ...]], n: int) -> list[list[Any]]:
    return [[row[i] for row in rows] for i in range(n)]


async def _close_quietly(conn: Any) -> None:
    if conn is None:
        return
    with anyio.CancelScope(shield=True):
        try:
            await conn.close(timeout=5)
        except (*database_errors(), RuntimeError):  # type: ignore[misc]
            conn.terminate()


async def _reader(conn: Any) -> V2Reader:
    reader = V2Reader()
    reader.add_dictionaries(
        (int(i), bytes(d)) for i, d in await conn.fetch("SELECT id, data FROM dictionaries")
    )
    return reader


async def fetch_blobs(conn: Any, reader: V2Reader, bodies: list[bytes]) -> None:
    """Bring the blobs these bodies refer to into ``reader``'s cache, in one query."""
    missing = reader.needed(bodies)
    if missing:
        rows = await conn.fetch("SELECT id, data FROM blobs WHERE id = ANY($1::bigint[])", missing)
        reader.blobs.add((int(i), bytes(d)) for i, d in rows)


async def _decode_rows(conn: Any, reader: V2Reader, run_id: str, rows: Any) -> list[AnyEvent]:
    await fetch_blobs(conn, reader, [bytes(row[4]) for row in rows])
    return [
        reader.decode(run_id, int(seq), float(ts), int(code), step, bytes(body))
        for seq, code, step, ts, body in rows
    ]
