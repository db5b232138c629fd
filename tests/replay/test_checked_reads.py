"""Reading a run in the pass that checks it, in this process (CheckedRun) or in a helper process
(ReadAhead): the same events and the same verdict as check_run, and re-execution and resume
refuse a broken run whatever else they find first."""

from __future__ import annotations

import functools
import os
import signal
import sqlite3
import threading
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from events import (
    AnyEvent,
    CheckedRun,
    EventLog,
    RunResumed,
    SampleRequested,
    StepDecided,
    StepStarted,
)
from events._formats import V2Reader, v2_stored_rows
from maker import MakerError, Policy
from maker.tasks import Hanoi
from replay import BrokenLogError, check_run, load_events, resume_run, verify_run
from replay._commands import revote_command_impl
from replay._readahead import ReadAhead

from ..events._factory import plain_v2_rows, run_events
from ._logs import copy_log, load, record

Reader = type[CheckedRun] | type[ReadAhead]
READERS: list[Reader] = [CheckedRun, ReadAhead]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[Path, str]]:
    """A log of two runs per schema version, and the run the tests damage."""
    logs = {}
    for version in (1, 2):
        path = tmp_path_factory.mktemp(f"checked{version}") / "runs.db"
        results = record(path, lambda: Hanoi(4), [1, 2], schema_version=version)
        logs[version] = (path, results[1].run_id)
    return logs


def last_seq(path: Path, run_id: str) -> int:
    """The run's last seq as replay and resume learn it, from the log's run index."""

    async def go() -> int:
        async with EventLog(path, mode="r") as log:
            return (await log.run(run_id)).last_seq

    return anyio.run(go)


def stored(
    path: Path, version: int, run_id: str
) -> tuple[tuple[int, bytes] | None, dict[int, bytes]]:
    """The run's stored head (seq and hash), and the stored hash of each of its rows."""
    with closing(sqlite3.connect(path)) as conn:
        if version == 1:
            head = conn.execute("SELECT seq, hash FROM run_heads WHERE run_id = ?", (run_id,))
        else:
            head = conn.execute("SELECT head_seq, head_hash FROM runs WHERE run_id = ?", (run_id,))
        found = head.fetchone()
        where, run = _run(conn, version, run_id)
        hashes = {
            int(seq): bytes(digest)
            for seq, digest in conn.execute(f"SELECT seq, hash FROM events WHERE {where}", (run,))
        }
    return (None if found is None else (int(found[0]), bytes(found[1]))), hashes


# -- damage ------------------------------------------------------------------------------------

Damage = Callable[[sqlite3.Connection, int, str], None]


