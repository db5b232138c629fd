"""Pipelined steps and hedged stragglers: what the engine decides stays a pure function of the
task, the policy and the recorded outcomes, and a step decides only from samples drawn for the
state it actually started from."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

from events import (
    RunStarted,
    SampleCancelled,
    SampleHedged,
    SampleReceived,
    SampleRequested,
    StateChanged,
    StepAbandoned,
    StepDecided,
    StepStarted,
    VoteCounted,
    to_dict,
)
from maker import AdaptiveK, Engine, Hedge, Policy, RunResult, SimConfig, SimulatedModel
from maker.tasks import Arithmetic, Hanoi
from replay import load_events, verify_run

pytestmark = pytest.mark.anyio


async def _run(
    path: Path, task: Any, policy: Policy, seed: int, sim: SimConfig
) -> tuple[RunResult, list[Any]]:
    async with Engine(log=path, client=SimulatedModel(sim)) as engine:
        result = await engine.run(task, policy=policy, seed=seed)
    return result, await load_events(path, result.run_id)


@pytest.mark.parametrize("latency_ms", [0.0, 1.0])
async def test_pipelined_and_hedged_runs_replay_exactly_over_many_seeds(
    tmp_path: Path, latency_ms: float
) -> None:
    # A wide spread of latencies (sigma 1.2) makes arrival orders vary from run to run and
    # stragglers common, so hedges are sent; p = 0.85 makes leaders change and starts abandoned.
    sim = SimConfig(p=0.85, latency_ms=latency_ms, latency_sigma=1.2)
    policy = Policy(k=2, pipeline=3, hedge=Hedge(quantile=0.8, min_s=0.0005, warmup=4))
    totals: Counter[str] = Counter()
    for seed in range(10):
        path = tmp_path / f"run{seed}.db"
        result, events = await _run(path, Hanoi(4), policy, seed, sim)
        verified = await verify_run(path, task=Hanoi(4))
        assert verified.ok, (seed, verified.divergence)
        assert verified.checked == verified.recorded
        totals["speculative"] += sum(isinstance(e, StepStarted) and e.speculative for e in events)
        totals["abandoned"] += sum(isinstance(e, StepAbandoned) for e in events)
        totals["hedged"] += sum(isinstance(e, SampleHedged) for e in events)
        assert result.misspeculated_steps == sum(isinstance(e, StepAbandoned) for e in events)
        assert result.hedged_samples == sum(isinstance(e, SampleHedged) for e in events)
    assert totals["speculative"] > 50
    assert totals["abandoned"] > 5
    if latency_ms:
        assert totals["hedged"] > 0  # the replays above re-sent them where the log has them


def _check_decisions_use_only_their_own_start(records: list[dict[str, Any]]) -> Counter[str]:
    """From a run's export: every decided step was decided by votes of samples requested for
    the start whose state is the state the previous step decided; abandoned starts' votes
    counted nowhere. Returns counts of what was checked."""
    started = records[0]
    assert started["type"] == "run_started"
    decided_state = json.dumps(started["initial_state"], sort_keys=True)
    starts: dict[int, dict[str, Any]] = {}  # the open start of each step
    sample_start: dict[str, dict[str, Any]] = {}  # sample id -> the start it was drawn for
    seen: Counter[str] = Counter()
    for r in records:
        kind = r["type"]
        if kind == "step_started":
            assert r["step"] not in starts, "a step has one start open at a time"
            starts[r["step"]] = {"state": json.dumps(r["state"], sort_keys=True), "votes": []}
            starts[r["step"]]["branch"] = r.get("branch", 0)
            seen["speculative"] += bool(r.get("speculative"))
        elif kind == "sample_requested":
            start = starts[r["step"]]
            sample_start[r["sample_id"]] = start
            if not start.get("first_seen"):
                start["first_seen"] = True
                assert r["temperature"] == 0.0, "a start's first sample is at temperature 0"
        elif kind == "vote_counted":
            start = starts[r["step"]]
            assert sample_start[r["sample_id"]] is start, "a vote in another start's tally"
            start["votes"].append(r["candidate"])
        elif kind == "step_abandoned":
            start = starts.pop(r["step"])
            assert start["branch"] == r["branch"]
            seen["abandoned"] += 1
        elif kind == "step_decided":
            start = starts.pop(r["step"])
            assert start["state"] == decided_state, "decided from a state not decided before"
            assert dict(Counter(start["votes"])) == r["votes"]
            seen["decided"] += 1
        elif kind == "state_changed":
            decided_state = json.dumps(r["state"], sort_keys=True)
    return seen


async def test_many_misspeculations_and_still_every_step_decides_from_its_true_state(
    tmp_path: Path,
) -> None:
    # p = 0.6: the first vote of a step is wrong 40% of the time, so leaders change often and
    # speculative starts are abandoned by the hundred.
    sim = SimConfig(p=0.6, latency_ms=0.0)
    seen: Counter[str] = Counter()
    for seed in range(4):
        path = tmp_path / f"p06-{seed}.db"
        result, events = await _run(
            path, Arithmetic(steps=40, digits=3, seed=seed), Policy(k=3, pipeline=4), seed, sim
        )
        assert result.steps > 0
        # Checked from the export, as a user would read the log.
        proc = await anyio.run_process([_python(), "-m", "maker", "export", str(path)])
        records = [json.loads(line) for line in proc.stdout.decode().splitlines()]
        assert records == [to_dict(e) for e in events]
        seen += _check_decisions_use_only_their_own_start(records)
        assert result.misspeculated_steps == sum(isinstance(e, StepAbandoned) for e in events)
        abandoned_samples = sum(e.samples for e in events if isinstance(e, StepAbandoned))
        assert result.misspeculated_samples == abandoned_samples
        cancelled = Counter(e.reason for e in events if isinstance(e, SampleCancelled))
        assert result.cancelled_samples == sum(cancelled.values())
        assert (await verify_run(path)).ok
    assert seen["abandoned"] > 100
    assert seen["speculative"] > 100
    assert seen["decided"] > 100


def _python() -> str:
    import sys

    return sys.executable


async def test_hedges_under_injected_stragglers_keep_every_tally_first_to_ahead_by_k(
    tmp_path: Path,
) -> None:
    # 10% of calls straggle for 0.3 s (against a 1 ms median): the head step's stragglers get
    # hedged. The straggler still votes if it answers before its step decides.
    sim = SimConfig(p=0.9, latency_ms=1.0, straggler_rate=0.1, straggler_s=0.3)
    k = 3
    policy = Policy(k=k, pipeline=2, hedge=Hedge(quantile=0.9, min_s=0.002, warmup=5, share=0.5))
    path = tmp_path / "hedged.db"
    result, events = await _run(path, Hanoi(4), policy, 3, sim)
    assert result.ok, result.reason
    hedges = [e for e in events if isinstance(e, SampleHedged)]
    assert hedges, "no straggler was hedged"
    requested = {e.sample_id: e for e in events if isinstance(e, SampleRequested)}
    for hedge in hedges:
        assert hedge.sample_id in requested
        assert hedge.straggler in requested
        assert hedge.in_flight_s >= hedge.threshold_s > 0
    # Every decision is first-to-ahead-by-k: the winner is exactly k ahead of the runner-up in
    # the decided tally, and no vote came after the decision in that start.
    for e in events:
        if isinstance(e, StepDecided):
            votes = sorted(e.votes.values(), reverse=True)
            assert votes[0] - (votes[1] if len(votes) > 1 else 0) == k
    last_vote: dict[int, VoteCounted] = {}
    for e in events:
        if isinstance(e, StepStarted):
            last_vote.pop(e.step, None)
        elif isinstance(e, VoteCounted):
            last_vote[e.step] = e
        elif isinstance(e, StepDecided):
            assert last_vote[e.step].tally == e.votes
    assert result.hedged_samples == len(hedges)
    assert (await verify_run(path, task=Hanoi(4))).ok


async def test_adaptive_k_with_a_pipeline_counts_open_starts_again_and_replays(
    tmp_path: Path,
) -> None:
    sim = SimConfig(p=0.9, latency_ms=0.0)
    policy = Policy(k=3, pipeline=3, adaptive=AdaptiveK(target=0.9, prior_p=0.7))
    path = tmp_path / "adaptive.db"
    result, events = await _run(path, Hanoi(5), policy, 4, sim)
    assert result.steps > 0
    records = [to_dict(e) for e in events]
    _check_decisions_use_only_their_own_start(records)
    assert (await verify_run(path, task=Hanoi(5))).ok


async def test_a_pipeline_is_recorded_and_a_run_without_one_records_as_before(
    tmp_path: Path,
) -> None:
    sim = SimConfig(latency_ms=0.0)
    _, plain = await _run(tmp_path / "plain.db", Hanoi(3), Policy(k=2), 1, sim)
    _, piped = await _run(
        tmp_path / "piped.db", Hanoi(3), Policy(k=2, pipeline=2, hedge=Hedge()), 1, sim
    )
    assert isinstance(plain[0], RunStarted)
    assert isinstance(piped[0], RunStarted)
    assert "pipeline" not in plain[0].policy
    assert "hedge" not in plain[0].policy
    assert piped[0].policy["pipeline"] == 2
    assert piped[0].policy["hedge"]["quantile"] == Hedge().quantile
    assert Policy.from_json(piped[0].policy) == Policy(k=2, pipeline=2, hedge=Hedge())
    # A first, decided start writes what it wrote before pipelining existed.
    first = next(e for e in plain if isinstance(e, StepStarted))
    assert "branch" not in json.loads(json.dumps(to_dict(first)))


async def test_the_per_step_cap_counts_the_samples_of_one_start(tmp_path: Path) -> None:
    # With p = 0.5 and a cap of 4, steps run out of samples: the run fails on its head step
    # with the usual message, whatever its speculative starts had drawn.
    sim = SimConfig(p=0.5, latency_ms=0.0)
    policy = Policy(k=3, pipeline=3, max_samples_per_step=4)
    result, events = await _run(tmp_path / "cap.db", Hanoi(6), policy, 2, sim)
    assert result.status == "failed"
    assert "undecided after 4 samples" in result.reason
    per_start: Counter[tuple[int, int]] = Counter()
    branch: dict[int, int] = {}
    for e in events:
        if isinstance(e, StepStarted):
            branch[e.step] = e.branch
        elif isinstance(e, SampleRequested):
            per_start[(e.step, branch[e.step])] += 1
    assert max(per_start.values()) <= 4
    assert not [e for e in events if isinstance(e, SampleReceived) and e.step < 0]
    assert all(isinstance(e.state, dict) for e in events if isinstance(e, StateChanged))
