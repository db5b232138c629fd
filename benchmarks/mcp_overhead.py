"""What the MCP server adds to a vote: ``maker mcp`` over stdio against the engine in-process.

Runs the same votes (arithmetic step prompts the simulated model answers, k = 3, one seed per
vote) twice in one run: as ``vote`` tool calls through the official MCP client to ``maker mcp``
on stdio, and as one-step prompt-task runs on an in-process engine. Each vote waits for one
sample latency at least (its k samples run in parallel). Prints per-vote wall times, their
ratio, and each against the latency floor.

    python -m benchmarks.mcp_overhead [--votes 50] [--latency-ms 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from maker import PRESETS, Engine, Policy, SimulatedModel
from maker.tasks import PromptTask, make_task

PATTERN = r"result\s*=\s*(-?\d+)"


def _prompts(votes: int) -> list[tuple[str, str]]:
    task = make_task("arithmetic", {"steps": votes, "digits": 4, "seed": 1})
    state = task.initial_state()
    out = []
    for _ in range(votes):
        prompt = task.prompt(state)
        out.append((prompt.system, prompt.user))
        answer = task.oracle(state)
        assert answer is not None
        state = task.apply(state, answer)
    return out


async def _through_mcp(tmp: Path, prompts: list[tuple[str, str]], latency_ms: float) -> float:
    config = tmp / "mcp.toml"
    config.write_text(f'log = "mcp.db"\n[[models]]\nspec = "sim"\nlatency_ms = {latency_ms}\n')
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "maker", "mcp", "--config", str(config)], cwd=str(tmp)
    )
    async with Client(stdio_client(params)) as client:  # its diagnostics: our stderr
        await client.call_tool("kmin", {"p": 0.99})  # warm: imports, first connection
        began = time.perf_counter()
        for seed, (system, user) in enumerate(prompts):
            result = await client.call_tool(
                "vote",
                {"system": system, "user": user, "pattern": PATTERN, "k": 3, "seed": seed},
            )
            assert not result.is_error, result.content
        return time.perf_counter() - began


async def _in_process(tmp: Path, prompts: list[tuple[str, str]], latency_ms: float) -> float:
    model = SimulatedModel(PRESETS["paper"].replace(latency_ms=latency_ms))
    policy = Policy(k=3, max_samples_per_step=50)
    async with Engine(log=tmp / "direct.db", client=model) as engine:
        began = time.perf_counter()
        for seed, (system, user) in enumerate(prompts):
            task = PromptTask([{"system": system, "user": user}], pattern=PATTERN)
            result = await engine.run(task, policy=policy, seed=seed)
            assert result.ok, result.reason
        return time.perf_counter() - began


async def _bench(votes: int, latency_ms: float) -> dict[str, Any]:
    prompts = _prompts(votes)
    with tempfile.TemporaryDirectory() as tmp:
        direct = await _in_process(Path(tmp), prompts, latency_ms)
        mcp = await _through_mcp(Path(tmp), prompts, latency_ms)
    floor = latency_ms / 1000.0
    return {
        "votes": votes,
        "median_latency_ms": latency_ms,
        "in_process_ms_per_vote": round(direct / votes * 1000, 2),
        "mcp_ms_per_vote": round(mcp / votes * 1000, 2),
        "mcp_over_in_process": round(mcp / direct, 3),
        "mcp_added_ms_per_vote": round((mcp - direct) / votes * 1000, 2),
        "in_process_over_latency": round(direct / votes / floor, 3) if floor else None,
        "mcp_over_latency": round(mcp / votes / floor, 3) if floor else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--votes", type=int, default=50)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = anyio.run(_bench, args.votes, args.latency_ms, backend="asyncio")
    if args.json:
        print(json.dumps(figures))
        return
    print(
        f"{figures['votes']} votes, k=3, simulated model at {args.latency_ms:g} ms median latency"
    )
    for label, key in (("in process", "in_process"), ("maker mcp over stdio", "mcp")):
        floor = figures[f"{key}_over_latency"]
        against = f" ({floor}x the latency)" if floor is not None else ""
        print(f"  {label}: {figures[f'{key}_ms_per_vote']} ms per vote{against}")
    print(
        f"  ratio {figures['mcp_over_in_process']}: the server adds "
        f"{figures['mcp_added_ms_per_vote']} ms per vote"
    )


if __name__ == "__main__":
    main()