def _run(conn: sqlite3.Connection, version: int, run_id: str) -> tuple[str, object]:
    if version == 1:
        return "run_id = ?", run_id
    (key,) = conn.execute("SELECT key FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    return "run = ?", int(key)


def _column(conn: sqlite3.Connection, version: int, run_id: str, column: str, seq: int) -> bytes:
    where, run = _run(conn, version, run_id)
    (value,) = conn.execute(
        f"SELECT {column} FROM events WHERE {where} AND seq = ?", (run, seq)
    ).fetchone()
    return bytes(value)


def _set(
    conn: sqlite3.Connection, version: int, run_id: str, column: str, seq: int, value: bytes
) -> None:
    where, run = _run(conn, version, run_id)
    conn.execute(f"UPDATE events SET {column} = ? WHERE {where} AND seq = ?", (value, run, seq))


def flip_body(conn: sqlite3.Connection, version: int, run_id: str) -> None:
    body = bytearray(_column(conn, version, run_id, "body", 20))
    body[len(body) // 2] ^= 0x04
    _set(conn, version, run_id, "body", 20, bytes(body))


def delete_row(conn: sqlite3.Connection, version: int, run_id: str) -> None:
    where, run = _run(conn, version, run_id)
    conn.execute(f"DELETE FROM events WHERE {where} AND seq = 9", (run,))


def truncate(conn: sqlite3.Connection, version: int, run_id: str) -> None:
    where, run = _run(conn, version, run_id)
    conn.execute(f"DELETE FROM events WHERE {where} AND seq >= 30", (run,))


def swap_bodies(conn: sqlite3.Connection, version: int, run_id: str) -> None:
    a, b = (_column(conn, version, run_id, "body", seq) for seq in (12, 13))
    _set(conn, version, run_id, "body", 12, b)
    _set(conn, version, run_id, "body", 13, a)


def move_body(conn: sqlite3.Connection, version: int, run_id: str) -> None:
    for column in ("body", "hash"):
        _set(conn, version, run_id, column, 20, _column(conn, version, run_id, column, 30))


def flip_hash(conn: sqlite3.Connection, version: int, run_id: str) -> None:
    digest = _column(conn, version, run_id, "hash", 6)
    _set(conn, version, run_id, "hash", 6, bytes([digest[0] ^ 1]) + digest[1:])


def flip_last_hash(conn: sqlite3.Connection, version: int, run_id: str) -> None:
    where, run = _run(conn, version, run_id)
    (last,) = conn.execute(f"SELECT max(seq) FROM events WHERE {where}", (run,)).fetchone()
    digest = _column(conn, version, run_id, "hash", int(last))
    _set(conn, version, run_id, "hash", int(last), bytes([digest[0] ^ 1]) + digest[1:])


def edit_step_column(conn: sqlite3.Connection, version: int, run_id: str) -> None:
    where, run = _run(conn, version, run_id)
    conn.execute(f"UPDATE events SET step = step + 1 WHERE {where} AND seq = 9", (run,))


def rewind_head(conn: sqlite3.Connection, version: int, run_id: str) -> None:
    if version == 1:
        conn.execute("UPDATE run_heads SET seq = seq - 2 WHERE run_id = ?", (run_id,))
    else:
        conn.execute("UPDATE runs SET head_seq = head_seq - 2 WHERE run_id = ?", (run_id,))


def delete_head(conn: sqlite3.Connection, version: int, run_id: str) -> None:
    assert version == 1  # a version 2 run without its runs row is no run at all
    conn.execute("DELETE FROM run_heads WHERE run_id = ?", (run_id,))


def rewrite_head(conn: sqlite3.Connection, version: int, run_id: str) -> None:
    if version == 1:
        conn.execute("UPDATE run_heads SET hash = x'00' WHERE run_id = ?", (run_id,))
    else:
        conn.execute("UPDATE runs SET head_hash = x'00' WHERE run_id = ?", (run_id,))


def edit_blob(conn: sqlite3.Connection, version: int, run_id: str) -> None:
    assert version == 2
    where, run = _run(conn, version, run_id)
    for (body,) in conn.execute(f"SELECT body FROM events WHERE {where} ORDER BY seq", (run,)):
        refs = V2Reader().decoder.refs(bytes(body))
        if refs:
            conn.execute(
                "UPDATE blobs SET data = CAST(data || x'20' AS BLOB) WHERE id = ?", (refs[0],)
            )
            return


DAMAGES: list[tuple[int, Damage]] = [
    *(
        (version, damage)
        for version in (1, 2)
        for damage in (
            flip_body,
            delete_row,
            truncate,
            swap_bodies,
            move_body,
            flip_hash,
            flip_last_hash,
            edit_step_column,
            rewind_head,
            rewrite_head,
        )
    ),
    (1, delete_head),
    (2, edit_blob),
]


def damaged(recorded: dict[int, tuple[Path, str]], version: int, damage: Damage, to: Path) -> Path:
    path = copy_log(recorded[version][0], to)
    with closing(sqlite3.connect(path)) as conn:
        for table in ("events", "blobs"):
            for trigger in ("update", "delete"):
                conn.execute(f"DROP TRIGGER IF EXISTS {table}_append_only_{trigger}")
        damage(conn, version, recorded[version][1])
        conn.commit()
    return path


def ids(value: object) -> str:
    return getattr(value, "__name__", str(value))


# -- reading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("reader", READERS, ids=ids)
@pytest.mark.parametrize("version", [1, 2])
def test_an_intact_run_is_read_whole_and_passes(
    recorded: dict[int, tuple[Path, str]], version: int, reader: Reader
) -> None:
    path, run_id = recorded[version]
    with reader(path, run_id, last_seq=last_seq(path, run_id)) as run:
        events = list(run)
        assert run.finish() == check_run(path, run_id)
    assert events == load(path, run_id)


@pytest.mark.parametrize("reader", READERS, ids=ids)
def test_finishing_early_checks_what_was_not_read(
    recorded: dict[int, tuple[Path, str]], reader: Reader
) -> None:
    path, run_id = recorded[2]
    with reader(path, run_id) as run:
        first = [next(run) for _ in range(3)]
        assert run.finish() == check_run(path, run_id)
        assert list(run) == []  # nothing more is handed on once finished
    assert first == load(path, run_id)[:3]


# Every damage read in process; in the helper process, one of each way a problem shows (at its
# row, at the next row, at a far partner, at the head), which is where the two could differ.
CASES = [(version, damage, CheckedRun) for version, damage in DAMAGES] + [
    (version, damage, ReadAhead)
    for version, damage in DAMAGES
    if (version, damage)
    in {(2, flip_body), (2, flip_hash), (1, move_body), (2, truncate), (1, rewind_head)}
]


@pytest.mark.parametrize(("version", "damage", "reader"), CASES, ids=ids)
def test_a_broken_run_is_read_up_to_its_damage_then_refused_as_check_run_refuses_it(
    recorded: dict[int, tuple[Path, str]],
    tmp_path: Path,
    version: int,
    damage: Damage,
    reader: Reader,
) -> None:
    intact = load(*recorded[version])
    path = damaged(recorded, version, damage, tmp_path / "damaged.db")
    run_id = recorded[version][1]
    with pytest.raises(BrokenLogError) as expected:
        check_run(path, run_id)
    bad = expected.value.seq
    assert bad is not None
    end = last_seq(path, run_id)

    got: list[AnyEvent] = []
    with reader(path, run_id, last_seq=end) as run:
        with pytest.raises(BrokenLogError) as refused:
            got.extend(run)
        with pytest.raises(BrokenLogError) as again:
            run.finish()
    for error in (refused.value, again.value):
        assert (error.seq, error.problem, str(error)) == (
            bad,
            expected.value.problem,
            str(expected.value),
        )
    # What is handed on: every event before the first bad seq that its head can still seal
    # (up to the head's seq, whose row must have the head's hash), and nothing else.
    head, hashes = stored(path, version, run_id)
    assert got == [
        e
        for e in intact
        if e.seq < bad
        and e.seq <= end
        and head is not None
        and (e.seq < head[0] or (e.seq == head[0] and hashes[e.seq] == head[1]))
    ]


@pytest.mark.parametrize(("version", "damage"), [(2, None), *[d for d in DAMAGES if d[0] == 2]])
def test_the_integrity_check_reads_rows_as_the_store_reads_them(
    recorded: dict[int, tuple[Path, str]], tmp_path: Path, version: int, damage: Damage | None
) -> None:
    path, run_id = recorded[version]
    if damage is not None:
        path = damaged(recorded, version, damage, tmp_path / "damaged.db")
    with closing(sqlite3.connect(path)) as conn:
        (key,) = conn.execute("SELECT key FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        reader = V2Reader()
        reader.add_dictionaries(conn.execute("SELECT id, data FROM dictionaries"))
        theirs = plain_v2_rows(conn, reader, key, run_id)
        reader = V2Reader()
        reader.add_dictionaries(conn.execute("SELECT id, data FROM dictionaries"))
        ours = list(v2_stored_rows(conn, reader, key, run_id))
    assert len(ours) == len(theirs) > 0

    def comparable(row: tuple[object, ...]) -> tuple[object, ...]:
        decoded = row[-1]
        if isinstance(decoded, Exception):
            return (*row[:-1], type(decoded), str(decoded))
        return row

    assert [comparable(r) for r in ours] == [comparable(r) for r in theirs]


def write(path: Path, events: list[AnyEvent]) -> None:
    async def go() -> None:
        async with EventLog(path) as log:
            for event in events:
                await log.put(event)

    anyio.run(go)


def test_the_helper_process_hands_over_values_msgpack_would_change(tmp_path: Path) -> None:
    # A bool where the schema says int and ints past 64 bits go through the log's own codec;
    # the helper process must hand them over as the log holds them, in the first batch and in
    # a later one.
    events = run_events("odd", 40)
    started = next(e for e in events if isinstance(e, StepStarted) and e.seq > 10)
    requested = next(e for e in events if isinstance(e, SampleRequested) and e.seq > 200)
    events[started.seq] = msgspec.structs.replace(started, state={"n": 2**70, "z": -0.0})
    events[requested.seq] = msgspec.structs.replace(requested, max_tokens=True)
    path = tmp_path / "odd.db"
    write(path, events)
    with CheckedRun(path, "odd") as run:
        expected = list(run)
    with ReadAhead(path, "odd") as run:
        got = list(run)
    assert got == expected == load(path, "odd")
    odd_request = got[requested.seq]
    assert isinstance(odd_request, SampleRequested)
    assert odd_request.max_tokens is True
    odd_start = got[started.seq]
    assert isinstance(odd_start, StepStarted)
    assert odd_start.state == {"n": 2**70, "z": -0.0}


def test_a_helper_process_that_dies_hands_the_reading_back(tmp_path: Path) -> None:
    path = tmp_path / "long.db"
    write(path, run_events("long", 1500))
    expected = load(path, "long")
    with ReadAhead(path, "long") as run:
        got = [next(run)]
        assert run.pid is not None
        os.kill(run.pid, signal.SIGKILL)  # long before it can have read 20,000 events
        got += list(run)
        assert run.in_process
        result = run.finish()
    assert got == expected
    assert result == check_run(path, "long")


# -- re-execution and resume -------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("read_ahead", [False, True])
@pytest.mark.parametrize(("version", "damage"), [(1, move_body), (2, flip_body), (2, truncate)])
async def test_verify_and_resume_refuse_a_broken_run_whatever_they_find_first(
    recorded: dict[int, tuple[Path, str]],
    tmp_path: Path,
    version: int,
    damage: Damage,
    read_ahead: bool,
) -> None:
    path = damaged(recorded, version, damage, tmp_path / "damaged.db")
    run_id = recorded[version][1]
    with pytest.raises(BrokenLogError) as expected:
        check_run(path, run_id)
    before = len(await load_events(path, run_id))
    # As recorded; under another policy, which diverges long before the damage; and resumed.
    calls = [
        verify_run(path, run_id, read_ahead=read_ahead),
        verify_run(path, run_id, policy=Policy(k=7), read_ahead=read_ahead),
        resume_run(path, run_id, read_ahead=read_ahead),
    ]
    for call in calls:
        with pytest.raises(BrokenLogError) as refused:
            await call
        assert str(refused.value) == str(expected.value)
    assert len(await load_events(path, run_id)) == before  # nothing appended


@pytest.mark.anyio
async def test_resume_refuses_a_crashed_run_broken_where_it_was_cut(
    recorded: dict[int, tuple[Path, str]], tmp_path: Path
) -> None:
    path, run_id = recorded[2]
    events = await load_events(path, run_id)
    crashed = tmp_path / "crashed.db"
    async with EventLog(crashed) as log:
        for event in events[: len(events) // 2]:
            log.append(event)
    with closing(sqlite3.connect(crashed)) as conn:
        conn.execute("DROP TRIGGER events_append_only_update")
        flip_last_hash(conn, 2, run_id)
        conn.commit()
    for read_ahead in (False, True):
        with pytest.raises(BrokenLogError, match="was altered"):
            await resume_run(crashed, read_ahead=read_ahead)
    assert len(await load_events(crashed)) == len(events) // 2


@pytest.mark.anyio
@pytest.mark.parametrize("version", [1, 2])
async def test_the_helper_process_verifies_and_resumes_as_this_process_does(
    recorded: dict[int, tuple[Path, str]], tmp_path: Path, version: int
) -> None:
    path, run_id = recorded[version]
    here = await verify_run(path, run_id, read_ahead=False)
    there = await verify_run(path, run_id, read_ahead=True)
    assert here.ok
    assert there == here
    diverged = await verify_run(path, run_id, policy=Policy(k=5), read_ahead=True)
    assert diverged.divergence is not None
    assert str(diverged.divergence) == str(
        (await verify_run(path, run_id, policy=Policy(k=5), read_ahead=False)).divergence
    )

    events = await load_events(path, run_id)
    cut = len(events) // 3
    crashed = tmp_path / "crashed.db"
    async with EventLog(crashed, schema_version=version) as log:
        for event in events[:cut]:
            log.append(event)
    result = await resume_run(crashed, read_ahead=True)
    assert result.ok
    resumed = await load_events(crashed)
    assert resumed[:cut] == events[:cut]
    assert isinstance(resumed[cut], RunResumed)
    assert winners(resumed) == winners(events)
    assert (await verify_run(crashed, read_ahead=True)).ok
    # A finished run is folded as it is read, to the same report.
    finished = await resume_run(path, run_id, read_ahead=True)
    assert finished.ok
    assert finished == await resume_run(path, run_id, read_ahead=False)


def winners(events: list[AnyEvent]) -> list[str]:
    return [e.winner for e in events if isinstance(e, StepDecided)]


def statements_on_this_thread(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SQL that every SQLite connection opened from now on runs on the calling thread.

    Called from a synchronous test that then runs its event loop with ``anyio.run``: this
    thread is the loop's, and what blocks it is what runs here (aiosqlite and worker threads
    run their statements on threads of their own).
    """
    here = threading.get_ident()
    seen: list[str] = []
    connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn: sqlite3.Connection = connect(*args, **kwargs)
        conn.set_trace_callback(
            lambda sql: seen.append(sql) if threading.get_ident() == here else None
        )
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced)
    return seen


@pytest.mark.parametrize("read_ahead", [False, True])
def test_resuming_a_finished_run_reads_and_checks_it_off_the_event_loop(
    recorded: dict[int, tuple[Path, str]], monkeypatch: pytest.MonkeyPatch, read_ahead: bool
) -> None:
    path, run_id = recorded[2]
    on_the_loop = statements_on_this_thread(monkeypatch)
    result = anyio.run(functools.partial(resume_run, path, run_id, read_ahead=read_ahead))
    assert result.ok
    assert on_the_loop == []
    # What is watched is what runs: the same run read on this thread runs its statements here.
    with CheckedRun(path, run_id) as run:
        assert sum(1 for _ in run) == len(load(path, run_id))
    assert any("FROM events" in sql for sql in on_the_loop)


def test_refusing_a_calibration_checks_it_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from maker import SimulatedModel, calibrate

    path = tmp_path / "calibration.db"
    anyio.run(
        functools.partial(calibrate, Hanoi(4), [SimulatedModel()], samples=5, seed=1, log=path)
    )
    on_the_loop = statements_on_this_thread(monkeypatch)
    with pytest.raises(MakerError, match="is a calibration"):
        anyio.run(resume_run, path)
    assert on_the_loop == []


def test_the_re_vote_checks_its_run_off_the_event_loop(
    recorded: dict[int, tuple[Path, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, run_id = recorded[2]
    on_the_loop = statements_on_this_thread(monkeypatch)
    assert revote_command_impl(path, run_id, 1, None, None, True) == 0
    assert on_the_loop == []


def test_re_executing_a_run_reads_it_off_the_event_loop(
    recorded: dict[int, tuple[Path, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """replay --verify (and resume, which reads its prefix the same way): the checked read runs
    on worker threads a batch at a time; the loop's thread runs no SQL."""
    path, run_id = recorded[2]
    on_the_loop = statements_on_this_thread(monkeypatch)
    result = anyio.run(functools.partial(verify_run, path, run_id, read_ahead=False))
    assert result.ok
    assert result.checked == len(load(path, run_id))
    assert on_the_loop == []
