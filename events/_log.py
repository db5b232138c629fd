"""The append-only SQLite event log.

One writer owns the only writing connection. ``append`` is synchronous and never blocks the event
loop: it encodes the event, chains its hash and queues the row. The queue is bounded (by events and
by bytes): ``put`` and :meth:`EventLog.room` wait while it is full, which is how a run waits for
the disk instead of piling events up in memory. The writer drains the queue in batched
transactions on a worker thread, at least once per commit interval whatever the load. Readers
open their own read-only connections and see committed prefixes only (WAL).

What a row holds, and how a batch is inserted, is the file's format (:mod:`events._formats`):
new files are version 2, files of version 1 are read and continued in their own version.

Each event row stores a hash chained to its predecessor in the run, and a heads table holds
every run's last seq and hash, upserted in the same transaction as the rows it covers. The
chain exposes edited, flipped, deleted and reordered rows; the head exposes rows cut off the end
of a run, which a chain alone cannot (a shorter chain is still a valid chain).
"""

from __future__ import annotations

import math
import os
import sqlite3
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing, contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Literal, NamedTuple, Self
from urllib.parse import quote

import aiosqlite
import anyio

from . import _formats, _locks
from ._errors import (
    AmbiguousRunError,
    CorruptEventError,
    DamagedLogError,
    EventLogError,
    InvalidOptionError,
    LogClosedError,
    LogWriteError,
    NotALogError,
    ReadOnlyLogError,
    RunNotNamedError,
    SchemaVersionError,
    SequenceError,
    UnknownRunError,
)
from ._formats import APPLICATION_ID, SCHEMAS, WriterFormat, chain_hash, writer_for
from ._queue import AppendQueue, LogStatistics
from ._types import SCHEMA_VERSION, AnyEvent, Event, RunFinished, RunStarted

if TYPE_CHECKING:
    from ._process import WriterProcess

__all__ = ["APPLICATION_ID", "EventLog", "LogStatistics", "RunInfo", "WriterKind", "chain_hash"]

WriterKind = Literal["thread", "process"]
"""Where a log's writer runs: a worker thread of this process, or a process of its own."""


class RunInfo(NamedTuple):
    """One run in a log: how it started and, if it has, how it finished."""

    run_id: str
    started: RunStarted
    finished: RunFinished | None
    last_seq: int


