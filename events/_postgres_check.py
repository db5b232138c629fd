"""A PostgreSQL log's stored rows and heads, for the integrity checks of :mod:`events._integrity`.

The checks are synchronous (``maker verify``, :class:`events.CheckedRun` on a worker thread or in
a read-ahead process), and asyncpg is not: :class:`PostgresRows` runs one connection on an event
loop of its own thread (an anyio blocking portal) and hands rows over a batch at a time, all in
one read-only repeatable-read transaction, so a log being written is checked as one committed
prefix, as SQLite's read transaction does. What a row's hash covers is computed as for a SQLite
file (:func:`events._formats.v2_stored_rows`): the envelope, the body, and the blobs the
decoding used, first reference first.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._compact import TYPE_BY_CODE, Decoder
from ._errors import CorruptEventError, EventLogError
from ._formats import StoredRow, V2Reader, v2_covered
from ._postgres import _FETCH, connect, database_errors, identify
from ._targets import redact_url
from ._types import AnyEvent

__all__ = ["PostgresRows"]

T = TypeVar("T")

_HELD = 8192  # blobs held at most while checking (the oldest fetched go first)


class PostgresRows:
    """A read-only snapshot of a PostgreSQL log: its heads and its runs' stored rows.

    Usable from any thread, one at a time; :meth:`close` ends the transaction, the connection
    and the loop's thread. Raises what opening a :class:`events.PostgresLog` for reading does.
    """

    def __init__(self, url: str) -> None:
        self.shown = redact_url(url)
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        self._conn: Any = None
        self._tx: Any = None
        try:
            self._conn = self._call(connect, url)
            self.version = self._call(identify, self._conn, self.shown)
            if not self.version:
                from ._errors import NotALogError

                raise NotALogError(self.shown, "the database holds no maker log")
            self._tx = self._conn.transaction(isolation="repeatable_read", readonly=True)
            self._call(self._tx.start)
            self._reader = V2Reader()
            self._reader.add_dictionaries(
                (int(i), bytes(d))
                for i, d in self._call(self._conn.fetch, "SELECT id, data FROM dictionaries")
            )
        except BaseException:
            self.close()
            raise

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return self._portal.call(fn, *args)
        except database_errors() as exc:
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise EventLogError(f"reading {self.shown} failed: {detail}") from exc

    def close(self) -> None:
        if self._portal_cm is None:
            return
        try:
            if self._conn is not None:
                from ._postgres import _close_quietly

                self._portal.call(_close_quietly, self._conn)
        finally:
            self._conn = None
            cm, self._portal_cm = self._portal_cm, None
            cm.__exit__(None, None, None)

    def sealed_heads(self, run_id: str | None = None) -> dict[str, tuple[int, bytes]]:
        """Every run's sealed head, or only ``run_id``'s."""
        sql = "SELECT run_id, head_seq, head_hash FROM runs"
        args: tuple[str, ...] = ()
        if run_id is not None:
            sql += " WHERE run_id = $1"
            args = (run_id,)
        rows = self._call(self._conn.fetch, sql, *args)
        return {str(r): (int(s), bytes(h)) for r, s, h in rows}

    def stored_runs(self) -> Iterator[tuple[str, Iterator[StoredRow]]]:
        """Every run's rows in seq order, run by run; rows whose run is gone from ``runs``
        keep a name that says so."""
        names = {
            int(k): str(r) for k, r in self._call(self._conn.fetch, "SELECT key, run_id FROM runs")
        }
        keys = {int(k) for (k,) in self._call(self._conn.fetch, "SELECT DISTINCT run FROM events")}
        for key in sorted(keys | set(names)):
            run_id = names.get(key, f"<run key {key}>")
            yield run_id, self._rows(key, run_id)

    def stored_rows(self, run_id: str) -> Iterator[StoredRow]:
        """One run's rows in seq order (none for a run the database does not know)."""
        key = self._call(self._conn.fetchval, "SELECT key FROM runs WHERE run_id = $1", run_id)
        if key is not None:
            yield from self._rows(int(key), run_id)

    def _rows(self, key: int, run_id: str) -> Iterator[StoredRow]:
        decoder = self._reader.decoder
        cache: dict[int, bytes] = {}
        cursor = self._call(
            self._conn.cursor,
            "SELECT seq, type, step, ts, body, hash FROM events WHERE run = $1 ORDER BY seq",
            key,
        )
        while rows := self._call(cursor.fetch, _FETCH):
            bodies = [bytes(row[4]) for row in rows]
            self._fetch_blobs(decoder, cache, bodies)
            for (seq, code, step, ts, _, digest), body in zip(rows, bodies, strict=True):
                seq, code, ts = int(seq), int(code), float(ts)
                envelope = v2_covered(run_id, seq, code, step, ts)
                blobs = _Used(cache)
                decoded: AnyEvent | CorruptEventError
                try:
                    decoded = decoder.decode(
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
                    decoded = _first_failure(decoder, cache, body, failure)
                else:
                    covered = b"".join((envelope, body, *blobs.used.values()))
                tag = TYPE_BY_CODE.get(code)
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

    def _fetch_blobs(self, decoder: Decoder, cache: dict[int, bytes], bodies: list[bytes]) -> None:
        refs: dict[int, None] = {}
        for body in bodies:
            try:
                refs.update(dict.fromkeys(decoder.refs(body)))
            except CorruptEventError:
                continue  # the row's decoding names the problem
        wanted = [ref for ref in refs if ref not in cache]
        if not wanted:
            return
        if len(cache) + len(wanted) > _HELD:
            # The oldest fetched go first, but none this batch refers to.
            for old in [i for i in cache if i not in refs][: len(cache) + len(wanted) - _HELD // 2]:
                del cache[old]
        rows = self._call(
            self._conn.fetch, "SELECT id, data FROM blobs WHERE id = ANY($1::bigint[])", wanted
        )
        for i, data in rows:
            cache[int(i)] = bytes(data)


class _Used(dict[int, bytes]):
    """The blobs held, as one row's decoding asks for them, noted in :attr:`used`."""

    def __init__(self, held: dict[int, bytes]) -> None:
        super().__init__()
        self._held = held
        self.used: dict[int, bytes] = {}

    def get(self, blob_id: int, default: Any = None) -> Any:
        data = self._held.get(blob_id)
        if data is None:
            return default
        if blob_id not in self.used:
            self.used[blob_id] = data
        return data

    def __getitem__(self, blob_id: int) -> bytes:
        data = self.get(blob_id)
        if data is None:
            raise KeyError(blob_id)
        assert isinstance(data, bytes)
        return data

    def __contains__(self, blob_id: object) -> bool:
        return blob_id in self._held


def _first_failure(
    decoder: Decoder, blobs: dict[int, bytes], body: bytes, failure: CorruptEventError
) -> CorruptEventError:
    """Why a body does not decode, as a reader that computes what its hash covers first says
    it (see :func:`events._formats._first_failure`)."""
    try:
        decoder.digest(body, blobs)
    except CorruptEventError as first:
        return first
    return failure
