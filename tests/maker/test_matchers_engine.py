"""Matchers in runs: on answers written in several forms a matcher decides steps with fewer
samples (seeded Monte Carlo against Eq 16), the log records keys and the answers applied, a
replay reproduces the run under its recorded matcher, and a re-vote changes the matcher."""

from __future__ import annotations

import json
import math
import random
import statistics
from collections.abc import Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from events import (
    AnyEvent,
    EventLog,
    RunStarted,
    StateChanged,
    StepDecided,
    StepStarted,
    VoteCounted,
    canonical_json,
    encode,
)
from maker import (
    Engine,
    Policy,
    RunResult,
    SimConfig,
    SimulatedModel,
    expected_votes_per_step,
)
from maker.tasks import Arithmetic
from maker.tasks._arithmetic_sim import ArithmeticSimulator, ArithQuestion, written_forms
from replay import resume_run, revote, verify_run

from ._cli import maker, one_error_line

# One rival per state and no red flags: with the matcher every step is then exactly the race of
# Eq 16 (the right value against one wrong one, each in any of its forms), whose expected length
# expected_votes_per_step gives.
P = 0.97
CLEAN = SimConfig(p=P, rivals=1, hard_fraction=0.0, malformed_rate=0.0, overlong_rate=0.0, salt=3)
STEPS = 400
K = 3


def free_task(steps: int = STEPS) -> Arithmetic:
    return Arithmetic(steps=steps, digits=4, seed=5, free_form=True)


def run_into(
    path: Path, task: Arithmetic, policies: Sequence[Policy], *, seed: int = 7
) -> list[RunResult]:
    async def go() -> list[RunResult]:
        async with Engine(log=path, client=SimulatedModel(CLEAN)) as engine:
            return [await engine.run(task, policy=p, seed=seed) for p in policies]

    return anyio.run(go)


def events_of(path: Path, run_id: str) -> list[AnyEvent]:
    async def go() -> list[AnyEvent]:
        async with EventLog(path, mode="r") as log:
            return [e async for e in log.read(run_id)]

    return anyio.run(go)


def per_step_samples(events: list[AnyEvent]) -> list[int]:
    return [e.samples for e in events if isinstance(e, StepDecided)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunResult, RunResult]:
    path = tmp_path_factory.mktemp("matchers") / "runs.db"
    exact, number = run_into(path, free_task(), [Policy(k=K), Policy(k=K, matcher="number")])
    return path, exact, number


def test_the_simulator_writes_a_result_in_several_forms() -> None:
    sim = ArithmeticSimulator()
    task = free_task()
    prompt = task.prompt(task.initial_state())
    question = sim.read_prompt(prompt.system, prompt.user)
    assert isinstance(question, ArithQuestion)
    assert question.free
    right = sim.oracle(question)
    texts = {sim.render(right, random.Random(seed)).splitlines()[-1] for seed in range(200)}
    assert texts == {f"result = {form}" for form in written_forms(int(right))}
    # Each parses to itself, and applies as the same value.
    answers = {task.parse(text) for text in texts}
    assert len(answers) == 4
    states = {task.apply(task.initial_state(), a) for a in answers}
    assert len(states) == 1
    # A strict prompt of the same task is still answered in digits only.
    strict = Arithmetic(steps=STEPS, digits=4, seed=5)
    sp = strict.prompt(strict.initial_state())
    strict_q = sim.read_prompt(sp.system, sp.user)
    assert strict_q is not None
    assert not strict_q.free
    assert sim.render(sim.oracle(strict_q), random.Random(1)).endswith(f"result = {int(right)}")


def test_a_matcher_decides_steps_with_fewer_samples(
    runs: tuple[Path, RunResult, RunResult],
) -> None:
    """Seeded Monte Carlo, 400 steps each way.

    With ``number`` the step is Eq 16's race: the mean must be within 4 standard errors of
    ``expected_votes_per_step(p, k)`` (a seeded run outside that band has a chance below 1e-4
    of being honest luck). Without it the right value's four forms race each other as well as
    the rival, so the mean is far higher; the claim "fewer" is asserted as a difference of more
    than 6 standard errors of the difference, which no seed's luck reaches (p < 1e-9).
    """
    path, exact, number = runs
    assert exact.ok
    assert number.ok
    assert exact.final_state == number.final_state  # both right: the same chain of values
    with_m = per_step_samples(events_of(path, number.run_id))
    without = per_step_samples(events_of(path, exact.run_id))
    assert len(with_m) == len(without) == STEPS
    mean_with, mean_without = statistics.fmean(with_m), statistics.fmean(without)
    se_with = statistics.stdev(with_m) / math.sqrt(STEPS)
    se_without = statistics.stdev(without) / math.sqrt(STEPS)
    expected = expected_votes_per_step(P, K)
    assert abs(mean_with - expected) < 4 * se_with, (mean_with, expected, se_with)
    assert mean_without - mean_with > 6 * math.hypot(se_with, se_without), (
        mean_without,
        mean_with,
    )
    # The measured saving is large: about 3.2 samples a step against about 11.
    assert mean_without > 2.5 * mean_with