class EventLog(AppendQueue):
    """An append-only log of many runs' events in one SQLite file.

    Use it as an async context manager; leaving it flushes every appended event::

        async with EventLog("runs/demo.db") as log:
            log.append(event)
            async for ev in log.read(run_id):
                ...

    ``mode="r"`` opens an existing log for reading only and never creates a file.

    Appended events are committed in batches: at the latest ``commit_interval`` seconds after
    they were appended (plus the time the previous commit takes), at once when ``batch_size``
    rows are waiting, and on :meth:`flush` and close. A crash of the process loses at most the
    events not yet committed; what is in the file is always a gap-free prefix of every run.

    The queue holds at most ``max_pending`` events and ``max_pending_bytes`` bytes for those
    who wait for room: :meth:`put` (and :meth:`room` before an :meth:`append`) waits while it
    is full. :meth:`append` itself never waits, so an appender that never waits can pass the
    bound; the engine waits before each event but its scheduler's observational events.

    ``writer`` says where the rows are encoded, hashed and committed. ``"thread"`` (the default)
    does it in this process: :meth:`append` encodes and chains the row on the event loop's
    thread and a worker thread inserts the batches. ``"process"`` starts a writer process of
    its own (``python -m events._writer_child``, about a quarter of a second to start) and
    :meth:`append` only serialises the event (msgpack, under a microsecond) for it; the
    encoding, the hash chain and SQLite run on another core, which is what a run at full
    speed needs (``maker run`` uses it). Same file, same rows, same contract, with these
    differences: a pending event's bytes are its serialised size; the parent ships what was
    appended at least every 5 ms (or commit interval, if shorter), and the process commits
    everything it received when its input ends, so a kill -9 of this process loses only what
    was not shipped yet; an event the format cannot encode fails the writer (the log closes
    with an error) where the thread writer raises from :meth:`append`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        mode: Literal["w", "r"] = "w",
        batch_size: int = 16384,
        commit_interval: float = 0.05,
        poll_interval: float = 0.05,
        max_pending: int = 65536,
        max_pending_bytes: int = 64 * 1024 * 1024,
        schema_version: int = SCHEMA_VERSION,
        writer: WriterKind = "thread",
    ) -> None:
        if mode not in ("w", "r"):
            raise InvalidOptionError("mode", "'w' or 'r'", mode)
        if writer not in ("thread", "process"):
            raise InvalidOptionError("writer", "'thread' or 'process'", writer)
        if batch_size < 1:
            raise InvalidOptionError("batch_size", "at least 1", batch_size)
        if not commit_interval >= 0:
            raise InvalidOptionError("commit_interval", ">= 0", commit_interval)
        if not poll_interval > 0:
            raise InvalidOptionError("poll_interval", "positive", poll_interval)
        if max_pending < 1:
            raise InvalidOptionError("max_pending", "at least 1", max_pending)
        if max_pending_bytes < 1:
            raise InvalidOptionError("max_pending_bytes", "at least 1", max_pending_bytes)
        if schema_version not in SCHEMAS:
            known = ", ".join(map(str, SCHEMAS))
            raise InvalidOptionError("schema_version", f"one of {known}", schema_version)
        self.path = os.fspath(path)
        self.mode = mode
        self._batch_size = batch_size
        self._commit_interval = commit_interval
        self._poll_interval = poll_interval
        self._new_version = schema_version
        self.writer: WriterKind = writer
        self._version = 0  # the file's, once open
        self._immutable = False  # read-only media: see _read_only_uri
        self._conn: sqlite3.Connection | None = None
        self._format: WriterFormat | None = None
        self._process: WriterProcess | None = None
        self._init_queue(max_pending, max_pending_bytes)
        # Each run's last seq and hash (the hash only with the thread writer: the writer
        # process chains the hashes itself).
        self._heads: dict[str, tuple[int, bytes]] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self.mode == "r":
            await self._check_readable()
            return self
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        if self.writer == "process":
            await self._start_process()
            return self
        conn, layout = await anyio.to_thread.run_sync(
            _open_for_writing, self.path, self._new_version
        )
        self._conn, self._format, self._version = conn, layout, layout.version
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._writer)
        return self

    async def _start_process(self) -> None:
        from ._process import WriterProcess

        # The file is checked and made here, so that opening fails as it does with the thread
        # writer, with the same errors; the process then opens what is known to be a log.
        self._version = await anyio.to_thread.run_sync(_prepare_file, self.path, self._new_version)
        process = WriterProcess(
            self.path,
            self._version,
            batch_size=self._batch_size,
            commit_interval=self._commit_interval,
        )
        await process.start()
        self._process = process
        try:
            self._tg = anyio.create_task_group()
            await self._tg.__aenter__()
        except BaseException:
            self._process = None
            await process.aclose()
            raise
        self._tg.start_soon(self._ship, process)
        self._tg.start_soon(self._receive, process)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if self._tg is None:
            return None
        # Whatever happens to the body, what was appended is written. The writer is shielded and
        # drains the queue before it returns, so the task group's exit is the final flush. The
        # group's own scope must be exited directly (not inside another scope), and it is not
        # handed the body's exception: that would only wrap it in an ExceptionGroup.
        self._closing = True
        self._wake.set()
        self._urgent.set()
        try:
            await self._tg.__aexit__(None, None, None)
        finally:
            self._tg = None
            if self._process is not None:
                process, self._process = self._process, None
                await process.aclose()  # shielded; the process has exited by now
            if self._conn is not None:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._conn.close)
                self._conn = None
            _locks.release(self.path, self)  # once everything appended is written
        return None

    async def _connect(self, path: str) -> aiosqlite.Connection:
        """A read-only connection for a reader."""
        try:
            return await aiosqlite.connect(_read_only_uri(path, self._immutable), uri=True)
        except sqlite3.Error as exc:
            raise EventLogError(f"cannot open {path}: {exc}") from exc

    async def _check_readable(self) -> None:
        self._version, self._immutable = await anyio.to_thread.run_sync(_check_readable, self.path)

    @property
    def schema_version(self) -> int:
        """The schema version of the open file (0 before it is opened)."""
        return self._version

    # -- writing ---------------------------------------------------------------------------

    def _target(self) -> str:
        return self.path

    def _hurry(self) -> None:
        """Ask for a commit now."""
        self._urgent.set()
        if self._process is not None:
            # Everything may have been shipped already: the shipper must wake to ask the
            # writer process for the commit (the thread writer commits what it has anyway).
            self._wake.set()

    def append(self, event: Event) -> None:
        """Queue an event for the writer. Never blocks, even on a full queue (see :meth:`put`);
        raises if the seq does not follow on."""
        if self.mode != "w" or self._tg is None or self._closing:
            raise LogClosedError(f"{self.path} is not open for appending")
        if self._failure is not None:
            raise LogClosedError(f"the log writer failed: {self._failure}") from self._failure
        head = self._heads.get(event.run_id)
        expected = 0 if head is None else head[0] + 1
        if event.seq != expected:
            raise SequenceError(event.run_id, expected, event.seq)
        if head is None:
            # A new run: from its first event on, no other writer may append to it.
            _locks.acquire(self.path, event.run_id, self)
        process = self._process
        if process is None:
            assert self._format is not None
            queued = self._format.encode(event, b"" if head is None else head[1])
            self._heads[event.run_id] = (event.seq, queued.digest)
            size = queued.size
        else:
            size = process.add(event)
            self._heads[event.run_id] = (event.seq, b"")
        self._appended += 1
        self._pending_bytes += size
        pending = self._appended - self._written
        if pending > self._high_water:
            self._high_water = pending
        if self._pending_bytes > self._high_water_bytes:
            self._high_water_bytes = self._pending_bytes
        # The writer process commits a full batch by itself; asking it at once on every
        # append past batch_size would only cut its transactions short.
        if self.full or (process is None and pending >= self._batch_size):
            self._urgent.set()
        if not self._wake.is_set():
            self._wake.set()

    async def attach(self, run_id: str) -> int:
        """Continue an existing run: load its chain head. Returns the next seq to append."""
        if self._tg is None:
            raise LogClosedError(f"{self.path} is not open for appending")
        head = self._heads.get(run_id)
        if head is None:
            # Before its head is read: a writer still appending would move it under us.
            await anyio.to_thread.run_sync(_locks.acquire, self.path, run_id, self)
            await self.flush()
            if self._process is not None:
                head = (await self._attach_in_process(self._process, run_id), b"")
            else:
                assert self._conn is not None
                assert self._format is not None
                head = await anyio.to_thread.run_sync(
                    _load_head, self._conn, self._format, self.path, run_id
                )
            self._heads[run_id] = head
        return head[0] + 1

    async def _attach_in_process(self, process: WriterProcess, run_id: str) -> int:
        if self._closing:
            raise LogClosedError(f"{self.path} is closing")
        if self._failure is not None:  # nobody would answer
            raise LogClosedError(f"the log writer failed: {self._failure}") from self._failure
        request = process.attach(run_id)
        self._wake.set()
        await request.done.wait()
        if request.error is not None:
            if request.error is self._failure:
                raise LogClosedError(f"the log writer failed: {request.error}") from request.error
            raise request.error
        assert request.seq is not None
        return request.seq

    async def flush(self) -> None:
        """Wait until every event appended so far is committed."""
        target = self._appended
        if self._written < target:
            self._hurry()
        while self._written < target:
            if self._failure is not None:
                raise LogClosedError(f"the log writer failed: {self._failure}") from self._failure
            if self._tg is None:
                raise LogClosedError(f"{self.path} is closed with events unwritten")
            await self._progress.wait()

    async def _writer(self) -> None:
        assert self._conn is not None
        assert self._format is not None
        conn, layout = self._conn, self._format
        # Shielded for its whole life: a cancelled writer would lose the queued rows. It stops
        # only when the log closes, after draining the queue.
        with anyio.CancelScope(shield=True):
            began = -math.inf  # when the last round of commits began
            while True:
                began, todo = await self._round(began)
                # Write it in transactions of at most batch_size rows.
                while todo > 0:
                    batch = layout.take(min(todo, self._batch_size))
                    if batch is None:
                        break
                    todo -= batch.events
                    try:
                        await anyio.to_thread.run_sync(_write_batch, conn, layout, batch)
                    except sqlite3.Error as exc:
                        self._failure = exc
                        self._progress.set()
                        raise self._write_failed(" ".join(str(exc).split())) from exc
                    self._written += batch.events
                    self._pending_bytes -= batch.size
                    self._batches += 1
                    progress, self._progress = self._progress, anyio.Event()
                    progress.set()
                if self._closing and self._written == self._appended:
                    return

    async def _ship(self, process: WriterProcess) -> None:
        """Ship what was appended to the writer process, at least every ship interval."""
        # Shielded like the thread writer: what was appended is shipped before the log closes.
        with anyio.CancelScope(shield=True):
            began = -math.inf  # when the last shipment began
            while True:
                await self._wake.wait()
                if self._failure is not None:
                    return  # the receiver reports it
                wait = began + process.ship_interval - anyio.current_time()
                if wait > 0 and not self._closing:
                    with anyio.move_on_after(wait):
                        await self._urgent.wait()
                began = anyio.current_time()
                self._wake = anyio.Event()
                urgent = self._urgent.is_set()
                if urgent:
                    self._urgent = anyio.Event()
                data = process.take(flush=urgent)
                # A failed send means the process is gone: the receiver sees it end and says why.
                if data and not await process.send(data):
                    return
                if self._closing and not self._wake.is_set():
                    # Nothing was appended meanwhile (nothing can be, once closing): the end of
                    # its input tells the process to commit the rest and exit.
                    await process.close_input()
                    return

    async def _receive(self, process: WriterProcess) -> None:
        """Follow the writer process's answers: commits, attaches, and how it ended."""
        from ._process import DONE, FAILED, HEAD, REFUSED, committed_counts

        with anyio.CancelScope(shield=True):
            problem: str | None = None
            while (answer := await process.receive()) is not None:
                kind, payload = answer
                if kind == DONE:
                    written, self._batches = committed_counts(payload)
                    self._pending_bytes -= process.committed(written)
                    self._written = written
                    progress, self._progress = self._progress, anyio.Event()
                    progress.set()
                elif kind in (HEAD, REFUSED):
                    process.answer(kind, payload)
                elif kind == FAILED:
                    problem = payload.decode("utf-8", "replace")
            code = await process.wait()
            if problem is None and code == 0 and self._closing and self._written == self._appended:
                return
            if problem is None:
                problem = process.describe_exit(code)
                unwritten = self._appended - self._written
                if unwritten:
                    problem += f" ({unwritten} events appended and not committed)"
            failure = EventLogError(problem)
            self._failure = failure
            process.fail_requests(failure)
            self._progress.set()
            self._wake.set()
            raise self._write_failed(problem) from failure

    def _write_failed(self, detail: str) -> LogWriteError:
        return LogWriteError(self.path, detail, list(self._heads))

    @property
    def writer_pid(self) -> int | None:
        """The writer process's id while a ``writer="process"`` log is open, else None."""
        return None if self._process is None else self._process.pid

    # -- reading ---------------------------------------------------------------------------

    async def read(
        self,
        run_id: str,
        *,
        after_seq: int = -1,
        steps: tuple[int, int] | None = None,
    ) -> AsyncGenerator[AnyEvent, None]:
        """Yield a run's committed events in seq order.

        ``after_seq`` skips what a reader has seen; ``steps=(first, last)`` keeps only the step
        events of that inclusive range.
        """
        async with self._reader() as conn:
            read = _formats.v1_read if self._version == 1 else _formats.v2_read
            # Closed here, not by the garbage collector: its cursor must go before the
            # connection does, also when the caller stops early.
            async with aclosing(read(conn, run_id, after_seq, steps)) as events:
                async for event in events:
                    yield event

    async def tail(self, run_id: str, *, after_seq: int = -1) -> AsyncGenerator[AnyEvent, None]:
        """Follow a run as it is written, until its ``run_finished`` event.

        Works across processes: it polls, and wakes early when this log object commits.
        """
        last = after_seq
        while True:
            # Close each read at once, so returning mid-read releases its connection now.
            async with aclosing(self.read(run_id, after_seq=last)) as events:
                async for event in events:
                    last = event.seq
                    yield event
                    if isinstance(event, RunFinished):
                        return
            with anyio.move_on_after(self._poll_interval):
                await self._progress.wait()

    async def runs(self) -> list[RunInfo]:
        """Every run in the log, in the order they started."""
        async with self._reader() as conn:
            listed = await (_formats.v1_runs if self._version == 1 else _formats.v2_runs)(conn)
        return [RunInfo(*info) for info in listed]

    async def run(self, run_id: str | None = None) -> RunInfo:
        """One run: the one named (a unique prefix of its id will do), or the only run in the
        log when none is named.

        Raises :class:`UnknownRunError` when no run has that id, :class:`AmbiguousRunError`
        (an :class:`UnknownRunError`) when it is the start of several runs' ids and no whole
        one, and :class:`RunNotNamedError` (one too) when none is named and the log does not
        hold exactly one run.
        """
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

    def _reader(self) -> _Reader:
        return _Reader(self)


