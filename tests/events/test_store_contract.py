"""The store contract, held by both stores: a SQLite file and a PostgreSQL database (a real
server, see tests/_postgres.py).

Every test takes ``target``, a log's path or URL, once per store, and opens it with
:func:`events.open_log` as the engine and the readers do. Tampering goes behind the store's
back with plain SQL, dropping the append-only triggers first as a careless operator would.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import aclosing, closing
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

from events import (
    AnyEvent,
    EventLog,
    LogWriteError,
    RunBusyError,
    RunFinished,
    StepEvent,
    Store,
    encode,
    is_database_url,
    open_log,
    verify_log,
)
from tests._postgres import run_async

from ._factory import run_events

pytestmark = pytest.mark.anyio

GOLDEN = Path(__file__).parent.parent / "replay" / "golden"
GOLDEN_LOGS = ["v3-arithmetic", "v3-hanoi", "v3-hedged", "v3-pipelined", "v3-resumed"]
HANG_GUARD = 30  # a guard for tests whose tasks wait on one another, never a timing assertion


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "log.db")
    url: str = request.getfixturevalue("postgres_url")
    return url


# -- behind the store's back ----------------------------------------------------------------


def sql(target: str, *statements: str) -> list[Any]:
    """Run plain SQL on the log; the rows of the last statement."""
    if not is_database_url(target):
        with closing(sqlite3.connect(target)) as conn:
            rows: list[Any] = []
            for statement in statements:
                rows = conn.execute(statement).fetchall()
            conn.commit()
            return rows

    async def go() -> list[Any]:
        import asyncpg

        conn = await asyncpg.connect(target)
        try:
            rows: list[Any] = []
            for statement in statements:
                rows = [tuple(r) for r in await conn.fetch(statement)]
            return rows
        finally:
            await conn.close()

    return run_async(go)


def drop_append_only(target: str) -> list[str]:
    if is_database_url(target):
        return [f"DROP TRIGGER {t}_append_only ON {t}" for t in ("events", "blobs")]
    return [
        f"DROP TRIGGER {t}_append_only_{op}"
        for t in ("events", "blobs")
        for op in ("update", "delete")
    ]


def of_run(run_id: str) -> str:
    return f"run = (SELECT key FROM runs WHERE run_id = '{run_id}')"


def stored_rows(target: str, run_id: str) -> list[tuple[Any, ...]]:
    """A run's rows as stored: (seq, type, step, ts, body, hash)."""
    rows = sql(
        target,
        f"SELECT seq, type, step, ts, body, hash FROM events WHERE {of_run(run_id)} ORDER BY seq",
    )
    return [(int(a), int(b), c, float(d), bytes(e), bytes(f)) for a, b, c, d, e, f in rows]


# -- helpers ----------------------------------------------------------------------------------


async def write(target: str, events: Sequence[AnyEvent], **options: Any) -> None:
    async with open_log(target, **options) as log:
        for event in events:
            await log.put(event)


async def read_all(log: Store, run_id: str, **kwargs: Any) -> list[AnyEvent]:
    async with aclosing(log.read(run_id, **kwargs)) as events:
        return [event async for event in events]


# -- the contract -----------------------------------------------------------------------------


async def test_append_and_read_back(target: str) -> None:
    events = run_events("r1", 12) + run_events("r2", 3)
    await write(target, events)
    async with open_log(target, mode="r") as log:
        assert log.schema_version == 3
        assert await read_all(log, "r1") == [e for e in events if e.run_id == "r1"]
        assert await read_all(log, "r2") == [e for e in events if e.run_id == "r2"]
        after = await read_all(log, "r1", after_seq=20)
        assert [e.seq for e in after] == list(range(21, len(after) + 21))
        ranged = await read_all(log, "r1", steps=(3, 5))
        wanted = [e for e in events if isinstance(e, StepEvent) and 3 <= e.step <= 5]
        assert ranged == [e for e in wanted if e.run_id == "r1"]


async def test_runs_and_heads(target: str) -> None:
    done = run_events("done", 4)
    open_run = run_events("open", 2, finished=False)
    await write(target, done + open_run)
    async with open_log(target, mode="r") as log:
        infos = {info.run_id: info for info in await log.runs()}
        assert set(infos) == {"done", "open"}
        assert infos["done"].last_seq == done[-1].seq
        assert isinstance(infos["done"].finished, RunFinished)
        assert infos["open"].finished is None
        assert infos["open"].last_seq == open_run[-1].seq
        assert (await log.run("do")).run_id == "done"  # a unique prefix will do
    heads = {
        r: (int(s), bytes(h))
        for r, s, h in sql(target, "SELECT run_id, head_seq, head_hash FROM runs")
    }
    assert heads["done"] == stored_rows(target, "done")[-1][0::5]


async def test_same_rows_in_both_stores(tmp_path: Path, postgres_url: str) -> None:
    """The same events make the same rows, bodies and hashes in either store."""
    events = run_events("same", 30)
    path = str(tmp_path / "log.db")
    await write(path, events)
    await write(postgres_url, events)
    assert stored_rows(postgres_url, "same") == stored_rows(path, "same")