def test_the_log_records_keys_and_the_answer_applied(
    runs: tuple[Path, RunResult, RunResult],
) -> None:
    path, _, number = runs
    events = events_of(path, number.run_id)
    started = events[0]
    assert isinstance(started, RunStarted)
    assert started.policy["matcher"] == "number"
    task = free_task()
    first_vote: dict[int, dict[str, VoteCounted]] = {}
    states: dict[int, Any] = {}
    differing = 0
    for event in events:
        if isinstance(event, StepStarted):
            states[event.step] = event.state
        if isinstance(event, VoteCounted):
            first_vote.setdefault(event.step, {}).setdefault(event.candidate, event)
            written = event.answer if type(event.answer) is str else event.candidate
            # The key is the value; the answer as written votes under it.
            value = json.loads(written)["result"]
            assert json.loads(event.candidate) == {"result": int(float(value))}
            differing += type(event.answer) is str
        if isinstance(event, StepDecided):
            winner_vote = first_vote[event.step][event.winner]
            applied = event.answer if type(event.answer) is str else event.winner
            # The answer applied is the first one counted for the winning key...
            assert applied == (
                winner_vote.answer if type(winner_vote.answer) is str else winner_vote.candidate
            )
            # ... and the state goes on from its value.
            state = task.state_from_json(states[event.step])
            after = task.apply(state, json.loads(applied)["result"])
            assert str(after.value) == task.oracle(state)  # this seed's run is right throughout
    assert differing > STEPS  # half the answers are not written in digits


def test_without_a_matcher_nothing_new_is_recorded(
    runs: tuple[Path, RunResult, RunResult],
) -> None:
    path, exact, _ = runs
    events = events_of(path, exact.run_id)
    started = events[0]
    assert isinstance(started, RunStarted)
    assert "matcher" not in started.policy
    for event in events:
        if isinstance(event, VoteCounted | StepDecided):
            assert event.answer is msgspec.UNSET
            assert b'"answer"' not in encode(event)


def test_a_replay_reproduces_a_run_under_its_matcher(
    runs: tuple[Path, RunResult, RunResult],
) -> None:
    path, exact, number = runs

    async def go() -> tuple[bool, bool, int | None]:
        same = await verify_run(path, number.run_id)
        plain = await verify_run(path, exact.run_id)
        # Under another matcher the votes are keyed otherwise: the first vote that differs is
        # where the verification says the run diverges.
        other = await verify_run(path, number.run_id, policy=Policy(k=K))
        return same.ok, plain.ok, other.divergence.seq if other.divergence else None

    same, plain, diverged_at = anyio.run(go)
    assert same
    assert plain
    events = events_of(path, number.run_id)
    first_keyed = next(
        e.seq for e in events if isinstance(e, VoteCounted) and type(e.answer) is str
    )
    assert diverged_at == first_keyed


def test_a_pipelined_run_keys_each_start_afresh_and_replays(tmp_path: Path) -> None:
    path = tmp_path / "pipelined.db"
    (result,) = run_into(path, free_task(60), [Policy(k=K, matcher="number", pipeline=3)])
    assert result.ok
    events = events_of(path, result.run_id)
    decided = [e for e in events if isinstance(e, StepDecided)]
    assert len(decided) == 60
    assert statistics.fmean(e.samples for e in decided) < 4.5

    async def go() -> bool:
        return (await verify_run(path, result.run_id)).ok

    assert anyio.run(go)


def test_a_cancelled_run_resumes_under_its_matcher_to_the_uninterrupted_end(
    tmp_path: Path,
) -> None:
    path = tmp_path / "resumed.db"
    latent = CLEAN.replace(latency_ms=1.0)
    policy = Policy(k=K, matcher="number", pipeline=0, hedge=None)
    task = free_task(80)

    async def go() -> tuple[RunResult, RunResult, RunResult]:
        async with Engine(log=path, client=SimulatedModel(latent)) as engine:
            whole = await engine.run(task, policy=policy, seed=4)
            handle = engine.start(task, policy=policy, seed=4)
            async with aclosing(handle.events()) as stream:
                async for event in stream:
                    if isinstance(event, StateChanged) and event.step >= 20:
                        break
            cancelled = await handle.cancel()
        resumed = await resume_run(path, handle.run_id, client=SimulatedModel(latent))
        return whole, cancelled, resumed

    whole, cancelled, resumed = anyio.run(go)
    assert cancelled.status == "cancelled"
    assert 20 <= cancelled.steps < 80
    assert resumed.ok
    assert resumed.final_state == whole.final_state
    # The same values decided, by key. (Which form each step applied may differ: with latency
    # the samples of a step arrive in their own order in each run, and the first counted for
    # the winner is that run's.)
    winners = [
        [e.winner for e in events_of(path, r.run_id) if isinstance(e, StepDecided)]
        for r in (whole, resumed)
    ]
    assert winners[0] == winners[1]
    # The resumed run, prefix and all, replays exactly under the matcher its log records.
    assert anyio.run(verify_run, path, resumed.run_id).ok