class _Reader:
    """A short-lived read-only connection."""

    def __init__(self, log: EventLog) -> None:
        self._log = log
        self._conn: aiosqlite.Connection | None = None

    async def __aenter__(self) -> aiosqlite.Connection:
        _check_exists(self._log.path)
        self._conn = await self._log._connect(self._log.path)
        return self._conn

    async def __aexit__(self, *exc: object) -> None:
        assert self._conn is not None
        with anyio.CancelScope(shield=True):
            await self._conn.close()


def _check_exists(path: str) -> None:
    # A stat is cheap enough to do on the loop; it keeps read-only opens from creating files.
    if not os.path.exists(path):
        raise EventLogError(f"{path}: no such file")
    if os.path.isdir(path):
        raise NotALogError(path, "it is a directory")


def _load_head(
    conn: sqlite3.Connection, layout: WriterFormat, path: str, run_id: str
) -> tuple[int, bytes]:
    """A run's last seq and hash, refusing a run whose stored head disagrees with its rows.

    Continuing a truncated run would write its head anew and hide the truncation for good.
    """
    try:
        last, sealed = _formats.head(conn, layout.version, run_id)
        layout.attach(conn, run_id)
    except sqlite3.Error as exc:
        raise EventLogError(f"cannot read the head of run {run_id} in {path}: {exc}") from exc
    check = f"check it with 'maker verify {path}'"
    if last is None:
        if sealed is None:
            raise UnknownRunError(run_id)
        raise CorruptEventError(
            f"{path}: run {run_id} has a head at seq {sealed[0]} but no rows (deleted); {check}"
        )
    if sealed is None:
        raise CorruptEventError(f"{path}: run {run_id} has rows but no head; {check}")
    head = last
    if head != sealed:
        raise CorruptEventError(
            f"{path}: run {run_id} ends at seq {head[0]} but its head says {sealed[0]}; {check}"
        )
    return head


