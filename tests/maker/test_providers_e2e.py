"""The real SDK clients, through the scheduler and engine, against serve-sim with faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from events import SampleFailed, SampleReceived, SampleRequested, StepDecided, VoteCounted
from maker import Engine, Limits, Policy, Scheduler
from maker.apps.serve_sim._serve_sim import DEFAULT_FAULTS, SimServerConfig, serve_sim
from maker.clients import make_client
from maker.tasks import Hanoi, optimal_moves
from replay import load_events, verify_run

pytestmark = pytest.mark.anyio

KEY = "sk-test-SECRET-4242-do-not-log"
FAULT_TO_KIND = {
    "rate_limit": "rate_limited",
    "server_error": "server_error",
    "unavailable": "unavailable",
    "overloaded": "overloaded",
    "slow": "timeout",
    "malformed": "bad_response",
    "disconnect": "connection",
}
# Fast retries keep the test short; the rules are the production ones, only the scale differs.
# The per-call timeout sits well below the slow fault (3 s) and well above a loaded machine's
# answer time, so that a fault only rarely turns into a timeout before its answer arrives.
FAST = Limits(timeout_s=0.5, backoff_base_s=0.005, backoff_cap_s=0.02, breaker_threshold=50)


def _client(provider: str, base_url: str) -> Any:
    root = base_url + "/v1" if provider == "openai" else base_url
    key = None if provider == "ollama" else KEY
    return make_client(f"{provider}:sim-model", base_url=root, api_key=key, timeout=5.0)


def test_fault_kinds_are_all_mapped() -> None:
    # The runs below inject the default kinds; a late answer (only when named) is no failure.
    assert set(FAULT_TO_KIND) == set(DEFAULT_FAULTS)


@pytest.mark.parametrize("provider", ["openai", "anthropic", "ollama"])
async def test_ten_disks_succeed_through_each_wire_format_with_ten_percent_faults(
    tmp_path: Path, provider: str
) -> None:
    config = SimServerConfig(p=0.995, fault_rate=0.1, retry_after_s=0.01, slow_s=3.0, seed=7)
    async with serve_sim(config) as server:
        client = _client(provider, server.base_url)
        log = tmp_path / "run.db"
        try:
            async with Engine(log=log, client=client, scheduler=Scheduler(FAST)) as engine:
                result = await engine.run(
                    Hanoi(10), policy=Policy(k=3, max_attempts=8), seed=provider.__len__()
                )
        finally:
            await client.aclose()
        stats = server.stats
    assert result.ok, result.reason
    events = await load_events(log)
    decided = [json.loads(e.winner)["move"] for e in events if isinstance(e, StepDecided)]
    assert [tuple(m) for m in decided] == optimal_moves(10)

    # Every injected fault is an event, of the kind it was.
    injected = Counter(FAULT_TO_KIND[r.fault] for r in stats.requests if r.fault)
    recorded = Counter(e.error_kind for e in events if isinstance(e, SampleFailed))
    # Every fault is one failure event of its kind, unless a loaded machine let the client's
    # timeout expire first: then it, like any late answer, is a timeout. So each other kind is
    # at most its count, and the timeouts cover every fault that is missing from its kind.
    missing = 0
    for kind, count in injected.items():
        if kind != "timeout":
            assert recorded[kind] <= count, kind
            missing += count - recorded[kind]
    assert recorded["timeout"] >= injected["timeout"] + missing, (injected, recorded)
    # Rare, or the check would mean little.
    assert missing <= 0.05 * sum(injected.values()), (missing, injected, recorded)
    assert set(injected) == set(FAULT_TO_KIND.values())  # every kind happened
    assert stats.total == len(stats.requests)  # nothing was dropped from the server's record
    # Each failure and each answer is one request the server saw; a sample cancelled when its
    # step decided may have had one in flight (the server saw it, nothing answered it) or none.
    # A client-side timeout may expire before a loaded server has taken the request in: the
    # server then never counts it, so timeouts bound the count from above only.
    answered = sum(1 for e in events if isinstance(e, SampleReceived))
    seen = sum(recorded.values()) + answered
    assert seen - recorded["timeout"] <= stats.total <= seen + result.cancelled_samples

    # No sample is counted twice.
    received = Counter(e.sample_id for e in events if isinstance(e, SampleReceived))
    votes = Counter(e.sample_id for e in events if isinstance(e, VoteCounted))
    requested = Counter(e.sample_id for e in events if isinstance(e, SampleRequested))
    assert max(received.values()) == max(votes.values()) == max(requested.values()) == 1

    # The provider's response ids are recorded (gen_ai.response.id in traces): each answer's is
    # the id the server sent with one of its answered requests, none twice. Ollama's chat API
    # gives none, and none is made up.
    answers = [e for e in events if isinstance(e, SampleReceived)]
    prefix = {"openai": "chatcmpl-sim", "anthropic": "msg_sim"}.get(provider)
    if prefix is None:
        assert all(e.response_id is msgspec.UNSET for e in answers)
    else:
        sent = {f"{prefix}{r.index}" for r in stats.requests if r.status == 200 and not r.probe}
        ids = [e.response_id for e in answers]
        assert len(set(ids)) == len(ids)
        assert set(ids) <= sent, sorted(set(map(str, ids)) - sent)[:5]

    assert KEY.encode() not in log.read_bytes()
    verified = await verify_run(log)  # failures and all, the log replays exactly
    assert verified.ok, verified.divergence


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_dead_server_fails_the_run_within_its_retry_budget(
    tmp_path: Path, provider: str
) -> None:
    config = SimServerConfig(
        fault_rate=1.0, faults=("server_error", "unavailable"), retry_after_s=0.0, seed=1
    )
    async with serve_sim(config) as server:
        client = _client(provider, server.base_url)
        try:
            async with Engine(log=tmp_path / "x.db", client=client, scheduler=Scheduler(FAST)) as e:
                with anyio.fail_after(60):
                    result = await e.run(Hanoi(3), policy=Policy(k=3, max_attempts=4), seed=1)
        finally:
            await client.aclose()
        total = server.stats.total
    assert result.status == "failed"
    assert "failed after 4 attempts" in result.reason
    assert total <= 3 * 4  # k samples in flight, each within its attempts


async def test_concurrency_holds_as_measured_at_the_server(tmp_path: Path) -> None:
    config = SimServerConfig(latency_ms=15.0, seed=3)
    async with serve_sim(config) as server:
        client = _client("openai", server.base_url)
        scheduler = Scheduler(Limits(concurrency=2))
        try:
            async with Engine(log=tmp_path / "c.db", client=client, scheduler=scheduler) as e:
                result = await e.run(Hanoi(4), policy=Policy(k=3, speculative=3), seed=2)
        finally:
            await client.aclose()
        stats = server.stats
    assert result.ok
    assert stats.max_in_flight == 2  # reached, never exceeded


async def test_rpm_holds_over_any_minute_as_measured_at_the_server(tmp_path: Path) -> None:
    # The scheduler and the server share one injected clock; waits advance it, not real time.
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds
        await anyio.lowlevel.checkpoint()

    limits = Limits(rpm=7, timeout_s=5.0)
    async with serve_sim(SimServerConfig(seed=4), clock=lambda: now[0]) as server:
        client = _client("anthropic", server.base_url)
        scheduler = Scheduler(limits, clock=lambda: now[0], sleep=sleep)
        try:
            async with Engine(log=tmp_path / "r.db", client=client, scheduler=scheduler) as e:
                # k = 1: one call at a time, so no other sleeper moves the shared clock while
                # a request is on its way to the server.
                result = await e.run(Hanoi(5), policy=Policy(k=1), seed=3)
        finally:
            await client.aclose()
        arrivals = [r.arrived for r in server.stats.requests]
    assert result.ok
    assert len(arrivals) > 7 * 4
    for i, start in enumerate(arrivals):
        assert sum(1 for t in arrivals[i:] if t < start + 60.0) <= 7
    assert arrivals[-1] - arrivals[0] >= 60.0 * (len(arrivals) // 7 - 1)


async def test_the_cli_runs_a_provider_and_never_prints_or_logs_the_key(tmp_path: Path) -> None:
    log = tmp_path / "cli.db"
    async with serve_sim(SimServerConfig(seed=5, fault_rate=0.05, retry_after_s=0.0)) as server:
        env = {**os.environ, "OPENAI_API_KEY": KEY}
        args = [
            sys.executable, "-m", "maker", "run", "hanoi", "--disks", "4",
            "--model", "openai:gpt-4.1-mini", "--base-url", server.base_url + "/v1",
            "--concurrency", "2", "--rpm", "100000", "--log", str(log), "--json",
        ]  # fmt: skip
        proc = await anyio.run_process(args, env=env, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout)
    assert out["status"] == "succeeded"
    assert out["model"] == "openai:gpt-4.1-mini"
    assert out["cost_usd"] > 0  # priced by the table for gpt-4.1-mini
    exported = await anyio.run_process([sys.executable, "-m", "maker", "export", str(log)], env=env)
    shown = await anyio.run_process(
        [sys.executable, "-m", "maker", "show", str(log), "--json"], env=env
    )
    for blob in (proc.stdout, proc.stderr, exported.stdout, exported.stderr, shown.stdout):
        assert KEY.encode() not in blob
    for name in os.listdir(tmp_path):  # the log, its WAL and anything else written
        data = await anyio.Path(tmp_path / name).read_bytes()
        assert KEY.encode() not in data
    assert json.loads(shown.stdout)["cost_usd"] == pytest.approx(out["cost_usd"])


def test_a_missing_key_is_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY",)}
    proc = subprocess.run(
        [sys.executable, "-m", "maker", "run", "hanoi", "--model", "openai:gpt-4.1-mini",
         "--log", str(tmp_path / "x.db")],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("maker: error: api_key")
    assert "OPENAI_API_KEY" in lines[0]