def test_a_revote_changes_the_matcher(runs: tuple[Path, RunResult, RunResult]) -> None:
    path, exact, number = runs
    task = free_task()
    # The run recorded without a matcher, re-voted with one: every step decides for the same
    # value on fewer of its samples.
    looser = revote(events_of(path, exact.run_id), task, k=K, matcher="number")
    assert (looser.matcher, looser.recorded_matcher) == ("number", "exact")
    assert looser.decided_steps == STEPS
    assert not looser.changed_steps
    assert looser.samples_saved > looser.needed_samples  # most samples were the forms' race
    assert all(step.recorded_as for step in looser.steps)
    # The same re-voted under its own (recorded) matcher: nothing changes, nothing is saved.
    same = revote(events_of(path, exact.run_id), task, k=K)
    assert same.matcher == "exact"
    assert same.samples_saved == 0
    assert not same.changed_steps
    # The run recorded with the matcher, re-voted without: its samples rarely suffice.
    stricter = revote(events_of(path, number.run_id), task, k=K, matcher="exact")
    assert len(stricter.short_steps) > STEPS // 2
    assert not stricter.changed_steps
    # A re-vote under a number tolerance so wide that the rival joins the right value's key.
    wide = revote(events_of(path, number.run_id), task, k=K, matcher="number:rel=0.5")
    assert wide.decided_steps == STEPS
    assert not wide.changed_steps  # the answer applied keys with the new winner
    assert wide.needed_samples < looser.needed_samples
    assert sum(step.needed == K for step in wide.steps) > 0.95 * STEPS


def test_the_cli_runs_and_revotes_with_a_matcher(tmp_path: Path) -> None:
    params = json.dumps({"steps": 40, "digits": 4, "free_form": True})
    done = maker(
        tmp_path, "run", "--task", "arithmetic", "--params", params,
        "--matcher", " number ", "--log", "m.db", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    ran = json.loads(done.stdout)
    assert ran["status"] == "succeeded"
    plain = maker(
        tmp_path, "run", "--task", "arithmetic", "--params", params, "--log", "e.db", "--json"
    )
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["samples"] > ran["samples"]
    verified = maker(tmp_path, "replay", "m.db", "--verify", "--json")
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["ok"], verified.stdout
    revoted = maker(tmp_path, "replay", "e.db", "--matcher", "text+number", "--json")
    assert revoted.returncode == 0, revoted.stderr
    report = json.loads(revoted.stdout)
    assert report["matcher"] == "text+number"
    assert report["recorded"]["matcher"] == "exact"
    assert report["samples_saved"] > 0
    assert report["changed_steps"] == []
    text = maker(tmp_path, "replay", "e.db", "--matcher", "number")
    assert "matcher number (recorded exact)" in text.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("run", "arithmetic", "--matcher", "nope"), "unknown matcher 'nope'"),
        (("run", "arithmetic", "--matcher", "number:rel=x"), "number: rel must be a number"),
        (("replay", "x.db", "--matcher", "json:sets=a"), "json: sets: 'a' is not a path"),
        (("replay", "x.db", "--verify", "--matcher", "text"), "give --verify, or re-vote"),
    ],
)
def test_a_bad_matcher_is_one_line(tmp_path: Path, args: tuple[str, ...], says: str) -> None:
    if args[0] == "run":
        args = (*args, "--log", "l.db")
    line = one_error_line(maker(tmp_path, *args))
    assert says in line
    assert not (tmp_path / "l.db").exists()  # refused before anything was recorded


def test_keys_read_like_answers() -> None:
    """A key is canonical JSON, so what reads a winner as an answer still can."""
    from maker import make_matcher

    for spec, answer in (
        ("text", {"city": " PARIS "}),
        ("number", {"result": "4.2e1"}),
        ("json:sets=/tags", {"tags": ["b", "a"]}),
        ("python", "def f(x): return x"),
    ):
        key = make_matcher(spec).key(answer)
        assert canonical_json(json.loads(key)) == key
