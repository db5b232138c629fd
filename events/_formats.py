"""The two file layouts of a log: what a row holds, how a batch is written and how rows are read.

Version 1 stores each event as JSON of the whole event, keyed by its run id text, with two
indexes. Version 2 (the default for new files) stores an integer run key, the envelope (seq, type
code, step, ts) in columns and only the other fields in a msgpack body; long and repeated values
(states, candidates, texts) live once in ``blobs``, texts compressed with zstd (see
:mod:`events._compact`). Both chain every row's hash to its predecessor and seal each run's head
in the same transaction as its rows.

The writer half of a format runs its ``encode`` on the event loop's thread (it chains the hash,
which must follow the seq order) and its ``write`` on the writer's worker thread. Reads go
through aiosqlite (:class:`EventLog`) or plain sqlite3 (integrity checks).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import operator
import sqlite3
import struct
from collections import OrderedDict
from collections.abc import AsyncGenerator, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol, TypeAlias

import aiosqlite
import msgspec

from ._codec import decode as decode_json
from ._codec import encode as encode_json
from ._compact import TYPE_BY_CODE, TYPE_CODES, Decoder, Encoder
from ._errors import CorruptEventError, EventLogError, UnknownRunError
from ._types import AnyEvent, Event, RunFinished, RunStarted, StepEvent, event_tag

APPLICATION_ID = 0x4D414B52  # "MAKR": marks a SQLite file as a maker log
"""``PRAGMA application_id`` of every maker log."""

_APPEND_ONLY = """
CREATE TRIGGER IF NOT EXISTS {table}_append_only_update BEFORE UPDATE ON {table}
BEGIN SELECT RAISE(ABORT, 'the {table} table is append-only'); END;
CREATE TRIGGER IF NOT EXISTS {table}_append_only_delete BEFORE DELETE ON {table}
BEGIN SELECT RAISE(ABORT, 'the {table} table is append-only'); END;
"""

_ROW_OVERHEAD = 64  # bytes a queued row costs beside its body: the tuple, ids, hash, ts
_FETCH = 1024  # rows a reader fetches at a time


def _multirow(prefix: str, columns: int, rows: int) -> str:
    return prefix + ", ".join(["(" + ", ".join("?" * columns) + ")"] * rows)


_insert_sql = functools.lru_cache(maxsize=64)(_multirow)


def _insert_many(
    conn: sqlite3.Connection, prefix: str, columns: int, rows: Sequence[tuple[Any, ...]]
) -> None:
    """Insert ``rows`` in a few multi-row statements.

    Not ``executemany``: the sqlite3 module releases the GIL around every row it steps, and a
    thread that must win it back from a busy event loop waits a switch interval (5 ms) each
    time. A statement of thousands of rows pays that once.
    """
    chunk = 32000 // columns  # parameters per statement stay under SQLite's 32,766
    for i in range(0, len(rows), chunk):
        part = rows[i : i + chunk]
        conn.execute(_insert_sql(prefix, columns, len(part)), [v for row in part for v in row])


def chain_hash(previous: bytes, body: bytes) -> bytes:
    """The hash stored with an event: BLAKE2b-128 over its predecessor's hash and its body
    (in version 2, the envelope columns, the body and the data of every blob it refers to).

    The first event of a run chains to the empty string, so a run's last hash seals all of it.
    """
    return hashlib.blake2b(previous + body, digest_size=16).digest()


class Queued(NamedTuple):
    """What :meth:`WriterFormat.encode` queued for one event."""

    digest: bytes
    """The event's chain hash."""
    size: int
    """Bytes it adds to the queue."""


class Batch(Protocol):
    """Everything queued since the last batch, to be written in one transaction."""

    events: int
    size: int


class WriterFormat(Protocol):
    """The writing half of a layout: queue rows on the loop's thread, write them on another."""

    version: int

    def encode(self, event: Event, previous: bytes) -> Queued: ...
    def take(self, limit: int) -> Batch | None: ...
    def write(self, conn: sqlite3.Connection, batch: Batch) -> None: ...
    def attach(self, conn: sqlite3.Connection, run_id: str) -> None: ...


class StoredHead(NamedTuple):
    """A run's last row and its sealed head, as the file holds them."""

    last: tuple[int, bytes] | None
    sealed: tuple[int, bytes] | None


