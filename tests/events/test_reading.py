"""open_run: the log opened read-only, one run picked, its events read as they come, and a
broken run refused before any of them is read when asked to."""

from __future__ import annotations

import sqlite3
import types
from contextlib import closing
from pathlib import Path

import pytest

from events import BrokenLogError, EventLog, UnknownRunError, open_run

from ._factory import interleave, run_events

pytestmark = pytest.mark.anyio


async def write(path: Path, *run_ids: str) -> None:
    async with EventLog(path) as log:
        for event in interleave(*(run_events(run_id, 3) for run_id in run_ids)):
            log.append(event)


async def test_the_named_run_or_the_only_one_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    await write(path, "only")
    async with open_run(path) as run:
        assert run.info.run_id == "only"
        assert run.log.mode == "r"
        got = [event async for event in run.events]
    assert got == run_events("only", 3)
    await write(path, "other")
    async with open_run(path, "oth") as run:  # a unique prefix will do
        assert [event async for event in run.events] == run_events("other", 3)
    with pytest.raises(UnknownRunError, match="the log holds 2 runs"):
        async with open_run(path):
            pass


async def test_stopping_early_closes_the_read(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    await write(path, "r")
    async with open_run(path) as run:
        async for event in run.events:
            assert event.seq == 0
            break
    # The reader's connection is gone with the block: its generator is finished.
    assert isinstance(run.events, types.AsyncGeneratorType)
    assert run.events.ag_frame is None
    with pytest.raises(StopAsyncIteration):
        await anext(run.events)


async def test_a_broken_run_is_refused_before_any_event_when_checked(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    await write(path, "r")
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("DROP TRIGGER events_append_only_delete")
        (key,) = conn.execute("SELECT key FROM runs WHERE run_id = 'r'").fetchone()
        conn.execute("DELETE FROM events WHERE run = ? AND seq = 4", (key,))
        conn.commit()
    entered = False
    with pytest.raises(BrokenLogError, match="at seq 4: seq 4 missing"):
        async with open_run(path, check=True):
            entered = True
    assert not entered
    async with open_run(path) as run:  # unchecked, it reads what is there
        assert [event.seq async for event in run.events][3:5] == [3, 5]
