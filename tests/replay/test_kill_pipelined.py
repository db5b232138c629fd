"""kill -9 during a pipelined (and hedged) run, then resume: the decisions of an uninterrupted run
with the same seed, and no recorded sample requested again.

A pipelined run interleaves the events of several steps, abandons speculative starts and sends
hedges, so a kill lands between events a one-step-at-a-time run never has side by side. The
child is the full-speed one of the kill tests (the in-process model at zero latency, where the
engine never waits), and the same with latency (2 ms a call, where the steps really overlap
and hedges are sent): bugs of timing hide at one speed.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from pathlib import Path

import anyio
import pytest

from events import (
    RunFinished,
    RunResumed,
    SampleRequested,
    StepAbandoned,
    StepDecided,
    StepStarted,
    UnknownRunError,
)
from maker import Engine, Hedge, Policy, SimulatedModel
from maker.clients import PRESETS
from maker.tasks import Hanoi
from replay import load_events, resume_run, verify_run

from .test_kill import _kill_fast_run

SEED = 23
K = 3
DEPTH = 4
# (latency ms, disks, where a kill lands as a share of the run's events, hedge quantile); by
# events rather than seconds, so that a faster machine does not move the kills past the end.
CASES = {
    "zero-latency": (0.0, 10, (0.05, 0.9), 0.0),
    "latency": (2.0, 8, (0.1, 0.9), 0.9),
}
KILLS = 3


def _policy(hedge: float) -> Policy:
    return Policy(k=K, pipeline=DEPTH, hedge=Hedge(quantile=hedge, min_s=0.001) if hedge else None)


def _model(latency_ms: float) -> SimulatedModel:
    if not latency_ms:
        return SimulatedModel(preset="paper")
    return SimulatedModel(dataclasses.replace(PRESETS["paper"], latency_ms=latency_ms))


async def _reference(
    path: Path, latency_ms: float, disks: int, hedge: float
) -> tuple[list[str], int]:
    """The winners of an uninterrupted run, and how many events it had."""
    async with Engine(log=path, client=_model(latency_ms)) as engine:
        result = await engine.run(Hanoi(disks), policy=_policy(hedge), seed=SEED)
    assert result.ok, result.reason
    events = await load_events(path, result.run_id)
    return [e.winner for e in events if isinstance(e, StepDecided)], len(events)


def _run_and_kill(path: Path, case: str, at_events: int) -> bool:
    """Run the child; SIGKILL it once it has emitted ``at_events`` events. Whether it was
    killed before it finished."""
    latency_ms, disks, _, hedge = CASES[case]
    child = (
        "--disks", str(disks), "--k", str(K), "--seed", str(SEED), "--pipeline", str(DEPTH),
        "--hedge", str(hedge), "--latency-ms", str(latency_ms),
    )  # fmt: skip
    _, _, killed, _ = _kill_fast_run(
        path, path.with_suffix(".progress"), 0.05, at_events, "thread", child=child
    )
    return killed


@pytest.mark.slow  # a few seconds per kill: each resumes the run to its end
@pytest.mark.parametrize("case", sorted(CASES))
def test_pipelined_runs_killed_anywhere_resume_to_the_same_decisions(
    tmp_path: Path, case: str
) -> None:
    latency_ms, disks, window, hedge = CASES[case]
    winners, total = anyio.run(_reference, tmp_path / "ref.db", latency_ms, disks, hedge)
    rng = random.Random(f"pipelined-kill:{case}")
    killed = 0
    speculative = abandoned = 0
    for i in range(KILLS):
        path = tmp_path / f"kill{i}.db"
        killed += _run_and_kill(path, case, int(rng.uniform(*window) * total))

        async def check(log: Path = path, full: bool = i == 0) -> tuple[int, int]:
            try:
                before = await load_events(log)
            except UnknownRunError:
                return 0, 0  # killed before its first commit: nothing to resume
            recorded = {e.sample_id for e in before if isinstance(e, SampleRequested)}
            finished = isinstance(before[-1], RunFinished)
            result = await resume_run(log)
            assert result.ok, result.reason
            events = await load_events(log)
            assert [e.winner for e in events if isinstance(e, StepDecided)] == winners
            assert [e.seq for e in events] == list(range(len(events)))
            requested = Counter(e.sample_id for e in events if isinstance(e, SampleRequested))
            assert max(requested.values()) == 1  # no sample id was requested twice ...
            after = events[len(before) :]
            # ... and the resumed part requested none the log had already recorded
            assert not recorded & {e.sample_id for e in after if isinstance(e, SampleRequested)}
            assert sum(isinstance(e, RunResumed) for e in events) == (0 if finished else 1)
            if full:
                verified = await verify_run(log)
                assert verified.ok, verified.divergence
            return (
                sum(isinstance(e, StepStarted) and e.speculative for e in events),
                sum(isinstance(e, StepAbandoned) for e in events),
            )

        spec, aban = anyio.run(check)
        speculative += spec
        abandoned += aban
    assert killed >= KILLS - 1, "runs finished before the kill: raise the disks"
    assert speculative > 0  # the runs really were pipelined
