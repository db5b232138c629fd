"""The fold: a run's figures and per-step records, rebuilt from its log alone."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from events import (
    AnyEvent,
    RunFinished,
    RunResumed,
    SampleReceived,
    StateChanged,
    StepDecided,
    StepStarted,
)
from maker import ClientError, Engine, Policy, SampleRequest, Scheduler
from maker.tasks import Arithmetic, Hanoi
from replay import StepRecord, summarize

from ..events._factory import run_events
from ..maker._fakes import Count, Reply, ScriptedClient, correct
from ._logs import load, record


@pytest.mark.parametrize(
    ("name", "policy"),
    [("hanoi", Policy(k=2)), ("arithmetic", Policy(k=2, speculative=2))],
)
def test_totals_equal_the_engines_result(tmp_path: Path, name: str, policy: Policy) -> None:
    def make() -> Any:
        return Hanoi(4) if name == "hanoi" else Arithmetic(steps=12, digits=4, seed=3)

    path = tmp_path / "log.db"
    results = record(path, make, [1, 2, 3], policy=policy)
    flagged = Counter[str]()
    for result in results:
        s = summarize(load(path, result.run_id))
        assert s.run_id == result.run_id
        assert s.status == result.status
        assert s.reason == result.reason
        assert s.steps == result.steps
        assert s.samples == result.samples
        assert s.votes == result.votes
        assert dict(s.red_flags) == result.red_flags_by_reason
        assert s.failures == result.failures
        assert s.cancelled == result.cancelled_samples
        assert s.final_state == result.final_state
        assert s.max_samples_per_step == result.max_samples_in_step
        assert s.k == result.k == policy.k
        assert s.wall_s == pytest.approx(result.wall_s)
        assert s.policy == policy.describe()
        assert s.task == make().name
        assert s.initial_state == make().state_to_json(make().initial_state())
        flagged.update(s.red_flags)
        # The per-step records add up to the same totals.
        records = s.step_records
        assert [r.step for r in records] == list(range(result.steps))
        assert sum(r.samples for r in records) == result.samples
        assert sum(r.red_flags for r in records) == result.red_flags
        assert sum(r.cancelled for r in records) == result.cancelled_samples
        assert sum(r.received for r in records) == s.received
        assert records[-1].state == result.final_state
        json = s.to_json()
        assert json["red_flags"] == result.red_flags
        assert json["cancelled_samples"] == result.cancelled_samples
    # The runs exercised what the fold counts.
    assert sum(flagged.values()) > 0
    if policy.speculative:
        assert any(summarize(load(path, r.run_id)).cancelled for r in results)


def test_step_records_follow_the_events(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    (result,) = record(path, lambda: Hanoi(4), [7])
    events = load(path, result.run_id)
    s = summarize(events)
    decided = {e.step: e for e in events if isinstance(e, StepDecided)}
    started = {e.step: e.state for e in events if isinstance(e, StepStarted)}
    changed = {e.step: e.state for e in events if isinstance(e, StateChanged)}
    received = Counter(e.step for e in events if isinstance(e, SampleReceived))
    assert len(s.step_records) == len(decided) == result.steps
    for record_ in s.step_records:
        d = decided[record_.step]
        assert record_.decided
        assert (record_.winner, record_.votes, record_.samples) == (d.winner, d.votes, d.samples)
        assert record_.red_flags == d.red_flags
        assert record_.received == received[record_.step]
        assert record_.state == changed[record_.step]
        # The state after a step is the state the next step starts from.
        if record_.step + 1 in started:
            assert record_.state == started[record_.step + 1]
        # Under first-to-ahead-by-k the winner leads every rival by exactly k at the decision.
        assert record_.winner is not None
        rivals = [n for c, n in record_.votes.items() if c != record_.winner]
        assert record_.votes[record_.winner] - max(rivals, default=0) == result.k
        assert msgspec.json.decode(msgspec.json.encode(record_.to_json())) == record_.to_json()


def test_per_step_off_keeps_the_totals(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    (result,) = record(path, lambda: Hanoi(3), [2])
    events = load(path, result.run_id)
    full, quick = summarize(events), summarize(events, per_step=False)
    assert quick.step_records == []
    assert len(full.step_records) == result.steps
    assert quick.to_json() == full.to_json()


def test_failures_are_counted_by_kind(tmp_path: Path) -> None:
    def flaky(request: SampleRequest, attempt: int) -> Reply:
        ordinal = int(request.sample_id.split(":")[1])
        if ordinal == 1 and attempt == 1:
            return ClientError("busy", kind="rate_limited", retryable=True)
        if ordinal == 0 and attempt == 1 and request.step % 2 == 0:
            return ClientError("reset", kind="connection", retryable=True)
        return correct(request, attempt)

    async def no_wait(seconds: float) -> None:
        pass

    path = tmp_path / "log.db"

    async def go() -> str:
        scheduler = Scheduler(sleep=no_wait)
        async with Engine(log=path, client=ScriptedClient(flaky), scheduler=scheduler) as engine:
            result = await engine.run(Count(4), policy=Policy(k=2), seed=1)
        assert result.ok
        assert result.failures == 6
        return result.run_id

    run_id = anyio.run(go)
    s = summarize(load(path, run_id))
    assert s.failures == 6
    assert dict(s.failures_by_kind) == {"rate_limited": 4, "connection": 2}
    assert [r.failures for r in s.step_records] == [2, 1, 2, 1]
    assert s.to_json()["failures_by_kind"] == {"rate_limited": 4, "connection": 2}


def _with_costs(events: list[AnyEvent]) -> list[AnyEvent]:
    out: list[AnyEvent] = []
    for event in events:
        if isinstance(event, SampleReceived):
            event = msgspec.structs.replace(event, cost_usd=0.25 if event.step % 2 else 0.5)
        out.append(event)
    return out


def test_cost_is_summed_per_run_and_per_step() -> None:
    events = _with_costs(run_events("r", 4, samples_per_step=3))
    s = summarize(events)
    assert [r.cost_usd for r in s.step_records] == [1.5, 0.75, 1.5, 0.75]
    assert s.cost_usd == pytest.approx(4.5)
    assert s.to_json()["cost_usd"] == pytest.approx(4.5)


def test_a_resumed_run_is_running_until_it_finishes_again() -> None:
    first = run_events("r", 3, finished=False)
    cancelled = RunFinished(
        run_id="r", seq=len(first), ts=10.0, status="cancelled", steps=3, samples=9, wall_s=2.0
    )
    resumed = RunResumed(run_id="r", seq=len(first) + 1, ts=11.0, replayed=len(first))
    rest = run_events("r", 2, first_seq=len(first) + 2, first_step=3, start=False, finished=False)
    done = RunFinished(
        run_id="r",
        seq=rest[-1].seq + 1,
        ts=20.0,
        status="succeeded",
        steps=5,
        samples=15,
        wall_s=3.0,
    )
    s = summarize([*first, cancelled])
    assert s.status == "cancelled"
    s = summarize([*first, cancelled, resumed, *rest])
    assert (s.status, s.reason, s.resumed) == ("running", "", 1)
    s = summarize([*first, cancelled, resumed, *rest, done])
    assert (s.status, s.resumed, s.steps) == ("succeeded", 1, 5)
    # Each session that ended cleanly adds its engine time.
    assert s.wall_s == pytest.approx(5.0)
    assert [r.step for r in s.step_records] == [0, 1, 2, 3, 4]
    assert all(isinstance(r, StepRecord) and r.decided for r in s.step_records)
