"""The whole engine against plain SQLite, in one run.

Runs Towers of Hanoi (15 disks by default: 32,767 steps) on the simulated model with the log on,
then inserts the same rows (every table) into a fresh file with the same SQLite setup (schema,
WAL, synchronous NORMAL) in plain batched ``executemany`` transactions, and prints both rates and
their ratio.

    python -m benchmarks.engine_vs_sqlite [--disks 15] [--k 3] [--seed 0]
                                          [--writer process|thread] [--json]

``--writer`` is where the log's writer runs (``maker run --log-writer``): a process of its own
(the default, as for ``maker run``) or a thread of the engine's process.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import anyio

from events import EventLog, WriterKind
from maker import Engine, Policy, RunResult, SimulatedModel
from maker.tasks import Hanoi

from ._sqlite import BATCH, raw_inserts


async def _engine_run(
    path: str, disks: int, k: int, seed: int, writer: WriterKind
) -> tuple[RunResult, float, int]:
    client = SimulatedModel(preset="paper")
    async with Engine(log=path, client=client, log_writer=writer) as engine:
        began = time.perf_counter()
        result = await engine.run(Hanoi(disks), policy=Policy(k=k), seed=seed)
        await engine.log.flush()
        wall = time.perf_counter() - began
        appended = engine.log.statistics().appended
    return result, wall, appended


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disks", type=int, default=15)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--writer", choices=["process", "thread"], default="process")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        log_path = os.path.join(tmp, "engine.db")
        result, wall, events = anyio.run(
            _engine_run, log_path, args.disks, args.k, args.seed, args.writer
        )
        event_rows, all_rows, raw_wall = raw_inserts(log_path, os.path.join(tmp, "raw.db"))

        async def count() -> int:
            async with EventLog(log_path, mode="r") as log:
                return sum([1 async for _ in log.read(result.run_id)])

        assert anyio.run(count) == events == event_rows

    figures = {
        "disks": args.disks,
        "k": args.k,
        "writer": args.writer,
        "status": result.status,
        "steps": result.steps,
        "samples": result.samples,
        "events": events,
        "engine_wall_s": round(wall, 3),
        "steps_per_s": round(result.steps / wall, 1),
        "samples_per_s": round(result.samples / wall, 1),
        "events_per_s": round(events / wall, 1),
        "raw_sqlite_wall_s": round(raw_wall, 3),
        "rows": all_rows,
        "raw_sqlite_rows_per_s": round(all_rows / raw_wall, 1),
        # The engine wrote the same rows (events, blobs, dictionaries, heads) in ``wall``.
        "engine_vs_raw_ratio": round(raw_wall / wall, 4),
    }
    if args.json:
        print(json.dumps(figures))
        return
    print(
        f"{args.disks}-disk Hanoi, simulated model (paper preset), k={args.k},"
        f" {args.writer} writer: {result.status}"
    )
    print(f"  steps {result.steps}, samples {result.samples}, events {events}")
    print(
        f"  engine:     {wall:8.2f} s   {figures['steps_per_s']:>10} steps/s"
        f"   {figures['samples_per_s']:>10} samples/s   {figures['events_per_s']:>10} events/s"
    )
    print(
        f"  raw SQLite: {raw_wall:8.2f} s   {figures['raw_sqlite_rows_per_s']:>10} rows/s"
        f" (same rows, same setup, batches of {BATCH})"
    )
    print(
        f"  engine rows/s ÷ raw rows/s = {figures['engine_vs_raw_ratio']}"
        f" ({all_rows} rows of every table)"
    )


if __name__ == "__main__":
    main()
