"""Hanoi through serve-sim and a real SDK client, sequential and pipelined, against the chain limit.

Starts serve-sim on 127.0.0.1 with a log-normal latency (median 20 ms, sigma 0.5 by default),
runs Towers of Hanoi (10 disks, k = 3, p = 0.99 by default) through the official SDK client of one
wire format, in two modes, in the same invocation:

- ``sequential``: ``Policy(k=K, pipeline=0, hedge=None)``: a step starts when the one before it is
  decided;
- ``pipelined``: ``Policy(k=K, pipeline=DEPTH, hedge=Hedge(quantile=Q))``: steps are voted ahead
  on the state the leading answer implies, and stragglers are hedged (``--pipeline 0`` or
  ``--hedge 0`` turn either off).

For each run it prints the wall time beside the chain limit (steps x median latency: the k samples
of a step run in parallel, so a sequential run costs about one latency per step, and a pipelined
one can cost less), and samples per step beside the paper's expected value for the same p and k
(Eq 16 over v). Then the figures of issue 13's Goals table:

- ``wall_over_limit``: wall / (steps x median latency), per mode (the pipelined bound is about
  E[min of k latencies] / median, ``pipelined_bound``);
- ``samples_per_step_ratio``: samples per step, pipelined / sequential;
- ``cpu_ms_per_sample``: the CPU this process (the engine and the SDK client) spent per sample,
  per mode: the figure a loaded machine moves least;
- with ``--stragglers RATE``: each mode runs again with serve-sim answering that share of requests
  correctly but ``--straggler-s`` seconds late (its ``late`` fault), and
  ``straggler_wall_ratio`` is the wall with stragglers / the wall without, per mode.

``--repeat N`` alternates the modes N times (seed, seed + 1, ...; both modes get the same seed)
and reports medians: the machine is noisy. The last line is a JSON summary (``--json``: only it).

    python -m benchmarks.serve_sim_latency [--disks 10] [--latency-ms 20] [--sigma 0.5] \\
        [--p 0.99] [--pipeline 4] [--hedge 0.95] [--repeat 3] \\
        [--stragglers 0.02 --straggler-s 30] [--format openai] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from anyio.streams.text import TextReceiveStream

from maker import (
    Engine,
    Hedge,
    Limits,
    Policy,
    Scheduler,
    expected_samples_per_step,
)
from maker.apps.serve_sim._serve_sim import serve_sim
from maker.clients import TRANSPORTS, Transport, make_client
from maker.tasks import Hanoi

from ._sim_server import config_of

MODES = ("sequential", "pipelined")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.asynccontextmanager
async def _server(spec: dict[str, Any], where: str) -> AsyncIterator[tuple[str, list[int]]]:
    """serve-sim for one run: its base URL, and (once the block ends) its count of late
    answers. ``where`` is ``"process"`` (its own process, as a remote provider would be: the
    default) or ``"inline"`` (on the benchmark's own event loop)."""
    late = [0]
    if where == "inline":
        async with serve_sim(config_of(spec)) as server:
            yield server.base_url, late
            late[0] = server.stats.faults()["late"]
        return
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    async with await anyio.open_process(
        [sys.executable, "-m", "benchmarks._sim_server", json.dumps(spec)], env=env
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdin is not None
        lines = TextReceiveStream(proc.stdout)
        buffered = ""
        async for chunk in lines:
            buffered += chunk
            if "\n" in buffered:
                break
        url, _, rest = buffered.partition("\n")
        try:
            yield url.strip(), late
        finally:
            await proc.stdin.aclose()
            async for chunk in lines:
                rest += chunk
            words = rest.split()
            late[0] = int(words[-1]) if words else 0


def _policy(mode: str, k: int, depth: int, quantile: float) -> Policy:
    if mode == "sequential":
        # Explicitly off: Policy's own defaults may turn pipelining on.
        return Policy(k=k, pipeline=0, hedge=None)
    return Policy(k=k, pipeline=depth, hedge=Hedge(quantile=quantile) if quantile > 0 else None)


async def _bench(
    *,
    disks: int,
    latency_ms: float,
    sigma: float,
    p: float,
    fmt: str,
    policy: Policy,
    seed: int,
    stragglers: float = 0.0,
    straggler_s: float = 30.0,
    server: str = "process",
    transport: Transport = "aiohttp",
) -> dict[str, Any]:
    spec = {
        "latency_ms": latency_ms,
        "sigma": sigma,
        "p": p,
        "seed": seed,
        "stragglers": stragglers,
        "late_s": straggler_s,
    }
    config = config_of(spec)
    # A straggler must answer within the call's timeout, or it is a timeout, not a straggler.
    timeout = max(30.0, 4.0 * straggler_s) if stragglers > 0 else 30.0
    async with _server(spec, server) as (url, late_count):
        base = url + ("/v1" if fmt == "openai" else "")
        key = None if fmt == "ollama" else "sk-benchmark-not-a-secret"
        client = make_client(
            f"{fmt}:sim-bench",
            base_url=base,
            api_key=key,
            timeout=timeout,
            transport=None if fmt == "ollama" else transport,
        )
        limits = Limits(timeout_s=timeout)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                log = os.path.join(tmp, "bench.db")
                # The process writer, as maker run uses: the log's commits cost the engine's
                # process only the shipping of events.
                async with Engine(
                    log=log, client=client, scheduler=Scheduler(limits), log_writer="process"
                ) as eng:
                    began, cpu_began = time.perf_counter(), time.process_time()
                    result = await eng.run(Hanoi(disks), policy=policy, seed=seed)
                    wall = time.perf_counter() - began
                    # This process's CPU (every thread; the server and the log's writer run in
                    # processes of their own): what a busy machine's noise moves least.
                    cpu = time.process_time() - cpu_began
            finally:
                await client.aclose()  # type: ignore[attr-defined]
    late_faults = late_count[0]
    used = config.sim_config()
    sequential = result.steps * latency_ms / 1000.0
    v = 1.0 - used.malformed_rate - used.overlong_rate
    expected = expected_samples_per_step(used.p, policy.k, v)
    return {
        "format": fmt,
        "transport": transport if fmt != "ollama" else None,
        "disks": disks,
        "k": policy.k,
        "p": used.p,
        "pipeline": policy.pipeline,
        "hedge": policy.hedge.quantile if policy.hedge is not None else 0.0,
        "seed": seed,
        "stragglers": stragglers,
        "straggler_s": straggler_s if stragglers > 0 else 0.0,
        "late_faults": late_faults,
        "status": result.status,
        "steps": result.steps,
        "samples": result.samples,
        "misspeculated_samples": result.misspeculated_samples,
        "hedged_samples": result.hedged_samples,
        "cancelled_samples": result.cancelled_samples,
        "median_latency_ms": latency_ms,
        "latency_sigma": sigma,
        "wall_s": round(wall, 3),
        "sequential_limit_s": round(sequential, 2),
        "wall_over_limit": round(wall / sequential, 3) if sequential > 0 else None,
        "cpu_s": round(cpu, 3),
        "cpu_ms_per_sample": round(1000.0 * cpu / max(1, result.samples), 4),
        "samples_per_step": round(result.samples / max(1, result.steps), 4),
        "paper_expected_samples_per_step": round(expected, 4),
    }


def min_of_k_over_median(k: int, sigma: float, draws: int = 100_000) -> float:
    """E[min of k log-normal latencies] / their median: about what a pipelined step costs when
    the next step starts on the first valid answer (seeded Monte Carlo)."""
    rng = random.Random(0)
    total = 0.0
    for _ in range(draws):
        total += math.exp(sigma * min(rng.gauss(0.0, 1.0) for _ in range(k)))
    return total / draws


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def _describe(figures: dict[str, Any], label: str) -> list[str]:
    late = ""
    if figures["stragglers"] > 0:
        late = (
            f", {figures['stragglers']:g} stragglers at {figures['straggler_s']:g} s "
            f"({figures['late_faults']} late answers)"
        )
    return [
        f"[{label}] {figures['disks']}-disk Hanoi through serve-sim ({figures['format']} wire "
        f"format), k={figures['k']}, p={figures['p']:g}, pipeline={figures['pipeline']}, "
        f"hedge={figures['hedge']:g}, median latency {figures['median_latency_ms']} ms{late}: "
        f"{figures['status']}",
        f"  wall {figures['wall_s']} s vs sequential limit {figures['sequential_limit_s']} s "
        f"(steps x median latency): ratio {figures['wall_over_limit']}; this process's CPU "
        f"{figures['cpu_s']} s, {figures['cpu_ms_per_sample']} ms per sample",
        f"  samples per step {figures['samples_per_step']} vs the paper's expected "
        f"{figures['paper_expected_samples_per_step']} (Eq 16 / v, same p and k); "
        f"misspeculated {figures['misspeculated_samples']}, hedged {figures['hedged_samples']}, "
        f"cancelled {figures['cancelled_samples']}",
    ]


def summarise(runs: list[dict[str, Any]], *, k: int, sigma: float) -> dict[str, Any]:
    """The Goals table's figures from the runs: medians over the repetitions."""

    def of(mode: str, *, straggled: bool) -> list[dict[str, Any]]:
        return [r for r in runs if r["mode"] == mode and (r["stragglers"] > 0) == straggled]

    summary: dict[str, Any] = {
        "wall_over_limit": {},
        "wall_s": {},
        "samples_per_step": {},
        "cpu_ms_per_sample": {},
        "pipelined_bound": round(min_of_k_over_median(k, sigma), 3),
    }
    for mode in MODES:
        plain = of(mode, straggled=False)
        summary["wall_over_limit"][mode] = _median([r["wall_over_limit"] for r in plain])
        summary["wall_s"][mode] = _median([r["wall_s"] for r in plain])
        summary["samples_per_step"][mode] = _median([r["samples_per_step"] for r in plain])
        summary["cpu_ms_per_sample"][mode] = _median([r["cpu_ms_per_sample"] for r in plain])
    # Paired by repetition: both modes of one repetition ran the same seed.
    pairs = zip(of("pipelined", straggled=False), of("sequential", straggled=False), strict=True)
    summary["samples_per_step_ratio"] = _median(
        [pipe["samples_per_step"] / seq["samples_per_step"] for pipe, seq in pairs]
    )
    if any(r["stragglers"] > 0 for r in runs):
        summary["straggler_wall_ratio"] = {}
        summary["straggler_wall_s"] = {}
        for mode in MODES:
            late, plain = of(mode, straggled=True), of(mode, straggled=False)
            summary["straggler_wall_ratio"][mode] = _median(
                [a["wall_s"] / b["wall_s"] for a, b in zip(late, plain, strict=True)]
            )
            summary["straggler_wall_s"][mode] = _median([r["wall_s"] for r in late])
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disks", type=int, default=10)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--sigma", type=float, default=0.5, help="log-normal spread of latency")
    parser.add_argument("--p", type=float, default=0.99, help="P(a valid answer is correct)")
    parser.add_argument("--format", choices=["openai", "anthropic", "ollama"], default="openai")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--pipeline", type=int, default=4, help="depth of the pipelined mode")
    parser.add_argument(
        "--hedge", type=float, default=0.95, help="hedge quantile of the pipelined mode (0: off)"
    )
    parser.add_argument(
        "--stragglers", type=float, default=0.0, help="also run with this share of late answers"
    )
    parser.add_argument("--straggler-s", type=float, default=30.0, help="how late, in seconds")
    parser.add_argument("--repeat", type=int, default=1, help="alternate the modes N times")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print only the JSON summary")
    parser.add_argument(
        "--server",
        choices=["process", "inline"],
        default="process",
        help="serve-sim in its own process (as a remote provider), or on this event loop",
    )
    parser.add_argument(
        "--transport",
        choices=list(TRANSPORTS),
        default="aiohttp",
        help="the HTTP transport under the openai and anthropic SDKs",
    )
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.pipeline < 0:
        parser.error("--pipeline must be >= 0")
    if not 0.0 <= args.stragglers <= 1.0:
        parser.error("--stragglers must be between 0 and 1")

    runs: list[dict[str, Any]] = []
    for rep in range(args.repeat):
        variants = [0.0, args.stragglers] if args.stragglers > 0 else [0.0]
        for stragglers in variants:
            # Alternated, so that a slow spell of the machine falls on both modes alike.
            order = MODES if rep % 2 == 0 else MODES[::-1]
            for mode in order:
                run = functools.partial(
                    _bench,
                    disks=args.disks,
                    latency_ms=args.latency_ms,
                    sigma=args.sigma,
                    p=args.p,
                    fmt=args.format,
                    policy=_policy(mode, args.k, args.pipeline, args.hedge),
                    seed=args.seed + rep,
                    stragglers=stragglers,
                    straggler_s=args.straggler_s,
                    server=args.server,
                    transport=args.transport,
                )
                figures = anyio.run(run)
                figures["mode"] = mode
                runs.append(figures)
                if not args.json:
                    for line in _describe(figures, mode):
                        print(line, flush=True)
    summary = summarise(runs, k=args.k, sigma=args.sigma)
    out = {
        **summary,
        "repeat": args.repeat,
        "disks": args.disks,
        "k": args.k,
        "p": args.p,
        "median_latency_ms": args.latency_ms,
        "latency_sigma": args.sigma,
        "pipeline": args.pipeline,
        "hedge": args.hedge,
        "stragglers": args.stragglers,
        "straggler_s": args.straggler_s,
        "format": args.format,
        "transport": args.transport,
        "runs": runs,
    }
    if not args.json:
        n = f"median of {args.repeat}" if args.repeat > 1 else "one run each"
        wol = summary["wall_over_limit"]
        print(
            f"wall / (steps x median latency) ({n}): sequential {wol['sequential']}, "
            f"pipelined {wol['pipelined']} (bound about {summary['pipelined_bound']}: "
            f"E[min of {args.k} latencies] / median)"
        )
        print(f"samples per step, pipelined / sequential: {summary['samples_per_step_ratio']}")
        if "straggler_wall_ratio" in summary:
            swr = summary["straggler_wall_ratio"]
            print(
                f"wall with {args.stragglers:g} stragglers at {args.straggler_s:g} s / without: "
                f"sequential {swr['sequential']}, pipelined {swr['pipelined']}"
            )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