def _check_identity(conn: sqlite3.Connection, path: str, *, allow_new: bool) -> int:
    """Check that ``conn`` is a maker log of a version we read: returns the version, or 0 for
    an empty new file (when ``allow_new``)."""
    try:
        row = conn.execute("PRAGMA application_id").fetchone()
        app_id = int(row[0]) if row else 0
        row = conn.execute("PRAGMA user_version").fetchone()
        version = int(row[0]) if row else 0
        objects = 0
        if app_id == 0:
            # Only a file without our id can be a new one: a log's own schema is not read here,
            # so damage past the file's first page is left for the integrity check to name.
            row = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            objects = int(row[0]) if row else 0
    except sqlite3.DatabaseError as exc:
        detail = " ".join(str(exc).split())
        if _header_says_maker_log(path):
            # A maker log SQLite cannot open (cut short, overwritten): damage, not a stranger.
            raise DamagedLogError(path, detail) from exc
        raise NotALogError(path, detail) from exc
    if app_id == 0 and objects == 0:
        if allow_new:
            return 0
        raise NotALogError(path, "the file is empty")
    if app_id != APPLICATION_ID:
        raise NotALogError(path, "a SQLite database of another application")
    if version not in SCHEMAS:
        raise SchemaVersionError(path, version, SCHEMA_VERSION)
    return version


