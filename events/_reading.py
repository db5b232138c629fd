"""Open a log, pick one of its runs, read its events: what every reader of a recorded run does.

>>> import anyio, os, tempfile
>>> from events import EventLog, RunFinished, RunStarted, open_run
>>> path = os.path.join(tempfile.mkdtemp(), "log.db")
>>> async def write() -> None:
...     async with EventLog(path) as log:
...         log.append(RunStarted(run_id="demo", seq=0, ts=0.0, task="t", task_params={},
...                               policy={}, models=[], model_params={}, seed=0, version=""))
...         log.append(RunFinished(run_id="demo", seq=1, ts=1.0, status="succeeded",
...                                steps=0, samples=0))
>>> async def read() -> list[str]:
...     async with open_run(path, check=True) as run:  # the only run; refused if broken
...         return [f"{run.info.run_id}:{event.seq}" async for event in run.events]
>>> anyio.run(write)
>>> anyio.run(read)
['demo:0', 'demo:1']
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass

import anyio

from ._integrity import check_run
from ._log import RunInfo
from ._store import Store, open_log
from ._types import AnyEvent

__all__ = ["OpenRun", "open_run"]


@dataclass(frozen=True)
class OpenRun:
    """One run of a log open for reading (see :func:`open_run`)."""

    log: Store
    """The log, open read-only (an :class:`EventLog`, or a :class:`PostgresLog`)."""
    info: RunInfo
    """The run: its id, how it started and finished, its last seq."""
    events: AsyncGenerator[AnyEvent, None]
    """Its committed events in seq order, read as they are asked for (once), and closed when
    the ``async with`` block ends."""


@asynccontextmanager
async def open_run(
    path: str | os.PathLike[str], run_id: str | None = None, *, check: bool = False
) -> AsyncIterator[OpenRun]:
    """Open the log at ``path`` (a file, or a ``postgresql://`` URL) read-only, pick the run
    ``run_id`` names (the only run when it is None; a unique prefix will do), and hand over its
    events to read as they come.

    ``check`` refuses a run that fails its integrity check, before a single event is read:
    :func:`check_run` runs first, on a worker thread, and raises :class:`BrokenLogError`.
    Raises :class:`UnknownRunError` (or its subclasses) when no run, or no single run, is
    named, and what opening an :class:`EventLog` raises.
    """
    async with open_log(path, mode="r") as log:
        info = await log.run(run_id)
        if check:
            await anyio.to_thread.run_sync(check_run, log.path, info.run_id)
        # Closed here, not by the garbage collector: its cursor goes before the connection
        # does, also when the reader stops early.
        async with aclosing(log.read(info.run_id)) as events:
            yield OpenRun(log, info, events)
