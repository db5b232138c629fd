"""The log with its writer in a process of its own (``writer="process"``).

What only the process writer has: the same rows as the thread writer byte for byte, a writer
process that dies, its own session, and its counters. (The tests of test_log.py and
test_log_v2.py run with the process writer too: see their marks.)
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from events import (
    EventLog,
    EventLogError,
    LogClosedError,
    LogWriteError,
    NotALogError,
    RunStarted,
    SchemaVersionError,
    StateChanged,
    StepStarted,
)
from events._types import AnyEvent
from maker import Engine, Policy, SimulatedModel
from maker.tasks import Hanoi
from replay import load_events

from ._factory import run_events
from ._kinds import log_kinds
from .test_log import HANG_GUARD, read_all, write_log

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("log_kind"), log_kinds((2, "process"))]


def tables(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in key order: the whole content of a log."""
    with closing(sqlite3.connect(path)) as conn:
        names = [
            str(name)
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        return {
            name: conn.execute(f"SELECT * FROM {name} ORDER BY 1, 2").fetchall() for name in names
        }


def awkward_events(run_id: str) -> list[AnyEvent]:
    """Values a serialisation could change: ints beyond 64 bits (msgpack cannot hold them),
    tuples, int keys, bytes, unicode, -0.0, and integral floats."""
    values: list[Any] = [
        {"value": 2**70, "index": -(2**65)},
        (1, (2, 3), [4.0, -0.0]),
        {1: "one", 2: [None, True]},
        b"\x00\xff raw",
        "naïve ☃ text " * 3,
        [[3, 2, 1], [], []],
    ]
    out: list[AnyEvent] = [
        RunStarted(
            run_id=run_id, seq=0, ts=1.0, task="t", task_params={"big": 10**30}, policy={},
            models=["m"], model_params={}, seed=2**64 + 1, version="x", initial_state=values[0],
        )
    ]  # fmt: skip
    for step, value in enumerate(values):
        out.append(StepStarted(run_id=run_id, seq=len(out), ts=2.0 + step, step=step, state=value))
        out.append(StateChanged(run_id=run_id, seq=len(out), ts=2.5, step=step, state=value))
    return out


@pytest.mark.parametrize("version", [1, 2])
async def test_the_same_rows_as_the_thread_writer(tmp_path: Path, version: int) -> None:
    # A real run's events (enough texts to train the v2 dictionary), then awkward values.
    source = tmp_path / "source.db"
    async with (
        EventLog(source, writer="thread") as log,
        Engine(log=log, client=SimulatedModel(preset="paper")) as engine,
    ):
        result = await engine.run(Hanoi(9), policy=Policy(k=3), seed=3)
    events = [*await load_events(source, result.run_id), *awkward_events("awkward")]
    for writer in ("thread", "process"):
        async with EventLog(
            tmp_path / f"{writer}.db", writer=writer, schema_version=version, batch_size=500
        ) as log:
            for i, event in enumerate(events):
                log.append(event)
                if i % 997 == 0:
                    await anyio.lowlevel.checkpoint()
    thread, process = tables(tmp_path / "thread.db"), tables(tmp_path / "process.db")
    assert thread == process
    if version == 2:
        assert thread["dictionaries"]  # the comparison covered a trained dictionary
    read = {}
    for writer in ("thread", "process"):
        async with EventLog(tmp_path / f"{writer}.db", mode="r") as log:
            read[writer] = await read_all(log, "awkward")
    assert read["process"] == read["thread"]
    assert len(read["process"]) == len(awkward_events("x"))


async def test_pending_bytes_are_the_serialised_size_and_return_to_zero(tmp_path: Path) -> None:
    evs = run_events("r", 20)
    async with EventLog(tmp_path / "log.db", commit_interval=600) as log:
        log.append(evs[0])
        first = log.statistics().pending_bytes
        assert first == len(msgspec.msgpack.encode(evs[0]))
        await log.flush()  # the first round commits at once; the next is due in 600 s
        for ev in evs[1:]:
            log.append(ev)
        stats = log.statistics()
        assert (stats.written, stats.pending) == (1, len(evs) - 1)
        assert stats.pending_bytes == sum(len(msgspec.msgpack.encode(ev)) for ev in evs[1:])
        assert stats.high_water_bytes == stats.pending_bytes
        # Not an ordering point, a chance: once the events are shipped, the flush must still
        # ask the writer process for a commit (or wait for the interval, and hit the guard).
        await anyio.sleep(0.1)
        with anyio.fail_after(HANG_GUARD):
            await log.flush()
        stats = log.statistics()
        assert (stats.written, stats.pending, stats.pending_bytes) == (len(evs), 0, 0)
        assert stats.batches == 2
        assert stats.high_water == len(evs) - 1


async def test_a_killed_writer_is_a_clear_error_not_a_hang(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    evs = run_events("r", 10)
    closed: list[BaseException] = []
    with pytest.raises(BaseExceptionGroup) as group:  # noqa: PT012
        with anyio.fail_after(HANG_GUARD):
            async with EventLog(path) as log:
                for ev in evs[:5]:
                    log.append(ev)
                await log.flush()
                pid = log.writer_pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                for ev in evs[5:8]:
                    log.append(ev)
                try:
                    await log.flush()
                except LogClosedError as exc:
                    closed.append(exc)
    (error,) = group.value.exceptions
    assert isinstance(error, LogWriteError)
    assert error.run_ids == ("r",)
    assert str(error) == (
        f"writing {path} failed: the log writer process was killed by SIGKILL"
        " (3 events appended and not committed); the events committed before are kept: once "
        f"that is fixed, continue with 'maker resume {path} --run r'"
    )
    assert closed
    assert "killed by SIGKILL" in str(closed[0])
    with pytest.raises(LogClosedError):
        log.append(evs[8])
    # What was committed before the kill is there, whole.
    async with EventLog(path, mode="r") as fresh:
        assert await read_all(fresh, "r") == evs[:5]


async def test_an_attach_is_refused_once_the_writer_died_not_awaited_forever(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log.db"
    await write_log(path, run_events("old", 1, finished=False))
    with pytest.raises(BaseExceptionGroup) as group:  # noqa: PT012
        with anyio.fail_after(HANG_GUARD):
            async with EventLog(path) as log:
                pid = log.writer_pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                # Sent before the death is noticed: answered by the death.
                with pytest.raises(LogClosedError, match="killed by SIGKILL"):
                    await log.attach("old")
                # Asked after: nobody is left to answer, so it is refused at once.
                with pytest.raises(LogClosedError, match="killed by SIGKILL"):
                    await log.attach("old")
    (error,) = group.value.exceptions
    assert str(error) == f"writing {path} failed: the log writer process was killed by SIGKILL"


async def test_a_writer_that_cannot_start_is_an_error_at_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "log.db"
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    with pytest.raises(EventLogError, match="cannot start the log writer process for"):
        async with EventLog(path):
            pass


async def test_a_writer_that_dies_at_once_is_an_error_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    false = shutil.which("false")
    if false is None:
        pytest.skip("no false(1) to stand in for a writer that dies at once")
    path = tmp_path / "log.db"
    monkeypatch.setattr(sys, "executable", false)
    evs = run_events("r", 1)
    with pytest.raises(BaseExceptionGroup) as group:  # noqa: PT012
        with anyio.fail_after(HANG_GUARD):
            async with EventLog(path) as log:
                for ev in evs:
                    log.append(ev)
                with pytest.raises(LogClosedError, match="exited with code 1"):
                    await log.flush()
    (error,) = group.value.exceptions
    assert str(error) == (
        f"writing {path} failed: the log writer process exited with code 1"
        f" ({len(evs)} events appended and not committed); the events committed before are "
        f"kept: once that is fixed, continue with 'maker resume {path} --run r'"
    )


async def test_the_writer_runs_in_its_own_session_and_ignores_sigint(tmp_path: Path) -> None:
    """A Ctrl-C at the terminal must reach the parent, which closes the log in order, and not
    the writer, which would lose what it had."""
    evs = run_events("r", 3)
    async with EventLog(tmp_path / "log.db") as log:
        log.append(evs[0])
        await log.flush()
        pid = log.writer_pid
        assert pid is not None
        assert os.getsid(pid) != os.getsid(0)
        os.kill(pid, signal.SIGINT)
        for ev in evs[1:]:
            log.append(ev)
        await log.flush()
        assert log.statistics().written == len(evs)
    assert log.writer_pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: it exited when the log closed


async def test_opening_fails_alike_with_both_writers(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    future = tmp_path / "future.db"
    await write_log(future, run_events("r", 1))
    with closing(sqlite3.connect(future)) as conn:
        conn.execute("PRAGMA user_version = 99")
    cases = [(other, NotALogError), (text, NotALogError), (future, SchemaVersionError)]
    cases.append((tmp_path, EventLogError))  # a directory
    for path, kind in cases:
        seen = []
        for writer in ("thread", "process"):
            with pytest.raises(kind) as info:
                async with EventLog(path, writer=writer):
                    pass
            seen.append((type(info.value), str(info.value)))
        assert seen[0] == seen[1]


def test_an_unknown_writer_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="writer must be 'thread' or 'process'"):
        EventLog(tmp_path / "x.db", writer="fork")  # type: ignore[arg-type]
