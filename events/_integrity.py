"""Check a log's integrity: every run's hash chain, its seqs, its bodies and its sealed head.

Each event row stores ``chain_hash(previous_hash, body)`` (in a version 2 file the body followed
by the blobs it refers to), and a heads table (``run_heads``, or ``runs`` in version 2) holds
each run's last seq and hash, written in the same transaction as the rows. Together they
expose:

- a flipped bit or an edited field in a body (the row's hash no longer matches);
- a flipped bit in a stored hash (the next row, or the head, still chains from the true one);
- deleted rows (a gap in the seqs);
- reordered rows (a row whose body names another seq; in version 2, whose hash no longer
  chains);
- truncation, rows cut off the end of a run (the run ends before its head).

The chain is a checksum, not a signature: someone who rewrites a run's whole chain and its head
from the edited row on goes unnoticed. It guards against accidents, bad disks and careless
edits, not against a forger.

The checks read the file through the store's own plain read-only connection
(:func:`events._log.open_for_reading`) and its readers of stored rows and heads
(:mod:`events._formats`), inside one read transaction, so a log being written is checked as one
consistent committed prefix. They are synchronous: async code runs them on a worker thread.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import msgspec

from ._errors import (
    BrokenLogError,
    CorruptEventError,
    DamagedLogError,
    EventLogError,
    UnknownRunError,
)
from ._formats import StoredRow, chain_hash, sealed_heads, stored_rows, stored_runs
from ._log import open_for_reading
from ._targets import is_database_url, redact_url
from ._types import AnyEvent, StepEvent, event_tag

if TYPE_CHECKING:
    from ._postgres_check import PostgresRows

__all__ = ["BrokenLogError", "CheckedRun", "LogReport", "RunIntegrity", "check_run", "verify_log"]


@dataclass(frozen=True, kw_only=True)
class RunIntegrity:
    """The integrity of one run: how many of its rows were read and the first problem, if any."""

    run_id: str
    events: int
    """Rows of the run read from the file."""
    ok: bool
    first_bad_seq: int | None = None
    """The first seq that is wrong or missing; None when the run is intact."""
    problem: str = ""
    """What is wrong, in one line; empty when the run is intact."""

    def line(self) -> str:
        """One line for a terminal: ``run_id: ok (N events)`` or where and why it is broken."""
        if self.ok:
            return f"{self.run_id}: ok ({self.events} events)"
        where = f"at seq {self.first_bad_seq}" if self.first_bad_seq is not None else "unread"
        return f"{self.run_id}: BROKEN {where}: {self.problem}"

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible builtins: the fields."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out


@dataclass(frozen=True, kw_only=True)
class LogReport:
    """The integrity of every run in one log file.

    ``problem`` is set when SQLite itself finds the file damaged (a truncated or overwritten
    file); the runs read before the damage are still reported.
    """

    path: str
    problem: str = ""
    runs: tuple[RunIntegrity, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether the file and every run in it are intact."""
        return not self.problem and all(run.ok for run in self.runs)

    @property
    def events(self) -> int:
        """Rows read, over every run."""
        return sum(run.events for run in self.runs)

    @property
    def broken(self) -> tuple[RunIntegrity, ...]:
        """The runs that failed."""
        return tuple(run for run in self.runs if not run.ok)

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible builtins (``maker verify --json``): the fields, then ``ok`` and
        ``events``."""
        # Through JSON rather than to_builtins, so that ``runs`` is a list as a reader gets it.
        out: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(self))
        out["ok"] = self.ok
        out["events"] = self.events
        return out


def verify_log(path: str | os.PathLike[str]) -> LogReport:
    """Check every run in a log file.

    Raises :class:`events.NotALogError` for a file that is not a maker log,
    :class:`events.SchemaVersionError` for another schema version, and
    :class:`events.EventLogError` for a missing file. Damage, whether to the runs or to the SQLite
    file itself, is reported in the :class:`LogReport`, never raised.

    >>> import anyio, os, sqlite3, tempfile
    >>> from events import EventLog, RunFinished, RunStarted
    >>> path = os.path.join(tempfile.mkdtemp(), "log.db")
    >>> async def main() -> None:
    ...     async with EventLog(path) as log:
    ...         log.append(RunStarted(run_id="demo", seq=0, ts=0.0, task="t", task_params={},
    ...                               policy={}, models=[], model_params={}, seed=0, version=""))
    ...         log.append(RunFinished(run_id="demo", seq=1, ts=1.0, status="succeeded",
    ...                                steps=0, samples=0))
    >>> anyio.run(main)
    >>> report = verify_log(path)
    >>> report.ok, [run.line() for run in report.runs]
    (True, ['demo: ok (2 events)'])
    >>> conn = sqlite3.connect(path)  # cut the run short, behind the log's back
    >>> conn.executescript("DROP TRIGGER events_append_only_delete;"
    ...                    "DELETE FROM events WHERE seq = 1;").close()
    >>> conn.close()
    >>> [run.line() for run in verify_log(path).runs]
    ['demo: BROKEN at seq 1: ends at seq 0 but its head says 1 (truncated)']
    """
    name = os.fspath(path)
    if is_database_url(name):
        return _verify_database(name)
    try:
        conn, version = open_for_reading(name)
    except DamagedLogError as exc:
        return LogReport(path=name, problem=f"SQLite cannot read the file: {exc.detail}")
    runs: list[RunIntegrity] = []
    problem = ""
    checker: _RunChecker | None = None
    try:
        conn.execute("BEGIN")
        damage = _cut_short(conn, name) or _quick_check(conn)
        if damage:
            # Keep going: the runs SQLite can still read are worth checking one by one.
            problem = f"SQLite reports the file damaged: {damage}"
        heads = sealed_heads(conn, version)
        for run_id, group in stored_runs(conn, version):
            checker = _RunChecker(run_id, heads.pop(run_id, None))
            checker.feed(group)
            runs.append(checker.result())
            checker = None
        runs.extend(_headless_run(run_id, head) for run_id, head in sorted(heads.items()))
    except sqlite3.DatabaseError as exc:
        # A damaged file is an answer, not a crash: say what SQLite said and what was read.
        problem = problem or f"SQLite cannot read the file: {_one_line(str(exc))}"
        if checker is not None:
            runs.append(checker.unreadable(_one_line(str(exc))))
    finally:
        conn.close()
    return LogReport(path=name, runs=tuple(runs), problem=problem)


def _verify_database(url: str) -> LogReport:
    """:func:`verify_log` of a PostgreSQL log: the same checks of the same rows, in one
    snapshot. The database checks its own pages, so there is no file to check beside the runs."""
    from ._postgres_check import PostgresRows

    rows = PostgresRows(url)
    runs: list[RunIntegrity] = []
    try:
        heads = rows.sealed_heads()
        for run_id, group in rows.stored_runs():
            checker = _RunChecker(run_id, heads.pop(run_id, None))
            checker.feed(group)
            runs.append(checker.result())
        runs.extend(_headless_run(run_id, head) for run_id, head in sorted(heads.items()))
    finally:
        rows.close()
    return LogReport(path=rows.shown, runs=tuple(runs))


def check_run(path: str | os.PathLike[str], run_id: str) -> RunIntegrity:
    """Check one run, and raise :class:`BrokenLogError` naming its first bad seq if it fails.

    Replay and resume never build on a damaged run: they read it through :class:`CheckedRun`,
    which makes these checks as it goes. Raises :class:`events.UnknownRunError` when the log
    holds no such run (exact id).
    """
    with CheckedRun(path, run_id) as run:
        return run.finish()


class CheckedRun:
    """One run's events in seq order, read in the pass that checks the run's integrity:
    what :func:`check_run` checks, checked as the events are handed on, so a re-execution
    reads and decodes the log once.

    Iterating yields each event once its row has passed (hash chain, seq, columns) and while
    the run can still pass: not past its head, nor without one. The first problem raises
    :class:`BrokenLogError` with the first bad seq and the problem :func:`check_run` names (the
    rest of the run is read first: a later row can tell what happened, a swap from a move,
    say). The head is compared when the rows run out, before the iteration ends, so a reader
    that reaches the end has read a whole, intact run. Rows after ``last_seq`` are checked,
    not yielded.

    The rows are read in one read transaction, a batch at a time: memory holds a batch. Use it
    as a context manager; :meth:`finish` checks what has not been read yet.
    """

    def __init__(
        self, path: str | os.PathLike[str], run_id: str, *, last_seq: int | None = None
    ) -> None:
        self.path = os.fspath(path)
        self.run_id = run_id
        self._last_seq = last_seq
        self._checker = _RunChecker(run_id, None)
        self._conn: sqlite3.Connection | None = None
        self._database: PostgresRows | None = None
        self._rows: Iterator[StoredRow] = iter(())
        self._result: RunIntegrity | None = None
        self._error: EventLogError | None = None
        self._envelope_in_columns = False

    def __enter__(self) -> Self:
        if is_database_url(self.path):
            from ._postgres_check import PostgresRows

            self._database = PostgresRows(self.path)
            self._checker.head = self._database.sealed_heads(self.run_id).get(self.run_id)
            self._envelope_in_columns = True
            self._rows = self._database.stored_rows(self.run_id)
            return self
        try:
            conn, version = open_for_reading(self.path)
        except DamagedLogError as exc:
            raise BrokenLogError(
                self.path, self.run_id, None, f"SQLite cannot read the file: {exc.detail}"
            ) from exc
        self._conn = conn
        try:
            conn.execute("BEGIN")
            self._checker.head = sealed_heads(conn, version, self.run_id).get(self.run_id)
            self._envelope_in_columns = version >= 2
            self._rows = stored_rows(conn, version, self.run_id)
        except sqlite3.DatabaseError as exc:
            self._conclude(self._checker.unreadable(_one_line(str(exc))))
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> AnyEvent:
        if self._result is not None or self._error is not None:
            self.finish()  # raises what the check found, if anything
            raise StopIteration
        checker = self._checker
        head, last, columns = checker.head, self._last_seq, self._envelope_in_columns
        try:
            for row in self._rows:
                checker.events += 1
                seq, decoded, digest = row[1], row[7], row[6]
                if (
                    columns
                    and seq == checker.expected
                    and checker.bad is None
                    and checker._hash_suspect is None
                    and checker._misplaced is None
                    and not isinstance(decoded, CorruptEventError)
                    and digest == chain_hash(checker.previous, row[5])
                ):
                    # What _row does with an intact row in place, where the body's envelope is
                    # the row's columns (version 2), so that they agree goes without checking.
                    checker.expected = seq + 1
                    checker.last_hash = checker.previous = digest
                else:
                    checker._row(row)
                    if checker.bad is not None or checker._hash_suspect is not None:
                        break  # broken: finish() reads on, to name the damage as check_run does
                if head is None or seq > head[0] or (seq == head[0] and digest != head[1]):
                    break  # the head cannot seal this run: finish() says why
                if last is not None and seq > last:
                    break
                assert not isinstance(decoded, CorruptEventError)  # _row failed such a row
                return decoded
        except sqlite3.DatabaseError as exc:
            self._conclude(checker.unreadable(_one_line(str(exc))))
        self.finish()
        raise StopIteration

    def finish(self) -> RunIntegrity:
        """Check the rest of the run without handing it on, and return the verdict; raise
        :class:`BrokenLogError` if the run is broken (every time it is asked)."""
        if self._result is None and self._error is None:
            checker = self._checker
            try:
                checker.feed(self._rows)
                result = checker.result()
            except sqlite3.DatabaseError as exc:
                result = checker.unreadable(_one_line(str(exc)))
            self._conclude(result)
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def _conclude(self, result: RunIntegrity) -> None:
        self._close()
        if result.events == 0 and self._checker.head is None:
            self._error = UnknownRunError(self.run_id)
        elif not result.ok:
            self._error = BrokenLogError(
                redact_url(self.path), self.run_id, result.first_bad_seq, result.problem
            )
        else:
            self._result = result

    def _close(self) -> None:
        self._rows = iter(())
        if self._database is not None:
            database, self._database = self._database, None
            database.close()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()


# -- the file -------------------------------------------------------------------------------


def _cut_short(conn: sqlite3.Connection, path: str) -> str:
    # SQLite writes whole pages only, so a ragged end means the file was cut (or padded); SQLite
    # itself reads the missing bytes as zeros and may not notice.
    page = int(conn.execute("PRAGMA page_size").fetchone()[0])
    size = os.path.getsize(path)
    if page > 0 and size % page:
        return f"the file is {size} bytes, not a whole number of {page}-byte pages (cut short)"
    return ""


def _quick_check(conn: sqlite3.Connection) -> str:
    # quick_check walks every page of every b-tree (indexes too) without cross-checking them:
    # it finds damage the ordered scan of the events table would never touch.
    try:
        found = [str(row[0]) for row in conn.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as exc:
        return _one_line(str(exc))
    if found == ["ok"]:
        return ""
    return _one_line("; ".join(found))


def _headless_run(run_id: str, head: tuple[int, bytes]) -> RunIntegrity:
    return RunIntegrity(
        run_id=run_id,
        events=0,
        ok=False,
        first_bad_seq=0,
        problem=f"its head says seq {head[0]} but it has no rows (deleted)",
    )


# -- checking one run ------------------------------------------------------------------------


@functools.cache
def _tag(cls: type[AnyEvent]) -> str:
    return event_tag(cls)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _seq_range(first: int, last: int) -> str:
    return f"seq {first}" if first == last else f"seqs {first}-{last}"


class _RunChecker:
    """Checks one run's rows in seq order; finds the first problem and names it precisely.

    Some problems are only told apart by a later row: a stored hash that was flipped leaves the
    next row chaining from the true hash, and a swapped pair shows in the second row. The first
    bad seq is fixed when the first problem shows; later rows only sharpen its description.
    """

    def __init__(self, run_id: str, head: tuple[int, bytes] | None) -> None:
        self.run_id = run_id
        self.head = head
        self.events = 0
        self.expected = 0
        self.previous = b""
        self.last_hash = b""
        self.bad: int | None = None
        self.problem = ""
        # A hash mismatch waiting for the next row: (seq, the hash its body should have had).
        self._hash_suspect: tuple[int, bytes] | None = None
        # A misplaced body waiting for its partner: (column seq, the seq its body names).
        self._misplaced: tuple[int, int] | None = None

    def feed(self, rows: Iterable[StoredRow]) -> None:
        for row in rows:
            self.events += 1
            self._row(row)

    def _fail(self, seq: int, problem: str) -> None:
        if self.bad is None:
            self.bad, self.problem = seq, problem

    def _row(self, row: StoredRow) -> None:
        _run_id, seq, type_, step, ts, covered, digest, decoded = row
        if (
            seq == self.expected
            and self.bad is None
            and self._hash_suspect is None
            and self._misplaced is None
            and not isinstance(decoded, CorruptEventError)
        ):
            # The usual row, intact and in place, checked at a fraction of the cost of the
            # general path below (which tells every kind of damage apart).
            should_be = chain_hash(self.previous, covered)
            if (
                digest == should_be
                and decoded.seq == seq
                and decoded.ts == ts
                and decoded.run_id == self.run_id
                and _tag(type(decoded)) == type_
                and (decoded.step if isinstance(decoded, StepEvent) else None) == step
            ):
                self.expected = seq + 1
                self.last_hash = self.previous = digest
                return
        if self._hash_suspect is not None:
            suspect, should_be = self._hash_suspect
            self._hash_suspect = None
            if suspect == seq - 1 and digest == chain_hash(should_be, covered):
                self._fail(suspect, f"the stored hash of seq {suspect} was altered (bit flip)")
            else:
                self._fail(
                    suspect, f"hash mismatch at seq {suspect} (the row was edited or flipped)"
                )
        if self._misplaced is not None:
            self._look_for_partner(seq, decoded)
        if self.bad is not None:
            return
        if seq != self.expected:
            self._fail(
                self.expected, f"{_seq_range(self.expected, seq - 1)} missing (rows deleted)"
            )
            return
        self.expected = seq + 1
        self.last_hash = digest
        should_be = chain_hash(self.previous, covered)
        self.previous = digest
        if isinstance(decoded, CorruptEventError):
            self._fail(seq, f"the body of seq {seq} does not decode ({_one_line(str(decoded))})")
            return
        event = decoded
        if event.seq != seq:
            self._misplaced = (seq, event.seq)
            self._fail(
                seq, f"seq {seq}: its body says seq {event.seq} (the row was edited or moved)"
            )
            return
        event_step = event.step if isinstance(event, StepEvent) else None
        for column, stored, inside in (
            ("run_id", self.run_id, event.run_id),
            ("type", type_, event_tag(type(event))),
            ("step", step, event_step),
            ("ts", ts, event.ts),
        ):
            if stored == inside:
                continue
            # The hash tells which side changed: an intact body still chains.
            if digest == should_be:
                self._fail(
                    seq,
                    f"seq {seq}: the {column} column says {stored!r} but the body says "
                    f"{inside!r} (the column was edited)",
                )
            else:
                self._fail(
                    seq,
                    f"hash mismatch at seq {seq} (the body was edited or flipped: its {column} "
                    "no longer matches the row)",
                )
            return
        if digest != should_be:
            self._hash_suspect = (seq, should_be)

    def _look_for_partner(self, seq: int, decoded: AnyEvent | CorruptEventError) -> None:
        assert self._misplaced is not None
        first, named = self._misplaced
        if seq != named:
            return
        self._misplaced = None
        if isinstance(decoded, CorruptEventError):
            return
        if decoded.seq == first:
            self.problem = f"seq {first} and {named} swapped (rows out of order)"

    def _finish_suspect(self) -> None:
        if self._hash_suspect is None:
            return
        suspect, should_be = self._hash_suspect
        self._hash_suspect = None
        if self.head is not None and self.head == (suspect, should_be):
            self._fail(suspect, f"the stored hash of seq {suspect} was altered (bit flip)")
        else:
            self._fail(suspect, f"hash mismatch at seq {suspect} (the row was edited or flipped)")

    def result(self) -> RunIntegrity:
        self._finish_suspect()
        if self.bad is None:
            self._check_head()
        return RunIntegrity(
            run_id=self.run_id,
            events=self.events,
            ok=self.bad is None,
            first_bad_seq=self.bad,
            problem=self.problem,
        )

    def _check_head(self) -> None:
        last = self.expected - 1
        head = self.head
        if self.events == 0:
            if head is not None:
                self._fail(0, f"its head says seq {head[0]} but it has no rows (deleted)")
            return
        if head is None:
            self._fail(
                last + 1,
                f"it has rows up to seq {last} but no head (the head was deleted), "
                "so truncation cannot be ruled out",
            )
        elif head[0] > last:
            self._fail(last + 1, f"ends at seq {last} but its head says {head[0]} (truncated)")
        elif head[0] < last:
            self._fail(
                head[0] + 1,
                f"goes on to seq {last} past its head at seq {head[0]} "
                "(rows added outside the log writer, or the head was rewound)",
            )
        elif head[1] != self.last_hash:
            self._fail(last, f"its head's hash does not match seq {last} (rewritten)")

    def unreadable(self, detail: str) -> RunIntegrity:
        """The result when SQLite failed partway through this run."""
        self._finish_suspect()
        self._fail(self.expected, f"SQLite cannot read the rows from seq {self.expected}: {detail}")
        return RunIntegrity(
            run_id=self.run_id,
            events=self.events,
            ok=False,
            first_bad_seq=self.bad,
            problem=self.problem,
        )