StoredRow: TypeAlias = tuple[
    str, int, str, int | None, float, bytes, bytes, AnyEvent | CorruptEventError
]
"""One stored row as an integrity check reads it: ``(run_id, seq, type, step, ts, covered, hash,
event)``. ``type`` is the row's type tag, or ``"?<code>"`` for an unknown code; ``covered`` the
bytes its chain hash covers (version 1: the body; version 2: the envelope, the body and the data
of the blobs it refers to); ``event`` its decoded event or why it does not decode.

A plain tuple: a check makes one for every row of the log, and a NamedTuple's construction
costs 3% of the whole check."""


# -- version 1 -------------------------------------------------------------------------------

V1_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    step INTEGER,
    ts REAL NOT NULL,
    body BLOB NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (run_id, seq)
) STRICT, WITHOUT ROWID;
-- The last seq and hash of every run, written in the same transaction as its rows. Unlike the
-- events table it is updated in place: it is the seal that makes a truncated run detectable.
CREATE TABLE IF NOT EXISTS run_heads (
    run_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS events_by_step ON events (run_id, step);
CREATE INDEX IF NOT EXISTS events_by_type ON events (type, run_id);
{_APPEND_ONLY.format(table="events")}
-- REPLACE deletes the old row without firing delete triggers: refuse to insert over one.
CREATE TRIGGER IF NOT EXISTS events_append_only_replace BEFORE INSERT ON events
WHEN EXISTS (SELECT 1 FROM events WHERE run_id = NEW.run_id AND seq = NEW.seq)
BEGIN SELECT RAISE(ABORT, 'the events table is append-only'); END;
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '1');
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = 1;
"""

_V1Row = tuple[str, int, str, int | None, float, bytes, bytes]


class _V1Batch:
    def __init__(self, rows: list[_V1Row], size: int) -> None:
        self.rows = rows
        self.events = len(rows)
        self.size = size


class V1Writer:
    """Writes version 1 rows: for logs made before version 2, which stay in their version."""

    version = 1

    def __init__(self) -> None:
        self._rows: list[_V1Row] = []

    def encode(self, event: Event, previous: bytes) -> Queued:
        body = encode_json(event)
        digest = chain_hash(previous, body)
        step = event.step if isinstance(event, StepEvent) else None
        self._rows.append(
            (event.run_id, event.seq, event_tag(type(event)), step, event.ts, body, digest)
        )
        return Queued(digest, len(body) + _ROW_OVERHEAD)

    def take(self, limit: int) -> _V1Batch | None:
        """The first ``limit`` queued rows (and fewer if fewer are queued)."""
        if not self._rows:
            return None
        rows, self._rows = self._rows[:limit], self._rows[limit:]
        size = sum(len(row[5]) for row in rows) + _ROW_OVERHEAD * len(rows)
        return _V1Batch(rows, size)

    def write(self, conn: sqlite3.Connection, batch: Batch) -> None:
        assert isinstance(batch, _V1Batch)
        rows = batch.rows
        # Rows are queued in seq order per run, so the last one seen is the head.
        heads = {row[0]: (row[0], row[1], row[6]) for row in rows}
        _insert_many(conn, "INSERT INTO events VALUES ", 7, rows)
        conn.executemany(
            "INSERT INTO run_heads (run_id, seq, hash) VALUES (?, ?, ?) ON CONFLICT (run_id)"
            " DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            heads.values(),
        )

    def attach(self, conn: sqlite3.Connection, run_id: str) -> None:
        """Nothing to learn: version 1 rows name their run."""


async def v1_read(
    conn: aiosqlite.Connection, run_id: str, after_seq: int, steps: tuple[int, int] | None
) -> AsyncGenerator[AnyEvent, None]:
    sql = "SELECT body FROM events WHERE run_id = ? AND seq > ?"
    args: list[object] = [run_id, after_seq]
    if steps is not None:
        sql += " AND step BETWEEN ? AND ?"
        args += [steps[0], steps[1]]
    sql += " ORDER BY seq"
    found = False
    async with conn.execute(sql, args) as cur:
        while rows := await cur.fetchmany(_FETCH):
            found = True
            for (body,) in rows:
                yield decode_json(body)
    if not found:
        async with conn.execute("SELECT 1 FROM events WHERE run_id = ? LIMIT 1", (run_id,)) as cur:
            if await cur.fetchone() is None:
                raise UnknownRunError(run_id)


async def v1_runs(
    conn: aiosqlite.Connection,
) -> list[tuple[str, RunStarted, RunFinished | None, int]]:
    started: dict[str, RunStarted] = {}
    async with conn.execute("SELECT body FROM events WHERE seq = 0 ORDER BY ts, run_id") as cur:
        for (body,) in await cur.fetchall():
            event = decode_json(body)
            if isinstance(event, RunStarted):
                started[event.run_id] = event
    finished: dict[str, RunFinished] = {}
    async with conn.execute(
        "SELECT body FROM events WHERE type = 'run_finished' ORDER BY run_id, seq"
    ) as cur:
        for (body,) in await cur.fetchall():
            event = decode_json(body)
            if isinstance(event, RunFinished):
                finished[event.run_id] = event
    last: dict[str, int] = {}
    async with conn.execute("SELECT run_id, MAX(seq) FROM events GROUP BY run_id") as cur:
        for run_id, seq in await cur.fetchall():
            last[str(run_id)] = int(seq)
    return [
        (run_id, start, finished.get(run_id), last.get(run_id, 0))
        for run_id, start in started.items()
    ]


# -- version 2 -------------------------------------------------------------------------------

V2_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
-- One row per run: its key in the events table, and its head (last seq and hash), written in
-- the same transaction as its rows. Updated in place: the seal that makes truncation visible.
CREATE TABLE IF NOT EXISTS runs (
    key INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL UNIQUE,
    head_seq INTEGER NOT NULL,
    head_hash BLOB NOT NULL,
    finished_seq INTEGER
) STRICT;
CREATE TABLE IF NOT EXISTS events (
    run INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    type INTEGER NOT NULL,
    step INTEGER,
    ts REAL NOT NULL,
    body BLOB NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (run, seq)
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blobs (
    id INTEGER PRIMARY KEY,
    data BLOB NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS dictionaries (
    id INTEGER PRIMARY KEY,
    data BLOB NOT NULL
) STRICT;
{_APPEND_ONLY.format(table="events")}
{_APPEND_ONLY.format(table="blobs")}
{_APPEND_ONLY.format(table="dictionaries")}
-- REPLACE deletes the old row without firing delete triggers: refuse to insert over one. A
-- run's rows up to its head are all there (the head is sealed in the same transaction as its
-- rows), so a row at or below the head is one that exists. Asked of the small runs table
-- rather than of the events table, the check costs about a quarter as much per insert.
CREATE TRIGGER IF NOT EXISTS events_append_only_replace BEFORE INSERT ON events
WHEN NEW.seq <= (SELECT head_seq FROM runs WHERE key = NEW.run)
BEGIN SELECT RAISE(ABORT, 'the events table is append-only'); END;
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '2');
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = 2;
"""

