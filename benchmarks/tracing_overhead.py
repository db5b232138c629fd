"""The cost of live OpenTelemetry tracing on a run.

Runs Towers of Hanoi (15 disks by default: 32,767 steps, about 130,000 spans) on the simulated
model (paper preset, k = 3, seed 0) in three ways, each in a fresh interpreter so none inherits
another's heap:

- ``plain``: no tracing;
- ``traced``: a ``TraceSink`` exporting live through a ``BatchSpanProcessor`` to the SDK's
  in-memory exporter, which keeps every span;
- ``floor``: the same provider and exporter, and a sink that only starts and ends one span per
  span the run needs (1 + steps + samples), with a fixed set of ten attributes and no logic of
  maker's. It is about what the OpenTelemetry SDK and the in-memory exporter cost by
  themselves, so ``traced`` against ``floor`` shows what the span builder adds.

Prints the wall and CPU times (CPU includes the batch processor's export thread), the ratios to
``plain`` (target for ``traced``: at most 1.5), and the spans exported against the spans expected.
With ``--repeat N`` the three runs are interleaved N times and the fastest of each is kept: on a
shared machine other work only ever adds time.

    python -m benchmarks.tracing_overhead [--disks 15] [--k 3] [--seed 0] [--repeat 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import anyio
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from events import Event, RunStarted, SampleRequested, StepStarted
from maker import Engine, EventSink, Policy, RunResult, SimulatedModel
from maker.otel._otel import QUEUE_SIZE, TraceSink
from maker.otel._sdk import DeterministicIdGenerator
from maker.tasks import Hanoi

MODES = ("plain", "floor", "traced")

_FLOOR_ATTRIBUTES: dict[str, Any] = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "maker.sim",
    "gen_ai.request.model": "sim",
    "gen_ai.request.temperature": 0.1,
    "gen_ai.request.max_tokens": 1000,
    "gen_ai.usage.input_tokens": 456,
    "gen_ai.usage.output_tokens": 538,
    "gen_ai.response.finish_reasons": ("stop",),
    "maker.sample_id": "0:0",
    "maker.candidate": '{"move":[1,0,1],"next_state":[[4,3,2],[1],[]]}',
}


def _floor_sink(provider: TracerProvider) -> EventSink:
    tracer = provider.get_tracer("floor")
    root = tracer.start_span("floor", Context())
    parent = trace.set_span_in_context(root, Context())
    opening = (RunStarted, StepStarted, SampleRequested)

    def sink(event: Event) -> None:
        if type(event) in opening:
            span = tracer.start_span(
                "chat sim", parent, trace.SpanKind.CLIENT, _FLOOR_ATTRIBUTES, (), 1
            )
            span.end(2)

    return sink


async def _run(
    path: str, disks: int, k: int, seed: int, sinks: list[EventSink]
) -> tuple[RunResult, float]:
    async with Engine(log=path, client=SimulatedModel(preset="paper")) as engine:
        began = time.perf_counter()
        result = await engine.run(Hanoi(disks), policy=Policy(k=k), seed=seed, sinks=sinks)
        await engine.log.flush()
        wall = time.perf_counter() - began
    return result, wall


def _one(mode: str, disks: int, k: int, seed: int) -> dict[str, Any]:
    """One run in this process; its figures as JSON."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(id_generator=DeterministicIdGenerator(), shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=QUEUE_SIZE))
    sinks: list[EventSink] = []
    if mode == "traced":
        sinks.append(TraceSink(provider))
    elif mode == "floor":
        sinks.append(_floor_sink(provider))
    with tempfile.TemporaryDirectory() as tmp:
        cpu = time.process_time()
        result, wall = anyio.run(_run, os.path.join(tmp, "log.db"), disks, k, seed, sinks)
        cpu = time.process_time() - cpu
    began = time.perf_counter()
    provider.shutdown()  # exports what the batch processor still holds
    drain = time.perf_counter() - began
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "drain_s": drain,
        "steps": result.steps,
        "samples": result.samples,
        "status": result.status,
        "spans": len(exporter.get_finished_spans()),
    }


def _child(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.tracing_overhead", "--one", mode]
    command += ["--disks", str(args.disks), "--k", str(args.k), "--seed", str(args.seed)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    figures: dict[str, Any] = json.loads(done.stdout)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--disks", type=int, default=15)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeat", type=int, default=1, help="Rounds of the three runs; the fastest of each."
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(_one(args.one, args.disks, args.k, args.seed)))
        return

    rounds: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for _ in range(max(1, args.repeat)):
        for mode in MODES:
            rounds[mode].append(_child(mode, args))
    best = {mode: min(runs, key=lambda f: f["wall_s"]) for mode, runs in rounds.items()}
    cpu = {mode: min(f["cpu_s"] for f in runs) for mode, runs in rounds.items()}
    plain, traced = best["plain"], best["traced"]
    if any((f["steps"], f["samples"]) != (plain["steps"], plain["samples"]) for f in best.values()):
        raise SystemExit("the runs differ; the comparison is void")
    expected = 1 + traced["steps"] + traced["samples"]
    figures: dict[str, Any] = {
        "disks": args.disks,
        "k": args.k,
        "seed": args.seed,
        "repeat": len(rounds["plain"]),
        "steps": plain["steps"],
        "samples": plain["samples"],
        "spans_expected": expected,
    }
    for mode in MODES:
        figures[f"{mode}_wall_s"] = round(best[mode]["wall_s"], 3)
        figures[f"{mode}_cpu_s"] = round(cpu[mode], 3)
    for mode in ("floor", "traced"):
        figures[f"{mode}_ratio"] = round(best[mode]["wall_s"] / plain["wall_s"], 3)
        figures[f"{mode}_cpu_ratio"] = round(cpu[mode] / cpu["plain"], 3)
        figures[f"{mode}_spans_exported"] = best[mode]["spans"]
    figures["traced_vs_floor"] = round(best["traced"]["wall_s"] / best["floor"]["wall_s"], 3)
    if args.json:
        print(json.dumps(figures))
        return
    rounds_text = f", fastest of {args.repeat}" if args.repeat > 1 else ""
    print(
        f"{args.disks}-disk Hanoi, simulated model (paper preset), k={args.k}, seed {args.seed}:"
        f" {plain['steps']} steps, {plain['samples']} samples, {expected} spans{rounds_text}"
    )
    labels = {
        "plain": "without tracing",
        "floor": "SDK floor (bare spans)",
        "traced": "live tracing (TraceSink)",
    }
    for mode in MODES:
        line = f"  {labels[mode]:26s} {best[mode]['wall_s']:8.2f} s wall {cpu[mode]:8.2f} s CPU"
        if mode != "plain":
            line += (
                f"   x{figures[f'{mode}_ratio']:.3f} wall  x{figures[f'{mode}_cpu_ratio']:.3f} CPU"
                f"   {best[mode]['spans']} spans exported"
            )
        print(line)
    print(f"  traced / plain = {figures['traced_ratio']} (target <= 1.5)")
    print(
        f"  traced / floor = {figures['traced_vs_floor']} (the span builder against bare SDK"
        " spans: near 1, it adds little of its own)"
    )
    if traced["spans"] != expected:
        print(f"  LOST SPANS: {expected - traced['spans']}")


if __name__ == "__main__":
    main()
