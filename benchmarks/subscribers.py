"""Live event delivery: one run watched by 0, 1, 10 and 100 in-process subscribers.

Runs Towers of Hanoi (12 disks by default: 4,095 steps) on the simulated model (paper preset).
Without ``--latency-ms`` the model answers at once, so the engine goes as fast as it can and the
subscribers compete with it for the event loop: the worst case for them. Each subscriber is
``async for event in handle.events()``, counting what it receives. For each subscriber count it
prints the run's own wall time, the time until the last subscriber had every event, the events
per second each subscriber received, and the ratios to the run without subscribers. The seed is
fixed, so every run decides the same and emits the same events.

    python -m benchmarks.subscribers [--disks 12] [--k 3] [--seed 0] [--latency-ms 0]
        [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from contextlib import aclosing
from typing import NamedTuple

import anyio

from maker import PRESETS, Engine, Policy, RunHandle, SimulatedModel
from maker.tasks import Hanoi

COUNTS = (0, 1, 10, 100)


class Measure(NamedTuple):
    """One run with ``subscribers`` watching it."""

    subscribers: int
    events: int
    run_s: float
    """From start() until the run's result."""
    delivered_s: float
    """From start() until the last subscriber had the run_finished event (the run's end if none)."""
    catch_ups: int
    """Times a subscriber fell behind its buffer and caught up from the log."""


async def _subscribe(handle: RunHandle, counts: list[int], index: int) -> None:
    async with aclosing(handle.events()) as events:
        async for _ in events:
            counts[index] += 1


async def _measure(
    path: str, disks: int, k: int, seed: int, latency_ms: float, subscribers: int
) -> Measure:
    model = SimulatedModel(PRESETS["paper"].replace(latency_ms=latency_ms))
    async with Engine(log=path, client=model) as engine:
        counts = [0] * subscribers
        began = time.perf_counter()
        handle = engine.start(Hanoi(disks), policy=Policy(k=k), seed=seed)
        async with anyio.create_task_group() as tg:
            for index in range(subscribers):
                tg.start_soon(_subscribe, handle, counts, index)
            result = await handle.result()
            ran = time.perf_counter() - began
        delivered = time.perf_counter() - began
        stats = handle.statistics()
    assert result.ok, result.reason
    assert all(count == stats.events for count in counts), "a subscriber missed events"
    return Measure(subscribers, stats.events, ran, delivered, stats.catch_ups)


def _median(runs: list[Measure]) -> Measure:
    """The run with the median delivery time (the figures of one real run, not a blend)."""
    ranked = sorted(runs, key=lambda m: m.delivered_s)
    return ranked[len(ranked) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disks", type=int, default=12)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="Median latency of the simulated model."
    )
    parser.add_argument("--repeat", type=int, default=3, help="Runs per subscriber count.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    measures: list[Measure] = []
    with tempfile.TemporaryDirectory() as tmp:
        for subscribers in COUNTS:
            runs = []
            for attempt in range(args.repeat):
                path = os.path.join(tmp, f"run-{subscribers}-{attempt}.db")
                runs.append(
                    anyio.run(
                        _measure, path, args.disks, args.k, args.seed, args.latency_ms, subscribers
                    )
                )
            measures.append(_median(runs))

    base = measures[0]
    base_rate = base.events / base.run_s
    rows = []
    for m in measures:
        per_subscriber = m.events / m.delivered_s
        rows.append(
            {
                "subscribers": m.subscribers,
                "events": m.events,
                "run_s": round(m.run_s, 3),
                "delivered_s": round(m.delivered_s, 3),
                "events_per_s_per_subscriber": round(per_subscriber) if m.subscribers else None,
                "events_per_s_total": round(per_subscriber * m.subscribers),
                "run_s_ratio": round(m.run_s / base.run_s, 2),
                "rate_ratio": round(per_subscriber / base_rate, 2) if m.subscribers else None,
                "catch_ups": m.catch_ups,
            }
        )
    if args.json:
        settings = {"disks": args.disks, "k": args.k, "latency_ms": args.latency_ms}
        print(json.dumps({**settings, "repeat": args.repeat, "rows": rows}))
        return
    print(
        f"Hanoi {args.disks} disks, k={args.k}, simulated model (paper, "
        f"latency {args.latency_ms:g} ms), "
        f"{base.events} events; median of {args.repeat} runs per row"
    )
    print(f"without subscribers the run takes {base.run_s:.3f} s: {base_rate:,.0f} events/s\n")
    header = (
        f"{'subscribers':>11}  {'run s':>7}  {'x run':>6}  {'delivered s':>11}  "
        f"{'events/s each':>13}  {'x rate':>6}  {'events/s all':>12}  {'catch-ups':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        each = row["events_per_s_per_subscriber"]
        ratio = row["rate_ratio"]
        print(
            f"{row['subscribers']:>11}  {row['run_s']:>7.3f}  {row['run_s_ratio']:>6.2f}  "
            f"{row['delivered_s']:>11.3f}  {'-' if each is None else f'{each:,}':>13}  "
            f"{'-' if ratio is None else f'{ratio:.2f}':>6}  "
            f"{row['events_per_s_total']:>12,}  {row['catch_ups']:>9}"
        )
    print(
        "\nx run: the run's wall time over the run without subscribers. x rate: events/s each"
        " subscriber received over the events/s the run emits alone."
    )


if __name__ == "__main__":
    main()