_SQLITE_MAGIC = b"SQLite format 3\x00"


def _header_says_maker_log(path: str) -> bool:
    # The 100-byte file header holds the application id at offset 68 (big-endian). Until the
    # first checkpoint a new log's header may still lack it; then the file is simply not known.
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except OSError:
        return False
    return (
        len(header) == 100
        and header.startswith(_SQLITE_MAGIC)
        and int.from_bytes(header[68:72], "big") == APPLICATION_ID
    )


def open_for_reading(path: str) -> tuple[sqlite3.Connection, int]:
    """A plain read-only connection to the log at ``path``, checked to be a maker log we read,
    and the file's version.

    The one way a log is opened without :class:`EventLog` (integrity checks read with plain
    sqlite3). Autocommit mode, so that an explicit ``BEGIN`` holds every read in one snapshot;
    usable from one thread at a time, any thread (a check may be opened on a worker thread and
    read on another). Raises what opening an :class:`EventLog` raises, and
    :class:`DamagedLogError` for a maker log SQLite cannot read.
    """
    conn, version, _ = _open_for_reading(path)
    return conn, version


def _open_for_reading(path: str) -> tuple[sqlite3.Connection, int, bool]:
    """:func:`open_for_reading`, and whether the file had to be opened as immutable."""
    _check_exists(path)
    conn = _connect_read_only(path, immutable=False)
    immutable = False
    try:
        conn.execute("PRAGMA application_id").fetchone()
    except sqlite3.DatabaseError as exc:
        if exc.sqlite_errorname == "SQLITE_READONLY_DIRECTORY":
            # A log in a directory we cannot write (read-only media, a dropped capability):
            # SQLite cannot make the WAL index a reader needs beside the file. Nobody can be
            # writing the file then (a writer needs that directory too): read it as immutable.
            conn.close()
            conn, immutable = _connect_read_only(path, immutable=True), True
        # Anything else (not SQLite, damaged): _check_identity names it.
    try:
        version = _check_identity(conn, path, allow_new=False)
    except BaseException:
        conn.close()
        raise
    return conn, version, immutable


