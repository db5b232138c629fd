"""Calibration: the sampled states, the Wilson interval's coverage on the simulated model, the
events a calibration records, retries and failures, and the ``calibrate`` command."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner

from events import (
    AnyEvent,
    EventLog,
    RedFlagged,
    RunFinished,
    RunStarted,
    SampleCancelled,
    SampleFailed,
    SampleReceived,
    SampleRequested,
    SchedulerWaited,
    StateChanged,
    StepDecided,
    StepStarted,
    VoteCounted,
    canonical_json,
)
from maker import (
    ClientError,
    Completion,
    ConfigError,
    Engine,
    Limits,
    Policy,
    SampleRequest,
    Scheduler,
    SimConfig,
    SimulatedModel,
)
from maker.apps.cli._workflow_cli import calibrate_command
from maker.engine._calibrate import (
    Z95,
    calibrate,
    calibration_from_events,
    calibration_steps,
    states_at,
    wilson_interval,
)
from maker.tasks import Arithmetic, Hanoi
from maker.tasks._hanoi import hanoi_state_at
from replay import load_events, verify_log
from tests.maker._fakes import Count, Reply, ScriptedClient, comparable, correct

# -- the sampled states ----------------------------------------------------------------------


@pytest.mark.parametrize("disks", range(1, 9))
def test_hanoi_state_at_is_the_state_the_oracle_walks_to(disks: int) -> None:
    task = Hanoi(disks)
    state = task.initial_state()
    for index in range(task.max_steps() + 1):
        assert hanoi_state_at(disks, index) == state, index
        if index < task.max_steps():
            answer = task.oracle(state)
            assert answer is not None
            state = task.apply(state, answer)
    assert task.is_done(hanoi_state_at(disks, task.max_steps()))


def test_hanoi_state_at_a_million_moves_deep_is_immediate() -> None:
    # 20 disks: walking there would take a million oracle steps.
    last = hanoi_state_at(20, 2**20 - 1)
    assert Hanoi(20).is_done(last)
    assert last.previous_move == (1, 1, 2)  # n even: the smallest disk ends coming from peg 1
    with pytest.raises(ValueError, match="index"):
        hanoi_state_at(3, 8)


def test_states_at_walks_a_task_without_a_closed_form() -> None:
    task = Arithmetic(steps=30, digits=3, seed=4)
    states = states_at(task, [7, 0, 29, 7])
    walked = task.initial_state()
    for index in range(30):
        if index in states:
            assert states[index] == walked
        answer = task.oracle(walked)
        assert answer is not None
        walked = task.apply(walked, answer)
    assert sorted(states) == [0, 7, 29]


def test_calibration_steps_are_distinct_sorted_seeded_and_balanced_when_repeated() -> None:
    steps = calibration_steps(1023, 200, seed=5)
    assert steps == sorted(steps)
    assert len(set(steps)) == 200
    assert all(0 <= s < 1023 for s in steps)
    assert steps == calibration_steps(1023, 200, seed=5)
    assert steps != calibration_steps(1023, 200, seed=6)
    repeated = Counter(calibration_steps(7, 23, seed=1))
    assert sorted(repeated) == list(range(7))
    assert set(repeated.values()) == {3, 4}  # 23 = 3 passes of 7, and 2 more
    with pytest.raises(ConfigError, match="samples"):
        calibration_steps(7, 0, seed=1)


# -- the interval ----------------------------------------------------------------------------


@pytest.mark.parametrize(("successes", "n"), [(0, 1), (1, 1), (3, 10), (90, 100), (997, 1000)])
def test_wilson_interval_ends_are_where_the_score_test_is_exactly_z(successes: int, n: int) -> None:
    # Wilson's interval is every p whose score statistic |x/n - p| / sqrt(p(1-p)/n) is <= z.
    share = successes / n
    low, high = wilson_interval(successes, n)
    assert 0.0 <= low <= share <= high <= 1.0
    for end in (low, high):
        if 0.0 < end < 1.0:
            score = abs(share - end) / math.sqrt(end * (1 - end) / n)
            assert score == pytest.approx(Z95, rel=1e-9)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(3, 2)


@pytest.mark.anyio
async def test_the_95_percent_interval_covers_the_true_p_in_at_least_90_percent_of_50_calibrations(
    tmp_path: Path,
) -> None:
    """The issue's acceptance test: 50 seeded calibrations of 200 samples at a known p.

    Wilson's interval covers about 95% of the time at this n and p, so about 2.5 misses are
    expected in 50; the bound allows 5. Under 95% coverage the chance of 6 or more misses is
    about 4%: the seeds are fixed, so the outcome is deterministic, and that figure says the
    seeds were not picked to pass. The salt changes the simulated model between calibrations
    too, so each draws fresh answers as well as fresh steps.
    """
    p = 0.9
    covered = 0
    async with EventLog(tmp_path / "coverage.db") as log:
        for seed in range(50):
            config = SimConfig(
                p=p, hard_fraction=0.0, malformed_rate=0.03, overlong_rate=0.02, salt=seed
            )
            report = await calibrate(
                Hanoi(10), [SimulatedModel(config)], samples=200, seed=seed, log=log
            )
            measured = report.models[0]
            assert measured.n == 200
            assert 150 <= measured.valid < 200  # red flags are drawn, and not counted in p
            covered += measured.p_low <= p <= measured.p_high
    assert covered >= 45, f"the interval covered p in {covered} of 50 calibrations"


# -- the events ------------------------------------------------------------------------------

NOISY = SimConfig(p=0.8, hard_fraction=0.0, malformed_rate=0.1, overlong_rate=0.05)


def _by_run(events: list[AnyEvent]) -> dict[str, list[AnyEvent]]:
    runs: dict[str, list[AnyEvent]] = {}
    for event in events:
        runs.setdefault(event.run_id, []).append(event)
    return runs


@pytest.mark.anyio
async def test_a_calibration_is_an_ordinary_run_per_model_that_verifies(tmp_path: Path) -> None:
    path = tmp_path / "cal.db"
    task = Hanoi(6)
    models = [SimulatedModel(NOISY), SimulatedModel(SimConfig(p=0.99), name="sim-b")]
    report = await calibrate(task, models, samples=40, seed=3, log=path)
    assert verify_log(path).ok
    assert [m.model for m in report.models] == ["sim", "sim-b"]
    assert report.ok
    assert len(report.steps) == 40
    assert len(set(report.steps)) == 40
    for measured in report.models:
        events = await load_events(path, measured.run_id)
        started = events[0]
        assert isinstance(started, RunStarted)
        assert started.task == "hanoi"
        assert started.task_params == {"disks": 6}
        assert started.models == [measured.model]
        assert started.seed == 3
        assert started.policy["mode"] == "calibration"
        assert started.policy["temperature"] == 0.1
        finished = events[-1]
        assert isinstance(finished, RunFinished)
        assert finished.status == "succeeded"
        assert finished.samples == 40
        assert finished.steps == 40
        # Nothing is decided or chained: the states come from the oracle, not from votes.
        assert not [e for e in events if isinstance(e, StepDecided | StateChanged)]
        # Every model is asked about the same states, each named by its index in the solution.
        step_starts = [e for e in events if isinstance(e, StepStarted)]
        assert [e.step for e in step_starts] == list(report.steps)
        for start in step_starts:
            assert task.state_from_json(start.state) == hanoi_state_at(6, start.step)
        # Each sample: requested at the run temperature, received, then flagged or counted.
        kinds: dict[str, list[str]] = {}
        for event in events:
            if isinstance(event, SampleRequested):
                assert event.temperature == 0.1
            if isinstance(event, SampleRequested | SampleReceived | RedFlagged | VoteCounted):
                kinds.setdefault(event.sample_id, []).append(type(event).__name__)
        assert len(kinds) == 40
        assert {tuple(k) for k in kinds.values()} <= {
            ("SampleRequested", "SampleReceived", "RedFlagged"),
            ("SampleRequested", "SampleReceived", "VoteCounted"),
        }
        # The log alone gives back the report.
        assert calibration_from_events(events) == measured
        # p is judged against the oracle: recount it from the log here.
        oracle = {}
        for start in step_starts:
            answer = task.oracle(task.state_from_json(start.state))
            assert answer is not None
            oracle[start.step] = canonical_json(task.answer_to_json(answer))
        votes = [e for e in events if isinstance(e, VoteCounted)]
        right = sum(vote.candidate == oracle[vote.step] for vote in votes)
        flags = Counter(e.reason for e in events if isinstance(e, RedFlagged))
        assert (measured.valid, measured.correct, measured.red_flags) == (len(votes), right, flags)
        assert measured.n == measured.valid + sum(flags.values())
    noisy = report.models[0]
    assert noisy.red_flags  # at this rate 40 samples all but surely hold a red flag
    assert noisy.v == pytest.approx(noisy.valid / 40)
    json_entry = noisy.to_json()
    for key in ("model", "p", "p_low", "p_high", "v", "n", "valid", "red_flags"):
        assert key in json_entry
    assert json_entry["mean_output_tokens"] > 0


@pytest.mark.anyio
async def test_cost_per_call_comes_from_the_price_table(tmp_path: Path) -> None:
    from maker.core._pricing import PriceTable

    prices = PriceTable({"sim": {"input": 1.0, "output": 2.0}})
    report = await calibrate(
        Hanoi(4),
        [SimulatedModel(SimConfig(p=1.0))],
        samples=10,
        seed=1,
        log=tmp_path / "c.db",
        prices=prices,
    )
    m = report.models[0]
    expected = (m.mean_input_tokens * 1.0 + m.mean_output_tokens * 2.0) / 1e6
    assert m.cost_per_call == pytest.approx(expected)
    assert m.cost_per_call > 0


@pytest.mark.anyio
async def test_repeated_states_get_distinct_sample_ids(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    report = await calibrate(
        Hanoi(2), [SimulatedModel(preset="ideal")], samples=7, seed=0, log=path
    )
    events = await load_events(path)
    ids = [e.sample_id for e in events if isinstance(e, SampleRequested)]
    assert len(set(ids)) == 7
    per_step = Counter(int(i.split(":")[0]) for i in ids)
    assert sorted(per_step) == [0, 1, 2]
    assert sorted(per_step.values()) == [2, 2, 3]
    for step, count in per_step.items():
        assert {i for i in ids if i.startswith(f"{step}:")} == {f"{step}:{n}" for n in range(count)}
    assert len([e for e in events if isinstance(e, StepStarted)]) == 3
    assert report.models[0].p == 1.0
    assert report.models[0].p_high == 1.0


@pytest.mark.anyio
async def test_a_task_without_a_closed_form_is_calibrated_by_walking(tmp_path: Path) -> None:
    report = await calibrate(
        Arithmetic(steps=60, digits=4, seed=2),
        [SimulatedModel(preset="ideal")],
        samples=15,
        seed=9,
        log=tmp_path / "c.db",
    )
    m = report.models[0]
    assert (m.n, m.valid, m.correct) == (15, 15, 15)


class Flaky:
    """The simulated model behind failures: ``plan`` maps a sample id to the attempts that fail,
    and whether they may be retried."""

    def __init__(self, fail: dict[str, tuple[int, bool]], name: str = "flaky") -> None:
        self.inner = SimulatedModel(SimConfig(p=0.95, hard_fraction=0.0), name=name)
        self.fail = fail
        self.attempts: Counter[str] = Counter()

    @property
    def model(self) -> str:
        return self.inner.model

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    async def complete(self, request: SampleRequest) -> Completion:
        self.attempts[request.sample_id] += 1
        failing, retryable = self.fail.get(request.sample_id, (0, False))
        if self.attempts[request.sample_id] <= failing:
            raise ClientError("boom", kind="server_error", retryable=retryable)
        return await self.inner.complete(request)


@pytest.mark.anyio
async def test_retryable_failures_are_retried_with_backoff_and_recorded(tmp_path: Path) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    path = tmp_path / "c.db"
    steps = calibration_steps(63, 10, seed=4)
    target = f"{steps[3]}:0"
    client = Flaky({target: (2, True)})
    scheduler = Scheduler(Limits(backoff_base_s=1.0), sleep=sleep)
    report = await calibrate(Hanoi(6), [client], samples=10, seed=4, log=path, scheduler=scheduler)
    m = report.models[0]
    assert report.ok
    assert m.n == 10
    assert m.failures == 0
    events = await load_events(path)
    failed = [e for e in events if isinstance(e, SampleFailed)]
    assert [(e.sample_id, e.attempt, e.retryable) for e in failed] == [
        (target, 1, True),
        (target, 2, True),
    ]
    assert [e.backoff_s for e in failed] == slept
    assert all(0 <= e.backoff_s <= 2.0 for e in failed)
    assert client.attempts[target] == 3


@pytest.mark.anyio
async def test_a_sample_that_fails_for_good_fails_that_model_only(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    steps = calibration_steps(63, 12, seed=2)
    broken = Flaky({f"{steps[5]}:0": (1, False)}, name="broken")
    healthy = SimulatedModel(SimConfig(p=0.95))
    report = await calibrate(Hanoi(6), [broken, healthy], samples=12, seed=2, log=path, in_flight=2)
    assert not report.ok
    bad, good = report.model("broken"), report.model("sim")
    assert bad.status == "failed"
    assert f"sample {steps[5]}:0 failed after 1 attempt: server_error: boom" in bad.reason
    assert bad.failures == 1
    assert bad.n < 12
    assert good.status == "succeeded"
    assert good.n == 12
    events = _by_run(await _all_events(path))[bad.run_id]
    finished = events[-1]
    assert isinstance(finished, RunFinished)
    assert finished.status == "failed"
    # What was still in flight was abandoned and said so.
    requested = {e.sample_id for e in events if isinstance(e, SampleRequested)}
    answered = {e.sample_id for e in events if isinstance(e, SampleReceived)}
    cancelled = {e.sample_id for e in events if isinstance(e, SampleCancelled)}
    assert requested == answered | cancelled | {f"{steps[5]}:0"}
    assert verify_log(path).ok


@pytest.mark.anyio
async def test_the_schedulers_limits_apply_and_its_waits_are_recorded(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    # Four samples in flight against a cap of one call at a time: three queue each round.
    model = SimulatedModel(SimConfig(p=0.95, latency_ms=1.0, latency_sigma=0.0))
    scheduler = Scheduler(Limits(concurrency=1))
    report = await calibrate(
        Hanoi(5), [model], samples=8, seed=0, log=path, scheduler=scheduler, in_flight=4
    )
    assert report.ok
    events = await load_events(path)
    waits = [e for e in events if isinstance(e, SchedulerWaited)]
    assert waits
    assert {e.reason for e in waits} == {"concurrency"}
    requested = {e.sample_id for e in events if isinstance(e, SampleRequested)}
    assert {e.sample_id for e in waits} <= requested
    started = events[0]
    assert isinstance(started, RunStarted)
    assert started.limits["concurrency"] == 1
    assert verify_log(path).ok


class Hanging:
    """A model that never answers; ``called`` is set once a call has begun."""

    def __init__(self) -> None:
        self.called = anyio.Event()

    @property
    def model(self) -> str:
        return "hanging"

    def describe(self) -> dict[str, Any]:
        return {}

    async def complete(self, request: SampleRequest) -> Completion:
        self.called.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover


@pytest.mark.anyio
async def test_a_cancelled_calibration_records_its_end(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    client = Hanging()

    async def go() -> None:
        await calibrate(Hanoi(5), [client], samples=8, seed=0, log=path, in_flight=3)

    async with anyio.create_task_group() as tg:
        tg.start_soon(go)
        await client.called.wait()
        tg.cancel_scope.cancel()
    events = await load_events(path)
    finished = events[-1]
    assert isinstance(finished, RunFinished)
    assert finished.status == "cancelled"
    cancelled = [e for e in events if isinstance(e, SampleCancelled)]
    assert len(cancelled) == 3
    assert {e.reason for e in cancelled} == {"run_cancelled"}
    assert verify_log(path).ok


# -- one loop for runs and calibrations ------------------------------------------------------


class Counted(Count):
    """Count with a known number of steps, so that it can be calibrated."""

    def max_steps(self) -> int:
        return self.goal


def _transient_flagged_valid(request: SampleRequest, attempt: int) -> Reply:
    """Sample 0:0 fails once in transport, then answers what the parser rejects; 0:1 is right."""
    if request.sample_id == "0:0":
        if attempt == 1:
            return ClientError("overloaded", kind="server_error", retryable=True)
        return "I would rather not count."
    return correct(request, attempt)


class AtOnce:
    """The same script answered without awaiting: both loops then make the calls inline."""

    def __init__(self) -> None:
        self.attempts: Counter[str] = Counter()

    @property
    def model(self) -> str:
        return "fake"

    def describe(self) -> dict[str, Any]:
        return {"kind": "scripted"}

    def complete_now(self, request: SampleRequest) -> Completion:
        self.attempts[request.sample_id] += 1
        reply = _transient_flagged_valid(request, self.attempts[request.sample_id])
        if isinstance(reply, ClientError):
            raise reply
        assert isinstance(reply, str)
        return Completion(
            text=reply, finish_reason="stop", input_tokens=12, output_tokens=30, model="fake"
        )

    async def complete(self, request: SampleRequest) -> Completion:
        return self.complete_now(request)


SAMPLE_EVENTS = (
    SampleRequested,
    SampleFailed,
    SampleReceived,
    RedFlagged,
    VoteCounted,
    SampleCancelled,
    SchedulerWaited,
)


@pytest.mark.anyio
@pytest.mark.parametrize("at_once", [False, True], ids=["in-tasks", "at-once"])
async def test_a_calibration_records_attempts_retries_and_red_flags_exactly_as_a_run(
    tmp_path: Path, at_once: bool
) -> None:
    # One state, sampled one at a time by both: the run votes with k = 1 and samples again
    # after the red flag; the calibration draws the state twice. The same script answers both.
    path = tmp_path / "log.db"
    policy = Policy(k=1, first_temperature=0.1, temperature=0.1)

    def client() -> ScriptedClient | AtOnce:
        return AtOnce() if at_once else ScriptedClient(_transient_flagged_valid)

    def scheduler() -> Scheduler:
        return Scheduler(Limits(backoff_base_s=0.001, backoff_cap_s=0.002))

    async with Engine(log=path, client=client(), scheduler=scheduler()) as engine:
        ran = await engine.run(Counted(1), policy=policy, seed=7)
    report = await calibrate(
        Counted(1),
        [client()],
        samples=2,
        seed=7,
        log=path,
        policy=policy,
        scheduler=scheduler(),
        in_flight=1,
    )
    calibrated = report.models[0]
    assert ran.run_id != calibrated.run_id
    by_run = _by_run(await _all_events(path))

    def sample_level(run_id: str) -> list[dict[str, Any]]:
        return [comparable(e) for e in by_run[run_id] if isinstance(e, SAMPLE_EVENTS)]

    expected = [
        ("sample_requested", "0:0"),
        ("sample_failed", "0:0"),
        ("sample_received", "0:0"),
        ("red_flagged", "0:0"),
        ("sample_requested", "0:1"),
        ("sample_received", "0:1"),
        ("vote_counted", "0:1"),
    ]
    run_samples = sample_level(ran.run_id)
    assert [(e["type"], e["sample_id"]) for e in run_samples] == expected
    # Field by field, seq included; only the run ids (and the times) differ.
    assert sample_level(calibrated.run_id) == run_samples
    failed = run_samples[1]
    assert (failed["attempt"], failed["retryable"], failed["error_kind"]) == (
        1,
        True,
        "server_error",
    )
    assert failed["backoff_s"] > 0
    assert run_samples[3]["reason"] == "malformed"
    # Both count what they recorded alike.
    assert (ran.samples, ran.failures, ran.red_flags_by_reason) == (2, 1, {"malformed": 1})
    assert (calibrated.requested, calibrated.n, calibrated.valid, calibrated.correct) == (
        2,
        2,
        1,
        1,
    )
    assert calibrated.red_flags == {"malformed": 1}
    assert calibrated.failures == 0  # the failed sample was answered on its retry


async def _all_events(path: Path) -> list[AnyEvent]:
    async with EventLog(path, mode="r") as log:
        return [e for info in await log.runs() async for e in log.read(info.run_id)]


@pytest.mark.anyio
async def test_bad_arguments_are_refused_naming_the_field(tmp_path: Path) -> None:
    log = tmp_path / "c.db"
    sim = SimulatedModel()
    with pytest.raises(ConfigError, match="samples"):
        await calibrate(Hanoi(3), [sim], samples=0, seed=0, log=log)
    with pytest.raises(ConfigError, match="models"):
        await calibrate(Hanoi(3), [sim, SimulatedModel()], samples=3, seed=0, log=log)
    with pytest.raises(ConfigError, match="models"):
        await calibrate(Hanoi(3), [], samples=3, seed=0, log=log)
    with pytest.raises(ConfigError, match="no known number of steps"):
        await calibrate(Count(), [sim], samples=3, seed=0, log=log)
    assert not log.exists()  # refused before anything was written


@pytest.mark.anyio
async def test_calibration_from_events_refuses_an_ordinary_run(tmp_path: Path) -> None:
    from maker import Engine

    path = tmp_path / "run.db"
    async with Engine(log=path, client=SimulatedModel(preset="ideal")) as engine:
        await engine.run(Hanoi(2), policy=Policy(k=1), seed=0)
    with pytest.raises(ConfigError, match="not a calibration"):
        calibration_from_events(await load_events(path))


# -- the command -----------------------------------------------------------------------------


def test_calibrate_command_prints_json_that_plan_reads(tmp_path: Path) -> None:
    log = tmp_path / "cal.db"
    result = CliRunner().invoke(
        calibrate_command,
        ["hanoi", "--disks", "8", "--model", "sim", "--p", "0.97", "--samples", "60",
         "--seed", "2", "--log", str(log), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["task"] == "hanoi"
    assert data["samples"] == 60
    assert data["seed"] == 2
    (model,) = data["models"]
    for key in ("model", "p", "p_low", "p_high", "v", "cost_per_call", "red_flags"):
        assert key in model
    assert model["model"] == "sim"
    assert model["n"] == 60
    assert model["p_low"] <= model["p"] <= model["p_high"]
    assert verify_log(log).ok

    text = CliRunner().invoke(
        calibrate_command,
        ["hanoi", "--disks", "8", "--model", "sim", "--samples", "20", "--log", str(log)],
    )
    assert text.exit_code == 0, text.output
    assert "95% interval" in text.output
    assert "unknown price" in text.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "sim", "--model", "sim"], "once"),
        (["--model", "ollama:x", "--p", "0.9"], "--p applies only to the simulated model"),
        (["--model", "sim", "--base-url", "http://x"], "--base-url does not apply"),
        (["--model", "sim", "--steps", "5"], "--steps does not apply to the hanoi task"),
    ],
)
def test_calibrate_command_refuses_bad_combinations(
    tmp_path: Path, args: list[str], message: str
) -> None:
    log = tmp_path / "cal.db"
    result = CliRunner().invoke(
        calibrate_command, ["hanoi", "--samples", "5", "--log", str(log), *args]
    )
    assert result.exit_code == 2
    assert message in result.output
    assert not log.exists()
