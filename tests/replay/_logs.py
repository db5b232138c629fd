"""Real logs for the replay tests: recorded by the engine, then copied and tampered with."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import anyio

from events import SCHEMA_VERSION, AnyEvent, EventLog
from maker import Engine, Policy, RunResult, SimConfig, SimulatedModel, Task

NOISY = SimConfig(p=0.85, malformed_rate=0.05, overlong_rate=0.05, hard_fraction=0.02)
"""A model noisy enough that a short run has red flags, disagreements and multi-sample steps."""


def record(
    path: Path,
    make_task: Callable[[], Task[Any, Any]],
    seeds: Sequence[int],
    *,
    policy: Policy | None = None,
    config: SimConfig = NOISY,
    schema_version: int = SCHEMA_VERSION,
) -> list[RunResult]:
    """Run the task once per seed into the log at ``path`` (a new file of ``schema_version``)."""

    async def go() -> list[RunResult]:
        log = EventLog(path, schema_version=schema_version)
        async with log, Engine(log=log, client=SimulatedModel(config)) as engine:
            return [
                await engine.run(make_task(), policy=policy or Policy(k=2), seed=seed)
                for seed in seeds
            ]

    return anyio.run(go)


def load(path: Path, run_id: str) -> list[AnyEvent]:
    """One run's events, read through the log's own reader."""

    async def go() -> list[AnyEvent]:
        async with EventLog(path, mode="r") as log:
            return [event async for event in log.read(run_id)]

    return anyio.run(go)


def copy_log(source: Path, target: Path) -> Path:
    """A copy of a closed log, with its write-ahead file if one is left."""
    shutil.copyfile(source, target)
    wal = Path(f"{source}-wal")
    if wal.exists():
        shutil.copyfile(wal, Path(f"{target}-wal"))
    return target


@contextmanager
def tampering(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection to the log with the append-only triggers dropped; commits on exit."""
    with closing(sqlite3.connect(path)) as conn:
        for trigger in ("update", "delete", "replace"):
            conn.execute(f"DROP TRIGGER events_append_only_{trigger}")
        yield conn
        conn.commit()


def rows(path: Path, run_id: str) -> list[tuple[int, str, bytes, bytes]]:
    """A run's stored (seq, type, body, hash), in seq order."""
    with closing(sqlite3.connect(path)) as conn:
        found = conn.execute(
            "SELECT seq, type, body, hash FROM events WHERE run_id = ? ORDER BY seq", (run_id,)
        ).fetchall()
    return [(int(s), str(t), bytes(b), bytes(h)) for s, t, b, h in found]
