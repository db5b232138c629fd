"""Backpressure: a run waits for a log whose writer cannot keep up, and loses nothing.

The slow writer is real: another connection holds SQLite's write lock, so the log's writer
blocks in its transaction while the engine runs on the zero-latency simulated model. Every test
runs with both writers: a thread of this process, and a process of its own (which blocks on the
lock just the same: SQLite's locks are the file's, across processes).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import msgspec
import pytest

from events import Event, EventLog, WriterKind
from maker import Engine, Policy, SimulatedModel
from maker.tasks import Hanoi
from replay import load_events, verify_run
from tests.events._factory import run_events

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("writer", ["thread", "process"])]

HANG_GUARD = 60  # seconds; a guard against a hang, never a timing assertion


async def _blocked_run(
    tmp_path: Path,
    writer: WriterKind,
    *,
    max_pending: int = 65536,
    max_pending_bytes: int = 64 << 20,
) -> tuple[list[Event], list[int], list[int], EventLog, Path]:
    """Run 7-disk Hanoi with the writer blocked until the run has waited for room once.

    Returns the events the run emitted (in order), the queue's length and bytes after each,
    the log (closed) and its path.
    """
    path = tmp_path / "log.db"
    seen: list[Event] = []
    lengths: list[int] = []
    sizes: list[int] = []
    log = EventLog(
        path, max_pending=max_pending, max_pending_bytes=max_pending_bytes, writer=writer
    )
    async with log:

        def sink(event: Event) -> None:
            seen.append(event)
            stats = log.statistics()
            lengths.append(stats.pending)
            sizes.append(stats.pending_bytes)

        blocker = sqlite3.connect(path, timeout=HANG_GUARD, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # the writer's next transaction must wait
            with anyio.fail_after(HANG_GUARD):
                async with Engine(log=log, client=SimulatedModel(preset="paper")) as engine:
                    handle = engine.start(Hanoi(7), policy=Policy(k=3), seed=5, sinks=[sink])
                    # An ordering point: poll the counters until the run waits. No event marks
                    # it, and adding one to the log for a test would be the wrong trade.
                    while log.statistics().waits == 0:  # noqa: ASYNC110
                        await anyio.sleep(0.005)
                    stalled = log.statistics()
                    assert stalled.written == 0  # nothing could be committed meanwhile
                    assert not handle.done
                    # The run holds still while the queue is full: it appends nothing more.
                    await anyio.sleep(0.05)
                    assert log.statistics().appended == stalled.appended
                    blocker.execute("COMMIT")
                    result = await handle.result()
        finally:
            blocker.close()
    assert result.ok, result.reason
    return seen, lengths, sizes, log, path


async def test_a_run_waits_for_a_full_queue_and_never_passes_its_bound(
    tmp_path: Path, writer: WriterKind
) -> None:
    seen, lengths, _, log, path = await _blocked_run(tmp_path, writer, max_pending=300)
    stats = log.statistics()
    assert stats.waits >= 1
    assert stats.waited_s > 0
    assert max(lengths) == 300  # it filled up to the bound, and never past it
    assert stats.high_water == 300
    assert stats.pending == 0
    assert stats.written == stats.appended == len(seen)
    # Nothing lost or reordered: the log holds exactly what the run emitted, in order.
    logged = await load_events(path)
    assert [e.seq for e in logged] == list(range(len(logged)))
    assert msgspec.to_builtins(logged) == msgspec.to_builtins(seen)
    assert (await verify_run(path)).ok


async def test_the_queue_is_bounded_by_bytes_too(tmp_path: Path, writer: WriterKind) -> None:
    bound = 40_000
    seen, lengths, sizes, log, path = await _blocked_run(tmp_path, writer, max_pending_bytes=bound)
    assert log.statistics().waits >= 1
    assert max(sizes) >= bound * 0.9  # it filled up
    # The byte bound admits the event that crosses it, then waits: never more than one event
    # past it (no event here is near 1 KB).
    assert max(sizes) < bound + 1024
    assert log.statistics().high_water_bytes == max(sizes)
    logged = await load_events(path)
    assert msgspec.to_builtins(logged) == msgspec.to_builtins(seen)
    assert max(lengths) == log.statistics().high_water


async def test_put_waits_for_room_and_append_does_not(tmp_path: Path, writer: WriterKind) -> None:
    evs = run_events("r", 2)[:6]
    path = tmp_path / "log.db"
    async with EventLog(path, max_pending=2, writer=writer) as log:
        blocker = sqlite3.connect(path, timeout=HANG_GUARD, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            await log.put(evs[0])
            await log.put(evs[1])
            assert log.full
            with anyio.move_on_after(0.2) as scope:
                await log.put(evs[2])  # cannot get room while the writer is blocked
            assert scope.cancelled_caught
            assert log.statistics().appended == 2
            log.append(evs[2])  # append never waits: the bound is for those who put
            assert log.statistics().pending == 3
            blocker.execute("COMMIT")
            with anyio.fail_after(HANG_GUARD):
                for ev in evs[3:]:
                    await log.put(ev)
                await log.flush()
        finally:
            blocker.close()
        stats = log.statistics()
        assert stats.written == 6
        assert stats.waits >= 2
        assert stats.high_water == 3
    assert [e.seq for e in await load_events(path)] == list(range(6))