_V2Row = tuple[int, int, int, int | None, float, bytes, bytes]
_ENVELOPE = struct.Struct(">qHqd")
_blake2b = hashlib.blake2b
_NEW = tuple.__new__  # a NamedTuple without its Python-level __new__


def v2_covered(run_id: str, seq: int, type_code: int, step: int | None, ts: float) -> bytes:
    """The envelope a version 2 row's hash covers before its body: the columns the body leaves
    out (run, seq, type, step, ts), so an edited column breaks the chain as an edited body
    does."""
    return run_id.encode() + _ENVELOPE.pack(seq, type_code, -1 if step is None else step, ts)


_RUN_FINISHED = TYPE_CODES[event_tag(RunFinished)]


class _V2Batch:
    def __init__(
        self,
        events: list[_V2Row],
        blobs: list[tuple[int, bytes]],
        dictionaries: list[tuple[int, bytes]],
        runs: list[tuple[int, str, int, bytes, int | None]],
        size: int,
    ) -> None:
        self.rows = events
        self.blobs = blobs
        self.dictionaries = dictionaries
        self.runs = runs
        self.events = len(events)
        self.size = size


class V2Writer:
    """Writes version 2 rows. Construct it on the writer's thread with :meth:`open`."""

    version = 2

    def __init__(
        self,
        *,
        next_key: int,
        next_blob_id: int,
        next_dictionary_id: int,
        dictionaries: dict[int, bytes],
        keys: dict[str, int],
    ) -> None:
        self._encoder = Encoder(
            next_blob_id=next_blob_id,
            next_dictionary_id=next_dictionary_id,
            dictionaries=dictionaries,
        )
        self._next_key = next_key
        self._keys = keys
        self._run_ids = {key: run_id for run_id, key in keys.items()}
        # run id -> (key, run id as UTF-8): the envelope every row's hash covers starts so.
        self._runs: dict[str, tuple[int, bytes]] = {}
        self._rows: list[_V2Row] = []
        # For each queued row: how many blobs and bytes were queued, ever, up to its end; less
        # what earlier batches took (_taken), so a batch of the first rows takes the blobs they
        # refer to. Counted from the start, not from the queue's head, so that taking a batch
        # does not rewrite the marks of every row still queued.
        self._marks: list[tuple[int, int]] = []
        self._queued_blobs = 0
        self._queued_size = 0
        self._taken: tuple[int, int] = (0, 0)
        # The runs of the rows queued since the queue was last empty, and the (key, seq) of
        # each queued run_finished row: so a batch finds its heads from its end.
        self._queued_keys: set[int] = set()
        self._finishing: list[tuple[int, int]] = []
        self._blobs: list[tuple[int, bytes]] = []
        self._dictionaries: list[tuple[int, bytes]] = []

    @classmethod
    def open(cls, conn: sqlite3.Connection) -> V2Writer:
        """A writer that continues the ids of the file behind ``conn``."""
        (key,) = conn.execute("SELECT coalesce(max(key), 0) FROM runs").fetchone()
        (blob,) = conn.execute("SELECT coalesce(max(id), 0) FROM blobs").fetchone()
        dictionaries = {
            int(i): bytes(d) for i, d in conn.execute("SELECT id, data FROM dictionaries")
        }
        return cls(
            next_key=int(key) + 1,
            next_blob_id=int(blob) + 1,
            next_dictionary_id=max(dictionaries, default=0) + 1,
            dictionaries=dictionaries,
            keys={},
        )

    def attach(self, conn: sqlite3.Connection, run_id: str) -> None:
        """Learn an existing run's key, so appending continues it."""
        row = conn.execute("SELECT key FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is not None:
            self._keys[run_id] = int(row[0])
            self._run_ids[int(row[0])] = run_id
            self._runs.pop(run_id, None)

    def encode(self, event: Event, previous: bytes) -> Queued:
        run_id = event.run_id
        run = self._runs.get(run_id)
        if run is None:
            key = self._keys.get(run_id)
            if key is None:
                key = self._keys[run_id] = self._next_key
                self._run_ids[key] = run_id
                self._next_key += 1
            run = self._runs[run_id] = (key, run_id.encode())
        encoder = self._encoder
        code, step, body, blobs, covered = encoder.encode(event)
        if encoder.has_new_dictionaries:
            self._dictionaries.extend(encoder.take_new_dictionaries())
        seq, ts = event.seq, event.ts
        # chain_hash(previous, v2_covered(...) + covered), joined once.
        envelope = _ENVELOPE.pack(seq, code, -1 if step is None else step, ts)
        digest = _blake2b(b"".join((previous, run[1], envelope, covered)), digest_size=16).digest()
        key = run[0]
        self._rows.append((key, seq, code, step, ts, body, digest))
        self._queued_keys.add(key)
        if code == _RUN_FINISHED:
            self._finishing.append((key, seq))
        size = len(body) + _ROW_OVERHEAD
        if blobs:
            self._blobs.extend(blobs)
            self._queued_blobs += len(blobs)
            for blob in blobs:
                size += len(blob[1]) + 16
        self._queued_size += size
        self._marks.append((self._queued_blobs, self._queued_size))
        return _NEW(Queued, (digest, size))

    def take(self, limit: int) -> _V2Batch | None:
        """The first ``limit`` queued rows with the blobs and dictionaries they need."""
        if not self._rows:
            return None
        n = min(limit, len(self._rows))
        mark = self._marks[n - 1]
        blobs, size = mark[0] - self._taken[0], mark[1] - self._taken[1]
        self._taken = mark
        del self._marks[:n]
        rows, self._rows = self._rows[:n], self._rows[n:]
        taken_blobs, self._blobs = self._blobs[:blobs], self._blobs[blobs:]
        # Dictionaries are few and small: each batch takes all there are so far.
        dictionaries, self._dictionaries = self._dictionaries, []
        # Rows are queued in seq order per run, so a run's last row in the batch is its head:
        # looked for from the end, until every run queued is found (at once, for one run).
        heads: dict[int, tuple[int, bytes]] = {}
        runs_queued = len(self._queued_keys)
        for row in reversed(rows):
            if row[0] not in heads:
                heads[row[0]] = (row[1], row[6])
                if len(heads) == runs_queued:
                    break
        if not self._rows:
            self._queued_keys = set()
        finished: dict[int, int] = {}
        if self._finishing:
            later = []
            for key, seq in self._finishing:
                head = heads.get(key)
                if head is not None and seq <= head[0]:
                    finished[key] = seq  # in seq order: the last one in the batch stays
                else:
                    later.append((key, seq))
            self._finishing = later
        ids = self._run_ids
        runs = [
            (key, ids[key], seq, digest, finished.get(key)) for key, (seq, digest) in heads.items()
        ]
        return _V2Batch(rows, taken_blobs, dictionaries, runs, size)

    def write(self, conn: sqlite3.Connection, batch: Batch) -> None:
        assert isinstance(batch, _V2Batch)
        # Dictionaries and blobs first: a committed event never refers to a missing one.
        if batch.dictionaries:
            _insert_many(conn, "INSERT INTO dictionaries VALUES ", 2, batch.dictionaries)
        if batch.blobs:
            _insert_many(conn, "INSERT INTO blobs VALUES ", 2, batch.blobs)
        if batch.rows:
            _insert_many(conn, "INSERT INTO events VALUES ", 7, batch.rows)
        conn.executemany(
            "INSERT INTO runs (key, run_id, head_seq, head_hash, finished_seq)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET"
            " head_seq = excluded.head_seq, head_hash = excluded.head_hash,"
            " finished_seq = coalesce(excluded.finished_seq, finished_seq)",
            batch.runs,
        )


class BlobCache:
    """Blobs a reader has fetched, the most recent kept (a bounded LRU)."""

    def __init__(self, entries: int = 8192) -> None:
        self._entries = entries
        self._data: OrderedDict[int, bytes] = OrderedDict()

    def missing(self, ids: Iterable[int]) -> list[int]:
        data = self._data
        out = []
        for i in ids:
            if i in data:
                data.move_to_end(i)
            else:
                out.append(i)
        return out

    def add(self, rows: Iterable[tuple[int, bytes]]) -> None:
        data = self._data
        for i, blob in rows:
            data[int(i)] = bytes(blob)
        while len(data) > self._entries:
            data.popitem(last=False)

    @property
    def data(self) -> dict[int, bytes]:
        return self._data


class V2Reader:
    """Decodes version 2 rows for one reading connection: dictionaries, blobs, run keys."""

    def __init__(self) -> None:
        self.decoder = Decoder()
        self._dictionaries: set[int] = set()
        self.blobs = BlobCache()

    def add_dictionaries(self, rows: Iterable[tuple[int, bytes]]) -> None:
        for i, data in rows:
            if int(i) not in self._dictionaries:
                self._dictionaries.add(int(i))
                self.decoder.add_dictionary(int(i), bytes(data))

    def needed(self, bodies: Iterable[bytes]) -> list[int]:
        """The blob ids these bodies refer to that are not cached yet (for one bulk fetch)."""
        wanted: dict[int, None] = {}
        for body in bodies:
            try:
                for ref in self.decoder.refs(body):
                    wanted[ref] = None
            except CorruptEventError:
                continue  # decode() names the problem, row by row
        return self.blobs.missing(wanted)

    def decode(
        self, run_id: str, seq: int, ts: float, type_code: int, step: int | None, body: bytes
    ) -> AnyEvent:
        return self.decoder.decode(
            run_id=run_id,
            seq=seq,
            ts=ts,
            type_code=type_code,
            step=step,
            body=body,
            blobs=self.blobs.data,
        )

    def covered(self, body: bytes) -> bytes:
        """What the chain hash of a row with ``body`` covers."""
        return self.decoder.digest(body, self.blobs.data)


def _ids_sql(table: str, n: int) -> str:
    return f"SELECT id, data FROM {table} WHERE id IN ({', '.join('?' * n)})"


async def _v2_fetch(conn: aiosqlite.Connection, reader: V2Reader, bodies: list[bytes]) -> None:
    missing = reader.needed(bodies)
    for i in range(0, len(missing), 900):
        part = missing[i : i + 900]
        async with conn.execute(_ids_sql("blobs", len(part)), part) as cur:
            reader.blobs.add((int(i), bytes(d)) for i, d in await cur.fetchall())


async def _v2_dictionaries(conn: aiosqlite.Connection, reader: V2Reader) -> None:
    async with conn.execute("SELECT id, data FROM dictionaries") as cur:
        reader.add_dictionaries((int(i), bytes(d)) for i, d in await cur.fetchall())


async def _v2_decode_rows(
    conn: aiosqlite.Connection, reader: V2Reader, run_id: str, rows: Sequence[Any]
) -> list[AnyEvent]:
    await _v2_fetch(conn, reader, [bytes(row[4]) for row in rows])
    out: list[AnyEvent] = []
    for seq, type_code, step, ts, body in rows:
        try:
            event = reader.decode(run_id, seq, ts, type_code, step, bytes(body))
        except CorruptEventError:
            # A dictionary written after this reader began (a live log): look once more.
            await _v2_dictionaries(conn, reader)
            event = reader.decode(run_id, seq, ts, type_code, step, bytes(body))
        out.append(event)
    return out


async def v2_read(
    conn: aiosqlite.Connection, run_id: str, after_seq: int, steps: tuple[int, int] | None
) -> AsyncGenerator[AnyEvent, None]:
    async with conn.execute("SELECT key FROM runs WHERE run_id = ?", (run_id,)) as cur:
        row = await cur.fetchone()
    if row is None:
        raise UnknownRunError(run_id)
    reader = V2Reader()
    await _v2_dictionaries(conn, reader)
    sql = "SELECT seq, type, step, ts, body FROM events WHERE run = ? AND seq > ?"
    args: list[object] = [row[0], after_seq]
    if steps is not None:
        # No index by step in version 2 (it would cost more bytes than a run's samples): the
        # run's rows are scanned. Readers of step ranges are rare and short.
        sql += " AND step BETWEEN ? AND ?"
        args += [steps[0], steps[1]]
    sql += " ORDER BY seq"
    async with conn.execute(sql, args) as cur:
        while rows := list(await cur.fetchmany(_FETCH)):
            for event in await _v2_decode_rows(conn, reader, run_id, rows):
                yield event


async def v2_runs(
    conn: aiosqlite.Connection,
) -> list[tuple[str, RunStarted, RunFinished | None, int]]:
    reader = V2Reader()
    await _v2_dictionaries(conn, reader)
    # One query for every run: its first row and its last run_finished, by primary key.
    async with conn.execute(
        "SELECT r.run_id, r.head_seq, e.seq, e.type, e.step, e.ts, e.body FROM runs r"
        " JOIN events e ON e.run = r.key AND (e.seq = 0 OR e.seq = r.finished_seq)"
        " ORDER BY r.key, e.seq"
    ) as cur:
        rows = list(await cur.fetchall())
    heads = {str(row[0]): int(row[1]) for row in rows}
    started: dict[str, RunStarted] = {}
    finished: dict[str, RunFinished] = {}
    for i in range(0, len(rows), _FETCH):
        part = rows[i : i + _FETCH]
        events = await _v2_decode_rows(conn, reader, "", [row[2:] for row in part])
        for (run_id, _, seq, *_), event in zip(part, events, strict=True):
            event = msgspec.structs.replace(event, run_id=str(run_id))
            if isinstance(event, RunStarted) and seq == 0:
                started[event.run_id] = event
            elif isinstance(event, RunFinished):
                finished[event.run_id] = event
    out = [(rid, start, finished.get(rid), heads[rid]) for rid, start in started.items()]
    out.sort(key=lambda info: (info[1].ts, info[0]))
    return out


# -- stored rows, for integrity checks --------------------------------------------------------
#
# Plain sqlite3 (an integrity check is one synchronous pass), inside the caller's read
# transaction, so that a log being written is read as one committed prefix.


def sealed_heads(
    conn: sqlite3.Connection, version: int, run_id: str | None = None
) -> dict[str, tuple[int, bytes]]:
    """Every run's sealed head (its last seq and hash, as the heads table holds them), or only
    ``run_id``'s. A file whose heads table is gone has none: every run in it is headless."""
    if version == 1:
        sql = "SELECT run_id, seq, hash FROM run_heads"
    else:
        sql = "SELECT run_id, head_seq, head_hash FROM runs"
    args: tuple[str, ...] = ()
    if run_id is not None:
        sql += " WHERE run_id = ?"
        args = (run_id,)
    try:
        cur = conn.execute(sql, args)
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return {}
        raise
    return {str(rid): (int(seq), bytes(digest)) for rid, seq, digest in cur}


def head(conn: sqlite3.Connection, version: int, run_id: str) -> StoredHead:
    """A run's last row and sealed head in a file of ``version``."""
    if version == 1:
        sql = "SELECT seq, hash FROM events WHERE run_id = ? ORDER BY seq DESC LIMIT 1"
    else:
        # Rows whose run is not in the runs table cannot be found by the run's id.
        sql = (
            "SELECT seq, hash FROM events WHERE run = (SELECT key FROM runs WHERE run_id = ?)"
            " ORDER BY seq DESC LIMIT 1"
        )
    last = conn.execute(sql, (run_id,)).fetchone()
    return StoredHead(_pair(last), sealed_heads(conn, version, run_id).get(run_id))


def stored_runs(
    conn: sqlite3.Connection, version: int
) -> Iterator[tuple[str, Iterator[StoredRow]]]:
    """Every run's rows in seq order, run by run (each run's rows read before the next run's
    are asked for)."""
    if version == 1:
        rows = conn.execute(f"SELECT {_V1_COLUMNS} FROM events ORDER BY run_id, seq")
        yield from itertools.groupby(v1_stored_rows(rows), key=operator.itemgetter(0))
        return
    reader = _v2_reader_of(conn)
    names = {int(k): str(r) for k, r in conn.execute("SELECT key, run_id FROM runs")}
    keys = [int(k) for (k,) in conn.execute("SELECT DISTINCT run FROM events ORDER BY run")]
    for key in sorted(set(keys) | set(names)):
        # Rows whose run is gone from the runs table keep a name that says so.
        run_id = names.get(key, f"<run key {key}>")
        yield run_id, v2_stored_rows(conn, reader, key, run_id)


def stored_rows(conn: sqlite3.Connection, version: int, run_id: str) -> Iterator[StoredRow]:
    """One run's rows in seq order (none for a run the file does not know)."""
    if version == 1:
        yield from v1_stored_rows(
            conn.execute(
                f"SELECT {_V1_COLUMNS} FROM events WHERE run_id = ? ORDER BY seq", (run_id,)
            )
        )
        return
    found = conn.execute("SELECT key FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if found is not None:
        yield from v2_stored_rows(conn, _v2_reader_of(conn), int(found[0]), run_id)


_V1_COLUMNS = "run_id, seq, type, step, ts, body, hash"


def v1_stored_rows(cur: Iterable[Any]) -> Iterator[StoredRow]:
    """Version 1 rows (``_V1_COLUMNS``) as stored rows: a version 1 hash covers the body."""
    for run_id, seq, type_, step, ts, body, digest in cur:
        body = bytes(body)
        decoded: AnyEvent | CorruptEventError
        try:
            decoded = decode_json(body)
        except CorruptEventError as exc:
            decoded = exc
        yield (
            str(run_id),
            int(seq),
            str(type_),
            None if step is None else int(step),
            float(ts),
            body,
            bytes(digest),
            decoded,
        )


def v2_stored_rows(
    conn: sqlite3.Connection, reader: V2Reader, key: int, run_id: str
) -> Iterator[StoredRow]:
    """A version 2 run's rows (the run of ``key``) as stored rows, each body parsed once.

    The decoding fetches the blobs it asks for (see :class:`_Blobs`), and what the hash covers
    is made of the blobs it asked for, in the order it first did, which is the order of the
    body's references (what :meth:`V2Reader.covered` computes from a second parse). A row that
    does not decode fails with the error a reader that first computes what the hash covers
    would meet first (see :func:`_first_failure`).
    """
    decoder = reader.decoder
    decode = decoder.decode
    blobs = _Blobs(conn)
    cur = conn.execute(
        "SELECT seq, type, step, ts, body, hash FROM events WHERE run = ? ORDER BY seq", (key,)
    )
    while rows := cur.fetchmany(_FETCH):
        for seq, code, step, ts, body, digest in rows:
            seq, code, ts, body = int(seq), int(code), float(ts), bytes(body)
            envelope = v2_covered(run_id, seq, code, step, ts)
            decoded: AnyEvent | CorruptEventError
            used = blobs.used = {}
            try:
                decoded = decode(
                    run_id=run_id,
                    seq=seq,
                    ts=ts,
                    type_code=code,
                    step=step,
                    body=body,
                    blobs=blobs,
                )
            except CorruptEventError as failure:
                covered = envelope + body
                decoded = _first_failure(decoder, blobs, body, failure)
            else:
                covered = b"".join((envelope, body, *used.values())) if used else envelope + body
            tag = _TAGS.get(code)
            yield (
                run_id,
                seq,
                tag if tag is not None else f"?{code}",
                None if step is None else int(step),
                ts,
                covered,
                bytes(digest),
                decoded,
            )


_TAGS = dict(TYPE_BY_CODE)  # a plain dict: a lookup a row, and a mapping proxy costs more


def _first_failure(
    decoder: Decoder, blobs: _Blobs, body: bytes, failure: CorruptEventError
) -> CorruptEventError:
    """Why a body does not decode, as a reader that computes what its hash covers first says
    it: it fails first there (a body it cannot scan, a blob that is not there), if it does."""
    try:
        decoder.digest(body, blobs)
    except CorruptEventError as first:
        return first
    return failure


class _Blobs(dict[int, bytes]):
    """A run's blobs as its rows' decoding asks for them: fetched on first need, and noted
    in :attr:`used`, first reference first, for what the hash covers.

    A blob not held yet past the newest one fetched brings in the ids after it too, a range at
    a time: a run's new blobs are numbered as its rows first refer to them, so one query serves
    the rows to come. An older one (a value met again) comes alone. At most ``_HELD`` are held,
    the oldest fetched going first.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__()
        self._conn = conn
        self._top = 0  # the highest id fetched
        self.used: dict[int, bytes] = {}

    def get(self, blob_id: int, default: Any = None) -> Any:
        data = dict.get(self, blob_id)
        if data is None:
            data = self._fetch(blob_id)
            if data is None:
                return default
        if blob_id not in self.used:
            self.used[blob_id] = data
        return data

    def _fetch(self, blob_id: int) -> bytes | None:
        if len(self) >= _HELD:
            for old in list(itertools.islice(self, len(self) - _HELD // 2)):
                del self[old]
        last = blob_id + _RANGE if blob_id > self._top else blob_id + 1
        for found, data in self._conn.execute(
            "SELECT id, data FROM blobs WHERE id >= ? AND id < ?", (blob_id, last)
        ):
            self[int(found)] = bytes(data)
        self._top = max(self._top, last - 1)
        return dict.get(self, blob_id)


_HELD = 8192
_RANGE = 1024


def _v2_reader_of(conn: sqlite3.Connection) -> V2Reader:
    """A reader holding the file's dictionaries (plain sqlite3)."""
    reader = V2Reader()
    reader.add_dictionaries(
        (int(i), bytes(d)) for i, d in conn.execute("SELECT id, data FROM dictionaries")
    )
    return reader


def _pair(row: Any) -> tuple[int, bytes] | None:
    return None if row is None else (int(row[0]), bytes(row[1]))


def writer_for(conn: sqlite3.Connection, version: int) -> WriterFormat:
    """The writer of a file's own version (on the writer's thread)."""
    if version == 1:
        return V1Writer()
    if version == 2:
        return V2Writer.open(conn)
    if version == 3:
        return V3Writer.open(conn)
    raise EventLogError(f"no writer for schema version {version}")  # pragma: no cover


# Version 3 keeps version 2's layout; its events may carry what pipelined and hedged runs record
# (new fields, the step_abandoned type), which a reader of version 2 would not know. The number
# changes so that such a reader says the log is newer than it, instead of misreading a row.
V3_SCHEMA = V2_SCHEMA.replace("'schema_version', '2'", "'schema_version', '3'").replace(
    "PRAGMA user_version = 2;", "PRAGMA user_version = 3;"
)


class V3Writer(V2Writer):
    """Writes version 3 rows: version 2's, in a file that says 3."""

    version = 3


SCHEMAS = {1: V1_SCHEMA, 2: V2_SCHEMA, 3: V3_SCHEMA}
"""The DDL of each version a new file can be created in."""