def _connect_read_only(path: str, *, immutable: bool) -> sqlite3.Connection:
    try:
        return sqlite3.connect(
            _read_only_uri(path, immutable),
            uri=True,
            isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.Error as exc:
        raise EventLogError(f"cannot open {path}: {exc}") from exc


def _check_readable(path: str) -> tuple[int, bool]:
    """Check that ``path`` is a maker log we read: its version, and whether it is read as
    immutable (see :func:`_open_for_reading`)."""
    conn, version, immutable = _open_for_reading(path)
    conn.close()
    return version, immutable


def _prepare(path: str, new_version: int) -> tuple[sqlite3.Connection, int]:
    """A writing connection to a checked log, made if new; returns it and the file's version.

    On a worker thread (the thread writer uses it from worker threads, one call at a time,
    hence ``check_same_thread=False``).
    """
    _check_writable(path)
    _create_private(path)
    try:
        # isolation_level=None: the writer opens its own transactions, so nothing implicit
        # happens around the pragmas and the schema. A tiny statement cache: a batch's
        # multi-row inserts have a new row count almost every time, so caching them gains
        # nothing (preparing the few other statements again costs microseconds a batch), and
        # the cached ones, of up to 32,000 parameters each, held about 50 MB of a 14-disk
        # run at the default 128 (and 25 MB at 16).
        conn = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, cached_statements=4
        )
    except sqlite3.Error as exc:
        raise EventLogError(f"cannot open {path}: {exc}") from exc
    with _closed_on_failure(conn, path):
        version = _check_identity(conn, path, allow_new=True)
        # WAL lets readers run beside the one writer; NORMAL syncs at checkpoints, so a commit
        # survives a process crash, and power loss can cost only the last transactions.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        if version == 0:
            # A new file is made in the version asked for (the current one by default); an
            # existing file is written in its own.
            version = new_version
            conn.executescript(f"BEGIN;\n{SCHEMAS[version]}\nCOMMIT;")
    return conn, version


