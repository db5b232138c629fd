"""Deterministic re-execution and resume, on real logs of both built-in tasks."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from events import (
    AnyEvent,
    EventLog,
    RedFlagged,
    RunFinished,
    RunResumed,
    RunStarted,
    SampleCancelled,
    SampleFailed,
    SampleReceived,
    SampleRequested,
    StateChanged,
    StepDecided,
    VoteCounted,
)
from maker import (
    ClientError,
    Engine,
    MakerError,
    Policy,
    RedFlag,
    SampleRequest,
    SimConfig,
    SimulatedModel,
)
from maker.tasks import Arithmetic, Hanoi, HanoiAnswer
from replay import load_events, resume_run, verify_run

from ..maker._fakes import Count, Reply, ScriptedClient, correct

pytestmark = pytest.mark.anyio

NOISY = SimConfig(p=0.85, malformed_rate=0.05, overlong_rate=0.05, hard_fraction=0.02)


async def record(path: Path, task: Any, *, seed: int, policy: Policy | None = None) -> str:
    async with Engine(log=path, client=SimulatedModel(NOISY)) as engine:
        result = await engine.run(task, policy=policy or Policy(k=3), seed=seed)
    return result.run_id


def winners(events: list[AnyEvent]) -> list[str]:
    return [e.winner for e in events if isinstance(e, StepDecided)]


def assert_sound(events: list[AnyEvent]) -> None:
    """A log of one run: contiguous seqs, and no sample requested or answered twice."""
    assert [e.seq for e in events] == list(range(len(events)))
    requested = Counter(e.sample_id for e in events if isinstance(e, SampleRequested))
    received = Counter(e.sample_id for e in events if isinstance(e, SampleReceived))
    assert max(requested.values()) == 1
    assert max(received.values()) == 1


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_verify_reproduces_hanoi_and_arithmetic_runs(tmp_path: Path, seed: int) -> None:
    for name, task in (("h", Hanoi(5)), ("a", Arithmetic(steps=30, digits=5, seed=seed))):
        path = tmp_path / f"{name}.db"
        policy = Policy(k=3, speculative=1)  # speculative samples give cancellations to replay
        run_id = await record(path, task, seed=seed, policy=policy)
        events = await load_events(path)
        assert any(isinstance(e, RedFlagged) for e in events)
        assert any(isinstance(e, SampleCancelled) for e in events)
        result = await verify_run(path, run_id)
        assert result.ok, result.divergence
        assert result.checked == len(events)


async def test_verify_reproduces_transport_failures_and_their_backoff(tmp_path: Path) -> None:
    def flaky(request: SampleRequest, attempt: int) -> Reply:
        if int(request.sample_id.split(":")[1]) % 3 == 1 and attempt < 3:
            return ClientError("busy", kind="rate_limited", retryable=True, retry_after=0.001)
        return correct(request, attempt)

    path = tmp_path / "flaky.db"
    async with Engine(log=path, client=ScriptedClient(flaky)) as engine:
        result = await engine.run(Count(4), policy=Policy(k=2, speculative=1), seed=3)
    events = await load_events(path)
    assert sum(isinstance(e, SampleFailed) for e in events) >= 4
    verified = await verify_run(path, task=Count(4))
    assert verified.ok, verified.divergence
    assert result.ok


async def test_a_changed_parser_fails_at_the_first_sample_it_reads_differently(
    tmp_path: Path,
) -> None:
    path = tmp_path / "h.db"
    await record(path, Hanoi(4), seed=5)
    events = await load_events(path)

    class NoDiskThree(Hanoi):
        def parse(self, text: str) -> HanoiAnswer:
            answer = super().parse(text)
            if answer.move[0] == 3:
                raise RedFlag("malformed", "disk 3 is not allowed")
            return answer

    strict = Hanoi(4)
    first = next(
        e
        for e in events
        if isinstance(e, SampleReceived) and _parses(strict, e.text) and _move(strict, e.text) == 3
    )
    result = await verify_run(path, task=NoDiskThree(4))
    assert not result.ok
    assert result.divergence is not None
    # The sample is received as recorded; its judgement (the next event) is what differs.
    assert result.divergence.seq == first.seq + 1
    assert result.divergence.expected["type"] == "vote_counted"
    assert result.divergence.got is not None
    assert result.divergence.got["type"] == "red_flagged"


@dataclass(frozen=True)
class _Counted:
    count: int
    of: int


async def test_events_equal_only_as_json_reproduce_and_a_changed_field_is_named(
    tmp_path: Path,
) -> None:
    # A task that gives its state as a dataclass: the log holds its JSON object, so the
    # re-executed event equals the recorded one only as JSON, which is what a re-execution
    # must reproduce.
    class Counted(Count):
        def state_to_json(self, state: int) -> Any:
            return {"state": _Counted(state, self.goal)}

    path = tmp_path / "counted.db"
    async with Engine(log=path, client=ScriptedClient(correct)) as engine:
        await engine.run(Counted(4), policy=Policy(k=2), seed=1)
    verified = await verify_run(path, task=Counted(4))
    assert verified.ok, verified.divergence

    class Miscounted(Counted):
        def state_to_json(self, state: int) -> Any:
            return {"state": _Counted(state, self.goal + (state == 2))}

    result = await verify_run(path, task=Miscounted(4))
    assert result.divergence is not None
    changed = next(
        e for e in await load_events(path) if isinstance(e, StateChanged) and e.step == 1
    )
    assert result.divergence.seq == changed.seq
    assert str(result.divergence) == (
        f"replay diverges at seq {changed.seq}: state_changed differs in state"
    )
    assert result.divergence.got is not None
    assert result.divergence.got["state"] == {"state": {"count": 2, "of": 5}}


def _parses(task: Hanoi, text: str) -> bool:
    try:
        task.parse(text)
    except RedFlag:
        return False
    return True


def _move(task: Hanoi, text: str) -> int:
    return task.parse(text).move[0]


async def test_a_changed_policy_fails_where_behaviour_changes(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    await record(path, Hanoi(4), seed=6)
    events = await load_events(path)
    result = await verify_run(path, policy=Policy(k=4))
    assert not result.ok
    assert result.divergence is not None
    # With k = 4 the first step asks for a fourth sample where the log has its first answer.
    fourth_request = [e for e in events if isinstance(e, SampleRequested)][3]
    assert result.divergence.got is not None
    assert result.divergence.got["type"] == "sample_requested"
    assert result.divergence.seq < fourth_request.seq
    same = await verify_run(path, policy=Policy(k=3))
    assert same.ok


async def _copy_prefix(events: list[AnyEvent], cut: int, path: Path) -> None:
    async with EventLog(path) as log:
        for event in events[:cut]:
            log.append(event)


async def test_a_crashed_run_verifies_up_to_where_it_stopped_wherever_that_was(
    tmp_path: Path,
) -> None:
    # Cut after every event of a run, samples in flight at most cuts: the verification
    # reproduces every recorded event and ends there, also where it waits for outcomes the
    # log does not hold (it used to wait for them for ever).
    full = tmp_path / "full.db"
    await record(full, Hanoi(2), seed=3, policy=Policy(k=2, speculative=1))
    events = await load_events(full)
    with anyio.fail_after(60):
        for cut in range(1, len(events)):
            crashed = tmp_path / f"cut{cut}.db"
            await _copy_prefix(events, cut, crashed)
            result = await verify_run(crashed)
            assert result.ok, (cut, result.divergence)
            assert result.checked == result.recorded == cut


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.2, 0.5, 0.77, 0.999])
async def test_resume_after_a_crash_continues_to_the_same_decisions(
    tmp_path: Path, fraction: float
) -> None:
    full = tmp_path / "full.db"
    await record(full, Hanoi(5), seed=9)
    events = await load_events(full)
    cut = max(1, int(len(events) * fraction))
    crashed = tmp_path / "crashed.db"
    await _copy_prefix(events, cut, crashed)

    result = await resume_run(crashed)
    assert result.ok
    resumed = await load_events(crashed)
    assert winners(resumed) == winners(events)
    assert_sound(resumed)
    markers = [e for e in resumed if isinstance(e, RunResumed)]
    assert len(markers) == 1
    assert markers[0].seq == cut
    # Everything before the cut is untouched, byte for byte.
    assert resumed[:cut] == events[:cut]
    assert (await verify_run(crashed)).ok


async def test_resume_rebuilds_a_preset_whose_values_changed_since_the_run(tmp_path: Path) -> None:
    # A run recorded under a preset name whose values have since changed resumes with the
    # values it recorded, still under that name, so its run_started reproduces.
    model = SimulatedModel(NOISY)
    model.preset = "paper"
    full = tmp_path / "full.db"
    async with Engine(log=full, client=model) as engine:
        await engine.run(Hanoi(4), policy=Policy(k=3), seed=5)
    events = await load_events(full)
    started = events[0]
    assert isinstance(started, RunStarted)
    assert started.model_params["preset"] == "paper"
    assert started.model_params["p"] == NOISY.p != SimConfig().p
    crashed = tmp_path / "crashed.db"
    await _copy_prefix(events, len(events) // 2, crashed)

    result = await resume_run(crashed)
    assert result.ok
    resumed = await load_events(crashed)
    assert winners(resumed) == winners(events)
    assert (await verify_run(crashed)).ok


async def test_resume_after_a_cancellation_continues_the_same_run(tmp_path: Path) -> None:
    reference = tmp_path / "ref.db"
    await record(reference, Hanoi(5), seed=4)
    expected = winners(await load_events(reference))

    path = tmp_path / "cancelled.db"
    steps_seen = 0
    async with Engine(log=path, client=SimulatedModel(NOISY)) as engine:
        with anyio.CancelScope() as scope:

            def stop_midway(event: object) -> None:
                nonlocal steps_seen
                if isinstance(event, StepDecided):
                    steps_seen += 1
                    if steps_seen == 11:
                        scope.cancel()

            await engine.run(Hanoi(5), policy=Policy(k=3), seed=4, sinks=[stop_midway])
    events = await load_events(path)
    last = events[-1]
    assert isinstance(last, RunFinished)
    assert last.status == "cancelled"

    result = await resume_run(path)
    assert result.ok
    resumed = await load_events(path)
    assert winners(resumed) == expected
    assert_sound(resumed)
    assert (await verify_run(path)).ok


async def test_resuming_a_finished_run_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "done.db"
    run_id = await record(path, Arithmetic(steps=10, seed=2), seed=1)
    before = await load_events(path)
    result = await resume_run(path)
    assert (result.run_id, result.status, result.steps) == (run_id, "succeeded", 10)
    assert await load_events(path) == before
    # The report is the recorded run's, its usage included.
    received = [e for e in before if isinstance(e, SampleReceived)]
    assert result.input_tokens == sum(e.input_tokens for e in received) > 0
    assert result.output_tokens == sum(e.output_tokens for e in received) > 0
    assert result.cost_usd == pytest.approx(sum(e.cost_usd for e in received))


async def test_resume_refuses_a_log_that_does_not_replay(tmp_path: Path) -> None:
    full = tmp_path / "full.db"
    await record(full, Hanoi(4), seed=2)
    events = await load_events(full)
    crashed = tmp_path / "crashed.db"
    await _copy_prefix(events, len(events) // 2, crashed)

    class Other(Hanoi):
        def parse(self, text: str) -> HanoiAnswer:
            raise RedFlag("malformed", "this parser rejects everything")

    with pytest.raises(MakerError, match=re.escape("replay diverges at seq")):
        await resume_run(crashed, task=Other(4))
    assert len(await load_events(crashed)) == len(events) // 2  # nothing appended


async def test_votes_in_a_resumed_run_come_from_the_log_not_the_model(tmp_path: Path) -> None:
    full = tmp_path / "full.db"
    await record(full, Hanoi(4), seed=8)
    events = await load_events(full)
    cut = len(events) // 2
    crashed = tmp_path / "crashed.db"
    await _copy_prefix(events, cut, crashed)
    answered = {e.sample_id for e in events[:cut] if isinstance(e, SampleReceived)}

    asked: list[str] = []

    class Spy(SimulatedModel):
        async def complete(self, request: SampleRequest) -> Any:
            asked.append(request.sample_id)
            return await super().complete(request)

    await resume_run(crashed, client=Spy(NOISY))
    assert asked
    assert not answered & set(asked)
    resumed = await load_events(crashed)
    votes = [e for e in resumed if isinstance(e, VoteCounted)]
    assert votes


async def test_a_calibration_run_is_refused_by_replay_and_resume(tmp_path: Path) -> None:
    from maker import calibrate

    path = tmp_path / "cal.db"
    report = await calibrate(Hanoi(4), [SimulatedModel(NOISY)], samples=5, seed=1, log=path)
    run_id = report.models[0].run_id
    for call in (verify_run, resume_run):
        with pytest.raises(MakerError, match="is a calibration"):
            await call(path, run_id)
