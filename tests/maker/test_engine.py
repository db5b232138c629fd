"""The engine against scripted fakes: voting, red flags, retries, cancellation, determinism."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from events import (
    RedFlagged,
    RunFinished,
    RunStarted,
    SampleCancelled,
    SampleFailed,
    SampleReceived,
    SampleRequested,
    StateChanged,
    StepDecided,
    StepStarted,
    VoteCounted,
    event_tag,
)
from maker import (
    ClientError,
    Completion,
    Engine,
    Limits,
    Policy,
    RedFlagRules,
    SampleRequest,
    Scheduler,
    SimConfig,
    SimulatedModel,
)
from maker.tasks import Hanoi, optimal_moves

from ._fakes import Count, Reply, ScriptedClient, comparable, correct, read_events

pytestmark = pytest.mark.anyio


async def test_a_step_is_k_agreeing_votes_and_its_events_are_in_order(tmp_path: Path) -> None:
    client = ScriptedClient()
    async with Engine(log=tmp_path / "log.db", client=client) as engine:
        result = await engine.run(Count(3), policy=Policy(k=3), seed=1)
    assert result.ok
    assert (result.steps, result.samples, result.votes) == (3, 9, 9)
    assert result.final_state == 3
    events = await read_events(tmp_path / "log.db", result.run_id)
    assert [e.seq for e in events] == list(range(len(events)))
    step0 = [event_tag(type(e)) for e in events if getattr(e, "step", None) == 0]
    assert step0 == [
        "step_started",
        *["sample_requested"] * 3,
        *["sample_received", "vote_counted"] * 3,
        "step_decided",
        "state_changed",
    ]
    assert isinstance(events[0], RunStarted)
    assert events[0].task == "count"
    assert events[0].policy["k"] == 3
    assert isinstance(events[-1], RunFinished)
    assert events[-1].status == "succeeded"
    decided = [e for e in events if isinstance(e, StepDecided)]
    assert [d.winner for d in decided] == ["1", "2", "3"]
    assert all(d.votes == {d.winner: 3} for d in decided)


async def test_first_sample_of_a_step_runs_at_temperature_zero(tmp_path: Path) -> None:
    client = ScriptedClient()
    async with Engine(log=tmp_path / "log.db", client=client) as engine:
        await engine.run(Count(2), policy=Policy(k=2, temperature=0.7), seed=1)
    assert client.temperatures == {"0:0": 0.0, "0:1": 0.7, "1:0": 0.0, "1:1": 0.7}


async def test_red_flagged_samples_never_vote_and_are_replaced(tmp_path: Path) -> None:
    def script(request: SampleRequest, attempt: int) -> Reply:
        ordinal = int(request.sample_id.split(":")[1])
        if ordinal == 0:
            return "I think the answer is obvious."
        if ordinal == 1:
            return Completion(
                text="next = 99",
                finish_reason="stop",
                input_tokens=1,
                output_tokens=900,
                model="fake",
            )
        if ordinal == 2:
            return Completion(
                text="next = 98",
                finish_reason="length",
                input_tokens=1,
                output_tokens=10,
                model="fake",
            )
        return correct(request, attempt)

    client = ScriptedClient(script)
    async with Engine(log=tmp_path / "log.db", client=client) as engine:
        result = await engine.run(Count(1), policy=Policy(k=2), seed=1)
    assert result.ok
    assert result.red_flags_by_reason == {"malformed": 1, "too_long": 1, "truncated": 1}
    events = await read_events(tmp_path / "log.db", result.run_id)
    flags = {e.sample_id: e.reason for e in events if isinstance(e, RedFlagged)}
    assert flags == {"0:0": "malformed", "0:1": "too_long", "0:2": "truncated"}
    votes = [e for e in events if isinstance(e, VoteCounted)]
    assert [v.sample_id for v in votes] == ["0:3", "0:4"]
    assert all(v.candidate == "1" for v in votes)
    decided = next(e for e in events if isinstance(e, StepDecided))
    assert (decided.samples, decided.red_flags) == (5, 3)


async def test_user_red_flag_checks_run_before_parsing(tmp_path: Path) -> None:
    def no_shouting(completion: Completion) -> str | None:
        return "shouting" if "!" in completion.text else None

    def script(request: SampleRequest, attempt: int) -> Reply:
        if request.sample_id == "0:0":
            return "next = 1!"
        return correct(request, attempt)

    rules = RedFlagRules(checks=(no_shouting,))
    async with Engine(log=tmp_path / "log.db", client=ScriptedClient(script)) as engine:
        result = await engine.run(Count(1), policy=Policy(k=1, red_flags=rules), seed=1)
    assert result.red_flags_by_reason == {"shouting": 1}
    events = await read_events(tmp_path / "log.db", result.run_id)
    started = events[0]
    assert isinstance(started, RunStarted)
    assert started.policy["red_flags"]["checks"] == ["no_shouting"]


async def test_the_winner_must_lead_by_k_not_merely_reach_k(tmp_path: Path) -> None:
    # Votes arrive A B A B A A: A reaches 3 at the fifth vote but leads by only 1 there.
    order = {0: "1", 1: "7", 2: "1", 3: "7", 4: "1", 5: "1", 6: "1"}

    def script(request: SampleRequest, attempt: int) -> Reply:
        return f"next = {order[int(request.sample_id.split(':')[1])]}"

    async with Engine(log=tmp_path / "log.db", client=ScriptedClient(script)) as engine:
        result = await engine.run(Count(1), policy=Policy(k=2), seed=1)
    events = await read_events(tmp_path / "log.db", result.run_id)
    tallies = [e.tally for e in events if isinstance(e, VoteCounted)]
    assert tallies[-1] == {"1": 4, "7": 2}
    assert len(tallies) == 6
    assert result.ok


async def test_surplus_samples_are_cancelled_and_recorded_when_a_step_is_decided(
    tmp_path: Path,
) -> None:
    client = ScriptedClient(hold={"0:2", "0:3"})
    policy = Policy(k=2, speculative=2)
    async with Engine(log=tmp_path / "log.db", client=client) as engine:
        result = await engine.run(Count(1), policy=policy, seed=1)
        assert engine.statistics().in_flight == 0
    assert result.ok
    assert sorted(client.cancelled) == ["0:2", "0:3"]
    assert result.cancelled_samples == 2
    events = await read_events(tmp_path / "log.db", result.run_id)
    cancelled = [e.sample_id for e in events if isinstance(e, SampleCancelled)]
    assert sorted(cancelled) == ["0:2", "0:3"]
    decided_at = next(i for i, e in enumerate(events) if isinstance(e, StepDecided))
    assert all(i > decided_at for i, e in enumerate(events) if isinstance(e, SampleCancelled))


async def test_a_step_that_cannot_converge_fails_the_run_at_the_sample_cap(tmp_path: Path) -> None:
    def scattered(request: SampleRequest, attempt: int) -> Reply:
        return f"next = {1000 + int(request.sample_id.split(':')[1])}"

    async with Engine(log=tmp_path / "log.db", client=ScriptedClient(scattered)) as engine:
        result = await engine.run(Count(3), policy=Policy(k=3, max_samples_per_step=40), seed=1)
    assert result.status == "failed"
    assert "step 0 undecided after 40 samples" in result.reason
    assert result.samples == 40
    events = await read_events(tmp_path / "log.db", result.run_id)
    assert sum(isinstance(e, SampleRequested) for e in events) == 40
    last = events[-1]
    assert isinstance(last, RunFinished)
    assert (last.status, last.reason) == ("failed", result.reason)


async def test_a_run_past_the_tasks_step_budget_fails(tmp_path: Path) -> None:
    def stuck(request: SampleRequest, attempt: int) -> Reply:
        return "next = 0"

    class Budgeted(Count):
        def max_steps(self) -> int:
            return 4

    async with Engine(log=tmp_path / "log.db", client=ScriptedClient(stuck)) as engine:
        result = await engine.run(Budgeted(2), policy=Policy(k=1), seed=1)
    assert result.status == "failed"
    assert result.steps == 4
    assert "budget of 4 steps" in result.reason


async def test_transport_failures_are_retried_as_the_same_sample_and_never_vote(
    tmp_path: Path,
) -> None:
    def flaky(request: SampleRequest, attempt: int) -> Reply:
        if request.sample_id == "0:1" and attempt < 3:
            return ClientError("busy", kind="rate_limited", retryable=True)
        return correct(request, attempt)

    client = ScriptedClient(flaky)
    async with Engine(log=tmp_path / "log.db", client=client) as engine:
        result = await engine.run(Count(1), policy=Policy(k=2), seed=1)
        assert engine.statistics().retries == 2
    assert result.ok
    assert result.failures == 2
    assert client.started.count(("0:1", 3)) == 1
    events = await read_events(tmp_path / "log.db", result.run_id)
    failed = [e for e in events if isinstance(e, SampleFailed)]
    assert [(f.sample_id, f.attempt, f.error_kind, f.retryable) for f in failed] == [
        ("0:1", 1, "rate_limited", True),
        ("0:1", 2, "rate_limited", True),
    ]
    requested = Counter(e.sample_id for e in events if isinstance(e, SampleRequested))
    assert requested == {"0:0": 1, "0:1": 1}
    assert sum(isinstance(e, VoteCounted) for e in events) == 2


async def test_a_failure_that_is_not_retryable_fails_the_run_with_a_clear_reason(
    tmp_path: Path,
) -> None:
    def broken(request: SampleRequest, attempt: int) -> Reply:
        return ClientError("invalid api key", kind="auth", retryable=False)

    async with Engine(log=tmp_path / "log.db", client=ScriptedClient(broken)) as engine:
        result = await engine.run(Count(1), policy=Policy(k=2), seed=1)
    assert result.status == "failed"
    assert result.reason == "sample 0:0 failed after 1 attempt: auth: invalid api key"


async def test_retries_are_bounded_by_max_attempts(tmp_path: Path) -> None:
    def down(request: SampleRequest, attempt: int) -> Reply:
        return ClientError("unavailable", kind="server_error", retryable=True)

    async with Engine(log=tmp_path / "log.db", client=ScriptedClient(down)) as engine:
        result = await engine.run(Count(1), policy=Policy(k=1, max_attempts=3), seed=1)
    assert result.status == "failed"
    assert "after 3 attempts" in result.reason
    assert result.failures == 3


async def test_cancelling_a_run_records_it_as_cancelled_with_its_samples(tmp_path: Path) -> None:
    client = ScriptedClient(hold={"2:0", "2:1"})
    async with Engine(log=tmp_path / "log.db", client=client) as engine:
        async with anyio.create_task_group() as tg:
            run_ids: list[str] = []

            def remember(event: object) -> None:
                if isinstance(event, RunStarted):
                    run_ids.append(event.run_id)

            policy = Policy(k=2)
            tg.start_soon(lambda: engine.run(Count(5), policy=policy, seed=1, sinks=[remember]))
            await client.all_held.wait()
            tg.cancel_scope.cancel()
        assert engine.statistics() == engine.statistics()._replace(runs_active=0, in_flight=0)
    events = await read_events(tmp_path / "log.db", run_ids[0])
    last = events[-1]
    assert isinstance(last, RunFinished)
    assert (last.status, last.steps) == ("cancelled", 2)
    cancelled = sorted(e.sample_id for e in events if isinstance(e, SampleCancelled))
    assert cancelled == ["2:0", "2:1"]
    assert sorted(client.cancelled) == ["2:0", "2:1"]


async def test_an_error_in_task_code_is_recorded_then_raised(tmp_path: Path) -> None:
    class Broken(Count):
        def apply(self, state: int, answer: int) -> int:
            raise ZeroDivisionError("boom")

    async with Engine(log=tmp_path / "log.db", client=ScriptedClient()) as engine:
        with pytest.raises(ZeroDivisionError):
            await engine.run(Broken(2), policy=Policy(k=1), seed=1, run_id="broken")
    events = await read_events(tmp_path / "log.db", "broken")
    last = events[-1]
    assert isinstance(last, RunFinished)
    assert (last.status, last.reason) == ("failed", "ZeroDivisionError: boom")


async def test_the_engine_must_be_entered(tmp_path: Path) -> None:
    engine = Engine(log=tmp_path / "log.db", client=ScriptedClient())
    with pytest.raises(RuntimeError, match="async with"):
        await engine.run(Count(1))


async def test_same_seed_same_events_and_another_seed_differs(tmp_path: Path) -> None:
    # A noisy model, so that the seed decides a lot: red flags, rivals, close votes.
    config = SimConfig(p=0.8, malformed_rate=0.05, overlong_rate=0.05, hard_fraction=0.05)

    runs: list[int] = []

    async def once(seed: int) -> list[dict[str, object]]:
        runs.append(seed)
        path = tmp_path / f"{seed}-{len(runs)}.db"
        async with Engine(log=path, client=SimulatedModel(config)) as engine:
            result = await engine.run(Hanoi(5), policy=Policy(k=3), seed=seed)
        return [comparable(e) for e in await read_events(path, result.run_id)]

    first, again, other = await once(7), await once(7), await once(8)
    assert first == again
    assert first != other
    assert any(e["type"] == "red_flagged" for e in first)


async def test_hanoi_ten_disks_on_the_simulated_model_follows_the_optimal_solution(
    tmp_path: Path,
) -> None:
    client = SimulatedModel(SimConfig(p=0.99))
    async with Engine(log=tmp_path / "log.db", client=client) as engine:
        result = await engine.run(Hanoi(10), policy=Policy(k=4), seed=3)
    assert result.ok, result.reason
    assert result.steps == 1023
    events = await read_events(tmp_path / "log.db", result.run_id)
    moves = [tuple(e.state["previous_move"]) for e in events if isinstance(e, StateChanged)]
    assert moves == optimal_moves(10)
    assert result.final_state["pegs"] == [[], [], list(range(10, 0, -1))]
    steps_started = [e for e in events if isinstance(e, StepStarted)]
    assert len(steps_started) == 1023
    received = sum(isinstance(e, SampleReceived) for e in events)
    assert received == result.samples - result.cancelled_samples


class AtOnceClient(ScriptedClient):
    """The scripted client that can also answer without awaiting, as the in-process model
    does; a held sample still has to wait, so it is made in a task."""

    def __init__(self, script: Callable[[SampleRequest, int], Reply] = correct, **kw: Any):
        super().__init__(script, **kw)
        self.at_once: list[tuple[str, int]] = []

    async def complete(self, request: SampleRequest) -> Completion:
        # Defined here too: the scheduler trusts complete_now only beside its own complete.
        return await super().complete(request)

    def complete_now(self, request: SampleRequest) -> Completion | None:
        if request.sample_id in self.hold:
            return None
        attempt = self._attempts.get(request.sample_id, 0) + 1
        self._attempts[request.sample_id] = attempt
        self.at_once.append((request.sample_id, attempt))
        reply = self.script(request, attempt)
        if isinstance(reply, ClientError):
            raise reply
        if isinstance(reply, Completion):
            return reply
        return Completion(
            text=reply, finish_reason="stop", input_tokens=12, output_tokens=30, model="fake"
        )


def noisy(request: SampleRequest, attempt: int) -> Reply:
    """Transport failures, red flags and wrong votes, as a function of the sample id only."""
    ordinal = int(request.sample_id.split(":")[1])
    current = int(request.user.rsplit("=", 1)[1])
    if (request.step + ordinal) % 4 == 1 and attempt < 3:
        return ClientError("busy", kind="rate_limited", retryable=True)
    if (request.step * 3 + ordinal) % 7 == 2:
        return "I am not sure."
    if (request.step + 2 * ordinal) % 5 == 3:
        return f"next = {current + 2}"
    return correct(request, attempt)


@pytest.mark.parametrize("speculative", [0, 2])
async def test_samples_answered_at_once_record_what_sample_tasks_record(
    tmp_path: Path, speculative: int
) -> None:
    # Retries without backoff, so that every attempt of the at-once client is made at once.
    limits = Limits(backoff_base_s=0.0)
    policy = Policy(k=2, speculative=speculative)
    runs = []
    for name, client in (("tasks", ScriptedClient(noisy)), ("at_once", AtOnceClient(noisy))):
        path = tmp_path / f"{name}.db"
        async with Engine(log=path, client=client, scheduler=Scheduler(limits)) as engine:
            result = await engine.run(Count(8), policy=policy, seed=5)
            assert engine.statistics().in_flight == 0
        runs.append(
            (client, result, [comparable(e) for e in await read_events(path, result.run_id)])
        )
    (tasks, by_tasks, events), (at_once, by_calls, same) = runs
    assert same == events
    assert (by_calls.status, by_calls.steps, by_calls.samples) == (
        by_tasks.status,
        by_tasks.steps,
        by_tasks.samples,
    )
    assert {e["type"] for e in events} >= {"sample_failed", "red_flagged", "vote_counted"}
    assert tasks.started
    assert not at_once.started
    assert isinstance(at_once, AtOnceClient)
    assert at_once.at_once == tasks.started


async def test_a_sample_that_cannot_answer_at_once_runs_in_a_task_and_is_cancelled_unused(
    tmp_path: Path,
) -> None:
    client = AtOnceClient(hold={"0:2", "0:3"})
    async with Engine(log=tmp_path / "log.db", client=client) as engine:
        result = await engine.run(Count(2), policy=Policy(k=2, speculative=2), seed=1)
        assert engine.statistics().in_flight == 0
    assert result.ok
    assert sorted(client.cancelled) == ["0:2", "0:3"]
    assert [s for s, _ in client.at_once] == ["0:0", "0:1", "1:0", "1:1", "1:2", "1:3"]
    events = await read_events(tmp_path / "log.db", result.run_id)
    cancelled = [(e.sample_id, e.reason) for e in events if isinstance(e, SampleCancelled)]
    assert sorted(cancelled) == [(s, "decided") for s in ("0:2", "0:3", "1:2", "1:3")]


async def test_a_run_answered_at_once_still_yields_and_is_cancelled_between_calls(
    tmp_path: Path,
) -> None:
    # No sample of this run ever waits; the step loop's own checkpoint is where it stops.
    with anyio.CancelScope() as scope:

        def stop(event: object) -> None:
            if isinstance(event, StepDecided) and event.step == 3:
                scope.cancel()

        async with Engine(log=tmp_path / "log.db", client=AtOnceClient()) as engine:
            await engine.run(Count(10), policy=Policy(k=2), seed=1, run_id="r", sinks=[stop])
    events = await read_events(tmp_path / "log.db", "r")
    tail = [(event_tag(type(e)), getattr(e, "sample_id", None)) for e in events[-6:]]
    assert tail == [
        ("step_started", None),
        ("sample_requested", "4:0"),
        ("sample_requested", "4:1"),
        ("sample_cancelled", "4:0"),
        ("sample_cancelled", "4:1"),
        ("run_finished", None),
    ]
    last = events[-1]
    assert isinstance(last, RunFinished)
    assert (last.status, last.steps) == ("cancelled", 4)
    assert {e.reason for e in events if isinstance(e, SampleCancelled)} == {"run_cancelled"}