def _check_writable(path: str) -> None:
    """Refuse, before anything runs, a log that SQLite would open read-only without a word and
    fail to write at the first commit (with a run's work lost)."""
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ReadOnlyLogError(path, "the file is read-only")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(path + "-wal") and not os.access(directory, os.W_OK | os.X_OK):
        raise ReadOnlyLogError(
            path, "its directory is read-only (SQLite keeps the write-ahead log beside the file)"
        )


FILE_MODE = 0o600
"""The mode a new log is made with: it holds prompts and responses, so only its owner reads it.
SQLite gives the files it keeps beside it (the write-ahead log, its index) the same mode."""


def _create_private(path: str) -> None:
    """Make the log's file, empty, readable by its owner alone (unless it exists)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        return
    except OSError as exc:
        raise EventLogError(f"cannot create {path}: {exc.strerror}") from None
    os.close(fd)


@contextmanager
def _closed_on_failure(conn: sqlite3.Connection, path: str) -> Iterator[None]:
    """Close ``conn`` if the block fails; an SQLite error is then 'cannot prepare PATH'."""
    try:
        yield
    except sqlite3.Error as exc:
        conn.close()
        raise EventLogError(f"cannot prepare {path}: {exc}") from exc
    except BaseException:
        conn.close()
        raise


def _prepare_file(path: str, new_version: int) -> int:
    """Check ``path`` is a log to write (making it if new), for a writer process to open."""
    conn, version = _prepare(path, new_version)
    conn.close()
    return version


def _open_for_writing(path: str, new_version: int) -> tuple[sqlite3.Connection, WriterFormat]:
    """The writer's connection and the writing half of the file's format."""
    conn, version = _prepare(path, new_version)
    with _closed_on_failure(conn, path):
        layout = writer_for(conn, version)
    return conn, layout


def _write_batch(conn: sqlite3.Connection, layout: WriterFormat, batch: _formats.Batch) -> None:
    """Write one batch and seal its runs' heads in one transaction (on a worker thread)."""
    conn.execute("BEGIN")
    try:
        layout.write(conn, batch)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _read_only_uri(path: str, immutable: bool = False) -> str:
    """The URI that opens ``path`` read-only (it never creates a file); ``immutable`` also
    tells SQLite that nothing can change the file, so it takes no locks and needs no WAL index
    (for read-only media only)."""
    query = "?mode=ro&immutable=1" if immutable else "?mode=ro"
    return "file:" + quote(os.path.abspath(path)) + query
