"""Hanoi through serve-sim and a real SDK client, against the sequential latency limit.

Starts serve-sim on 127.0.0.1 with a median latency (20 ms by default), runs Towers of Hanoi
(10 disks by default) through the official SDK client of one wire format, and prints:

- wall time beside the sequential limit, steps x median latency: the k samples of a step run in
  parallel, so a run costs about one latency per step, not one per sample;
- samples per step beside the paper's expected value for the same p and k (Eq 16 over v).

    python -m benchmarks.serve_sim_latency [--disks 10] [--latency-ms 20] [--format openai]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import anyio

from maker import Engine, Limits, Policy, Scheduler, SimConfig, expected_samples_per_step
from maker.apps.serve_sim._serve_sim import SimServerConfig, serve_sim
from maker.clients import make_client
from maker.tasks import Hanoi


async def _bench(disks: int, latency_ms: float, fmt: str, k: int, seed: int) -> dict[str, object]:
    sim = SimConfig(latency_ms=latency_ms)
    async with serve_sim(SimServerConfig(sim=sim, seed=seed)) as server:
        base = server.base_url + ("/v1" if fmt == "openai" else "")
        key = None if fmt == "ollama" else "sk-benchmark-not-a-secret"
        client = make_client(f"{fmt}:sim-bench", base_url=base, api_key=key, timeout=30.0)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                log = os.path.join(tmp, "bench.db")
                async with Engine(log=log, client=client, scheduler=Scheduler(Limits())) as eng:
                    began = time.perf_counter()
                    result = await eng.run(Hanoi(disks), policy=Policy(k=k), seed=seed)
                    wall = time.perf_counter() - began
            finally:
                await client.aclose()  # type: ignore[attr-defined]
    sequential = result.steps * latency_ms / 1000.0
    v = 1.0 - sim.malformed_rate - sim.overlong_rate
    expected = expected_samples_per_step(sim.p, k, v)
    return {
        "format": fmt,
        "disks": disks,
        "k": k,
        "status": result.status,
        "steps": result.steps,
        "samples": result.samples,
        "median_latency_ms": latency_ms,
        "wall_s": round(wall, 2),
        "sequential_limit_s": round(sequential, 2),
        "wall_over_limit": round(wall / sequential, 3),
        "samples_per_step": round(result.samples / result.steps, 4),
        "paper_expected_samples_per_step": round(expected, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disks", type=int, default=10)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--format", choices=["openai", "anthropic", "ollama"], default="openai")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = anyio.run(_bench, args.disks, args.latency_ms, args.format, args.k, args.seed)
    if args.json:
        print(json.dumps(figures))
        return
    print(
        f"{figures['disks']}-disk Hanoi through serve-sim ({figures['format']} wire format), "
        f"k={figures['k']}, median latency {figures['median_latency_ms']} ms: {figures['status']}"
    )
    print(
        f"  wall {figures['wall_s']} s vs sequential limit {figures['sequential_limit_s']} s "
        f"(steps x median latency): ratio {figures['wall_over_limit']}"
    )
    print(
        f"  samples per step {figures['samples_per_step']} vs the paper's expected "
        f"{figures['paper_expected_samples_per_step']} (Eq 16 / v, same p and k)"
    )


if __name__ == "__main__":
    main()
