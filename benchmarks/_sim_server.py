"""serve-sim in a process of its own, for the latency benchmark: a real provider answers from
another machine, so its serving costs the client's process nothing.

    python -m benchmarks._sim_server '{"latency_ms": 20, "sigma": 0.5, "p": 0.99, "seed": 0}'

Prints the server's base URL on one line once it listens, then serves until stdin closes (the
parent exits or closes it), and prints the count of late answers on its last line.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio

from maker import SimConfig
from maker.apps.serve_sim._serve_sim import SimServerConfig, serve_sim


def config_of(spec: dict[str, Any]) -> SimServerConfig:
    """The server's configuration, as the benchmark describes it."""
    sim = SimConfig(latency_ms=spec["latency_ms"], latency_sigma=spec["sigma"])
    late: dict[str, Any] = {}
    if spec.get("stragglers", 0.0) > 0:
        late = {"fault_rate": spec["stragglers"], "faults": ("late",), "late_s": spec["late_s"]}
    return SimServerConfig(sim=sim, p=spec["p"], seed=spec["seed"], **late)


async def _serve(spec: dict[str, Any]) -> None:
    async with serve_sim(config_of(spec)) as server:
        print(server.base_url, flush=True)
        # Serve until the parent closes stdin (or dies): a read that returns at EOF.
        await anyio.to_thread.run_sync(sys.stdin.read)
        print(server.stats.faults()["late"], flush=True)


if __name__ == "__main__":
    anyio.run(_serve, json.loads(sys.argv[1]))
