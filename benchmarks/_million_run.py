"""The run of `benchmarks.million`, in a process of its own so that its memory is its own.

    python -m benchmarks._million_run LOG --disks N --k K --seed S [--milestones 1000,10000]
                                      [--writer process|thread]

It is `maker run hanoi --preset paper` (the same client, engine and log settings as the CLI,
the log's writer in a process of its own unless ``--writer thread``), plus an event sink that
counts events by type and, when a milestone step is decided, reads the run's RSS and the log's
counters. The run's RSS (``rss_kb``) is this process's plus its log writer process's
(``writer_rss_kb``); at the end ``hwm_kb`` adds the two peaks (``writer_hwm_kb``), an upper
bound of their peak together. It prints one JSON line per milestone and one with the result at
the end: a few short lines, flushed as they come, so the parent can show progress without the
pipe ever filling.
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


def status_kb(field: str, pid: int | None = None) -> int:
    """A ``VmRSS``-style field of a process's /proc status (this one's by default), in KiB (0
    where there is no /proc, or no such process)."""
    try:
        with open(f"/proc/{'self' if pid is None else pid}/status") as status:
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
        self,
        milestones: list[int],
        began: float,
        stats: Callable[[], LogStatistics],
        writer_pid: int | None,
    ) -> None:
        self.types: Counter[str] = Counter()
        self._milestones = sorted(milestones, reverse=True)  # popped from the end
        self._began = began
        self._stats = stats
        self._writer_pid = writer_pid

    def __call__(self, event: Event) -> None:
        self.types[event_tag(type(event))] += 1
        if isinstance(event, StepDecided) and self._milestones:
            steps = event.step + 1
            while self._milestones and steps >= self._milestones[-1]:
                self._milestones.pop()
                stats = self._stats()
                writer_kb = writer_status_kb("VmRSS", self._writer_pid)
                _say(
                    milestone=steps,
                    # Rows appended but not committed: memory the writer has yet to free.
                    pending=stats.pending,
                    commits=stats.batches,
                    rss_kb=status_kb("VmRSS") + writer_kb,
                    writer_rss_kb=writer_kb,
                    elapsed_s=round(time.perf_counter() - self._began, 3),
                    events=sum(self.types.values()),
                )


def writer_status_kb(field: str, pid: int | None) -> int:
    """The field of the log writer process, 0 without one (the thread writer)."""
    return 0 if pid is None else status_kb(field, pid)


async def _run(args: argparse.Namespace) -> None:
    milestones = [int(m) for m in args.milestones.split(",") if m]
    client = SimulatedModel(PRESETS["paper"])
    async with Engine(log=args.log, client=client, log_writer=args.writer) as engine:
        began = time.perf_counter()
        writer_pid = engine.log.writer_pid
        watch = _Watch(milestones, began, engine.log.statistics, writer_pid)
        result = await engine.run(
            Hanoi(args.disks), policy=Policy(k=args.k), seed=args.seed, sinks=[watch]
        )
        await engine.log.flush()
        wall = time.perf_counter() - began
        stats = engine.log.statistics()
        writer_rss = writer_status_kb("VmRSS", writer_pid)
        writer_hwm = writer_status_kb("VmHWM", writer_pid)
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
            rss_kb=status_kb("VmRSS") + writer_rss,
            hwm_kb=status_kb("VmHWM") + writer_hwm,
            writer_rss_kb=writer_rss,
            writer_hwm_kb=writer_hwm,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log")
    parser.add_argument("--disks", type=int, required=True)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--milestones", default="", help="steps decided at which to read RSS")
    parser.add_argument("--writer", choices=["process", "thread"], default="process")
    anyio.run(_run, parser.parse_args())


if __name__ == "__main__":
    main()