async def test_tail_follows_a_run_being_written(target: str) -> None:
    events = run_events("live", 20)
    await write(target, events[:1])  # the run exists before the tail starts
    seen: list[AnyEvent] = []

    async def follow() -> None:
        async with open_log(target, mode="r") as log, aclosing(log.tail("live")) as tail:
            async for event in tail:
                seen.append(event)

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            async with open_log(target, commit_interval=0.001) as log:
                assert await log.attach("live") == 1
                for event in events[1:]:
                    await log.put(event)
                    if event.seq % 10 == 0:
                        await log.flush()
                        await anyio.sleep(0.01)
    assert seen == events


async def test_attach_continues_a_run(target: str) -> None:
    events = run_events("cont", 6)
    cut = 17
    await write(target, events[:cut])
    async with open_log(target) as log:
        assert await log.attach("cont") == cut
        for event in events[cut:]:
            log.append(event)
    async with open_log(target, mode="r") as log:
        assert await read_all(log, "cont") == events
    report = verify_log(target)
    assert report.ok, report
    assert [run.events for run in report.runs] == [len(events)]


async def test_a_second_writer_of_a_run_is_refused(target: str) -> None:
    events = run_events("busy", 4)
    async with open_log(target) as first:
        for event in events[:5]:
            first.append(event)
        await first.flush()
        async with open_log(target) as second:
            with pytest.raises(RunBusyError):
                await second.attach("busy")
    # Once the first writer is gone, the run is free.
    async with open_log(target) as third:
        assert await third.attach("busy") == 5


async def test_the_queue_bound_holds(target: str) -> None:
    events = run_events("bound", 25)
    async with open_log(target, max_pending=8, commit_interval=0.01) as log:
        for event in events:
            await log.put(event)
        await log.flush()
        stats = log.statistics()
    assert stats.high_water <= 8
    assert stats.waits > 0
    assert stats.written == stats.appended == len(events)


async def test_the_database_refuses_edits(target: str) -> None:
    await write(target, run_events("ro", 2))
    for statement in (
        f"UPDATE events SET ts = ts + 1 WHERE {of_run('ro')}",
        f"DELETE FROM events WHERE {of_run('ro')}",
        "DELETE FROM blobs",
    ):
        with pytest.raises(Exception, match="append-only"):
            sql(target, statement)
    assert verify_log(target).ok


async def test_integrity_catches_truncation(target: str) -> None:
    events = run_events("cut", 5)
    await write(target, events)
    last = events[-1].seq
    sql(
        target,
        *drop_append_only(target),
        f"DELETE FROM events WHERE {of_run('cut')} AND seq = {last}",
    )
    report = verify_log(target)
    (run,) = report.runs
    assert not run.ok
    assert run.first_bad_seq == last
    assert "truncated" in run.problem


async def test_integrity_catches_an_edited_row(target: str) -> None:
    await write(target, run_events("edit", 5))
    sql(
        target,
        *drop_append_only(target),
        f"UPDATE events SET ts = ts + 1 WHERE {of_run('edit')} AND seq = 9",
    )
    (run,) = verify_log(target).runs
    assert not run.ok
    assert run.first_bad_seq == 9


async def test_integrity_catches_a_deleted_row(target: str) -> None:
    await write(target, run_events("gap", 5))
    sql(target, *drop_append_only(target), f"DELETE FROM events WHERE {of_run('gap')} AND seq = 7")
    (run,) = verify_log(target).runs
    assert not run.ok
    assert run.first_bad_seq == 7
    assert "missing" in run.problem


@pytest.mark.parametrize("name", GOLDEN_LOGS)
async def test_golden_logs_import_and_export_the_same(target: str, name: str) -> None:
    """A golden log's runs, appended to the store, read back as the golden export's lines."""
    source = GOLDEN / f"{name}.db"
    async with EventLog(source, mode="r") as golden, open_log(target) as log:
        runs = await golden.runs()
        for info in runs:
            async with aclosing(golden.read(info.run_id)) as events:
                async for event in events:
                    await log.put(event)
    async with open_log(target, mode="r") as log:
        (info,) = runs
        exported = b"".join(encode(e) + b"\n" for e in await read_all(log, info.run_id))
    assert exported == (GOLDEN / f"{name}.export.jsonl").read_bytes()
    assert verify_log(target).ok


async def test_readers_see_committed_prefixes_while_writing(target: str) -> None:
    events = run_events("busy-read", 40)
    await write(target, events[:1])
    checks = 0

    async def read_along(stop: anyio.Event) -> None:
        nonlocal checks
        async with open_log(target, mode="r") as log:
            while not stop.is_set():
                got = await read_all(log, "busy-read")
                assert got == events[: len(got)]  # a gap-free prefix, never a torn batch
                report = await anyio.to_thread.run_sync(verify_log, target)
                assert report.ok, report
                checks += 1
                await anyio.lowlevel.checkpoint()

    with anyio.fail_after(HANG_GUARD):
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(read_along, stop)
            async with open_log(target, commit_interval=0.001) as log:
                await log.attach("busy-read")
                for event in events[1:]:
                    await log.put(event)
                    if event.seq % 25 == 0:
                        await log.flush()
                        await anyio.sleep(0.005)
            stop.set()
    assert checks >= 3


async def test_a_new_run_with_a_taken_id_fails_the_writer(target: str) -> None:
    await write(target, run_events("twice", 1))
    with pytest.raises((LogWriteError, BaseExceptionGroup)):
        await write(target, run_events("twice", 1))
    (run,) = verify_log(target).runs
    assert run.ok
