"""The whole engine against plain SQLite, in one run.

Runs Towers of Hanoi (15 disks by default: 32,767 steps) on the simulated model with the log on,
then inserts the same rows into a fresh file with the same SQLite setup (schema, WAL, synchronous
NORMAL) in plain batched ``executemany`` transactions, and prints both rates and their ratio.

    python -m benchmarks.engine_vs_sqlite [--disks 15] [--k 3] [--seed 0] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time
from typing import Any

import anyio

from events import EventLog
from events._log import _SCHEMA
from maker import Engine, Policy, RunResult, SimulatedModel
from maker.tasks import Hanoi

BATCH = 4096


async def _engine_run(path: str, disks: int, k: int, seed: int) -> tuple[RunResult, float, int]:
    async with Engine(log=path, client=SimulatedModel(preset="paper")) as engine:
        began = time.perf_counter()
        result = await engine.run(Hanoi(disks), policy=Policy(k=k), seed=seed)
        await engine.log.flush()
        wall = time.perf_counter() - began
        appended = engine.log.statistics().appended
    return result, wall, appended


def _rows(path: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT run_id, seq, type, step, ts, body, hash FROM events ORDER BY run_id, seq"
        ).fetchall()


def _raw_inserts(path: str, rows: list[tuple[Any, ...]]) -> float:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(_SCHEMA)
    conn.commit()
    began = time.perf_counter()
    for i in range(0, len(rows), BATCH):
        conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)", rows[i : i + BATCH])
        conn.commit()
    wall = time.perf_counter() - began
    conn.close()
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disks", type=int, default=15)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        log_path = os.path.join(tmp, "engine.db")
        result, wall, events = anyio.run(_engine_run, log_path, args.disks, args.k, args.seed)
        rows = _rows(log_path)
        raw_wall = _raw_inserts(os.path.join(tmp, "raw.db"), rows)

        async def count() -> int:
            async with EventLog(log_path, mode="r") as log:
                return sum([1 async for _ in log.read(result.run_id)])

        assert anyio.run(count) == events == len(rows)

    figures = {
        "disks": args.disks,
        "k": args.k,
        "status": result.status,
        "steps": result.steps,
        "samples": result.samples,
        "events": events,
        "engine_wall_s": round(wall, 3),
        "steps_per_s": round(result.steps / wall, 1),
        "samples_per_s": round(result.samples / wall, 1),
        "events_per_s": round(events / wall, 1),
        "raw_sqlite_wall_s": round(raw_wall, 3),
        "raw_sqlite_rows_per_s": round(len(rows) / raw_wall, 1),
        "engine_vs_raw_ratio": round((events / wall) / (len(rows) / raw_wall), 4),
    }
    if args.json:
        print(json.dumps(figures))
        return
    print(f"{args.disks}-disk Hanoi, simulated model (paper preset), k={args.k}: {result.status}")
    print(f"  steps {result.steps}, samples {result.samples}, events {events}")
    print(
        f"  engine:     {wall:8.2f} s   {figures['steps_per_s']:>10} steps/s"
        f"   {figures['samples_per_s']:>10} samples/s   {figures['events_per_s']:>10} events/s"
    )
    print(
        f"  raw SQLite: {raw_wall:8.2f} s   {figures['raw_sqlite_rows_per_s']:>10} rows/s"
        f" (same rows, same setup, batches of {BATCH})"
    )
    print(f"  engine events/s ÷ raw rows/s = {figures['engine_vs_raw_ratio']}")


if __name__ == "__main__":
    main()
