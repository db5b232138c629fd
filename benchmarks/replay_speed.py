"""Replay against the original run, on one log, all started from one process.

Runs Towers of Hanoi (15 disks by default) on the simulated model, then times, on its log:
the fold (load the events and rebuild the run's figures), `replay --verify` (re-execute the run
against its recorded outcomes and compare every event, the log read and checked by a helper
process as it goes), the same in one process, and the integrity check (`maker verify`), each
beside the time of the original run.

    python -m benchmarks.replay_speed [--disks 15] [--writer process|thread] [--json]

The original run writes its log as `maker run` does, from a writer process (``--writer thread``
keeps the writer on a thread); its CPU seconds are the engine process's own.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import TypeVar

import anyio

from events import AnyEvent
from maker import Engine, Policy, SimulatedModel
from maker.tasks import Hanoi
from replay import RunSummary, load_events, summarize, verify_log, verify_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disks", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--writer", choices=["process", "thread"], default="process")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "run.db")

        async def original() -> str:
            async with Engine(log=path, client=SimulatedModel(), log_writer=args.writer) as engine:
                result = await engine.run(Hanoi(args.disks), policy=Policy(k=3), seed=args.seed)
            return result.run_id

        run_id, run_s, run_cpu = _timed(lambda: anyio.run(original))
        (events, summary), fold_s, _ = _timed(lambda: _fold(path, run_id))
        verified, verify_s, verify_cpu = _timed(
            lambda: anyio.run(functools.partial(verify_run, path, run_id, read_ahead=True))
        )
        alone, alone_s, alone_cpu = _timed(
            lambda: anyio.run(functools.partial(verify_run, path, run_id, read_ahead=False))
        )
        report, integrity_s, _ = _timed(lambda: verify_log(path))

    assert verified.ok, verified.divergence
    assert alone == verified
    assert all(r.ok for r in report.runs)
    figures = {
        "disks": args.disks,
        "writer": args.writer,
        "steps": summary.steps,
        "events": len(events),
        "run_s": round(run_s, 2),
        "fold_s": round(fold_s, 2),
        "replay_verify_s": round(verify_s, 2),
        "replay_verify_one_process_s": round(alone_s, 2),
        "integrity_s": round(integrity_s, 2),
        "fold_over_run": round(fold_s / run_s, 4),
        "replay_verify_over_run": round(verify_s / run_s, 4),
        "replay_verify_one_process_over_run": round(alone_s / run_s, 4),
        "integrity_over_run": round(integrity_s / run_s, 4),
        # CPU seconds (every thread, and the helper process), which a busy machine disturbs
        # less than wall time.
        "run_cpu_s": round(run_cpu, 2),
        "replay_verify_cpu_s": round(verify_cpu, 2),
        "replay_verify_one_process_cpu_s": round(alone_cpu, 2),
    }
    if args.json:
        print(json.dumps(figures))
        return
    print(f"{args.disks}-disk Hanoi: {summary.steps} steps, {len(events)} events")
    print(f"  original run      {run_s:8.2f} s")
    print(f"  fold              {fold_s:8.2f} s  ({figures['fold_over_run']} of the run)")
    print(
        f"  replay --verify   {verify_s:8.2f} s  ({figures['replay_verify_over_run']} of the run)"
    )
    print(
        f"  ... one process   {alone_s:8.2f} s  "
        f"({figures['replay_verify_one_process_over_run']} of the run)"
    )
    print(f"  maker verify      {integrity_s:8.2f} s  ({figures['integrity_over_run']} of the run)")
    print(
        f"  CPU seconds: run {run_cpu:.2f}, replay --verify {verify_cpu:.2f}, "
        f"in one process {alone_cpu:.2f}"
    )


T = TypeVar("T")


def _timed(call: Callable[[], T]) -> tuple[T, float, float]:
    """What ``call`` returns, its wall seconds, and the CPU seconds it took in this process
    (every thread) and in the child processes it waited for."""
    wall, cpu, children = time.perf_counter(), time.process_time(), _children_cpu()
    result = call()
    cpu = time.process_time() - cpu + _children_cpu() - children
    return result, time.perf_counter() - wall, cpu


def _children_cpu() -> float:
    try:
        import resource
    except ImportError:  # not on this platform: no child's time is counted
        return 0.0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _fold(path: str, run_id: str) -> tuple[list[AnyEvent], RunSummary]:
    events = anyio.run(load_events, path, run_id)
    return events, summarize(events)


if __name__ == "__main__":
    main()
