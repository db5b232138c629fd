"""The run of `benchmarks.million`, in a process of its own so that its memory is its own.

    python -m benchmarks._million_run LOG --disks N --k K --seed S [--milestones 1000,10000]

It is `maker run hanoi --preset paper` (the same client, engine and log settings as the CLI),
plus an event sink that counts events by type and, when a milestone step is decided, reads this
process's RSS and the log's counters. It prints one JSON line per milestone and one with the
result at the end: a few short lines, flushed as they come, so the parent can show progress
without the pipe ever filling.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio

from events import Event, LogStatistics, StepDecided, event_tag
from maker import PRESETS, Engine, Policy, SimulatedModel
from maker.tasks import Hanoi


def status_kb(field: str) -> int:
    """A ``VmRSS``-style field of /proc/self/status, in KiB (0 where there is no /proc)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


class _Watch:
    def __init__(
        self, milestones: list[int], began: float, stats: Callable[[], LogStatistics]
    ) -> None:
        self.types: Counter[str] = Counter()
        self._milestones = sorted(milestones, reverse=True)  # popped from the end
        self._began = began
        self._stats = stats

    def __call__(self, event: Event) -> None:
        self.types[event_tag(type(event))] += 1
        if isinstance(event, StepDecided) and self._milestones:
            steps = event.step + 1
            while self._milestones and steps >= self._milestones[-1]:
                self._milestones.pop()
                stats = self._stats()
                _say(
                    milestone=steps,
                    # Rows appended but not committed: memory the writer has yet to free.
                    pending=stats.pending,
                    commits=stats.batches,
                    rss_kb=status_kb("VmRSS"),
                    elapsed_s=round(time.perf_counter() - self._began, 3),
                    events=sum(self.types.values()),
                )


async def _run(args: argparse.Namespace) -> None:
    milestones = [int(m) for m in args.milestones.split(",") if m]
    async with Engine(log=args.log, client=SimulatedModel(PRESETS["paper"])) as engine:
        began = time.perf_counter()
        watch = _Watch(milestones, began, engine.log.statistics)
        result = await engine.run(
            Hanoi(args.disks), policy=Policy(k=args.k), seed=args.seed, sinks=[watch]
        )
        await engine.log.flush()
        wall = time.perf_counter() - began
        stats = engine.log.statistics()
        _say(
            result=True,
            run_id=result.run_id,
            status=result.status,
            steps=result.steps,
            samples=result.samples,
            engine_wall_s=round(wall, 3),
            appended=stats.appended,
            batches=stats.batches,
            events_by_type=dict(watch.types),
            rss_kb=status_kb("VmRSS"),
            hwm_kb=status_kb("VmHWM"),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log")
    parser.add_argument("--disks", type=int, required=True)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--milestones", default="", help="steps decided at which to read RSS")
    anyio.run(_run, parser.parse_args())


if __name__ == "__main__":
    main()
