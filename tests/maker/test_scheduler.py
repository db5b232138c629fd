"""Backoff, limiters and the breaker, on an injected clock: no test sleeps to test time."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from events import BreakerChanged, SampleFailed, SchedulerWaited
from maker import (
    BreakerChange,
    CircuitBreaker,
    ClientError,
    Completion,
    ConfigError,
    Engine,
    Limits,
    Policy,
    SampleRequest,
    Scheduler,
    SchedulerObserver,
    SchedulerStatistics,
    SimulatedModel,
    SlidingWindow,
    Wait,
    backoff_delay,
)

from ._fakes import Count, Reply, ScriptedClient, correct, read_events


class FakeTime:
    """A clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await anyio.lowlevel.checkpoint()


def request(sample_id: str = "0:0", max_tokens: int = 100) -> SampleRequest:
    return SampleRequest(
        sample_id=sample_id, step=0, model="fake", system="s" * 40, user="u" * 40,
        temperature=0.0, max_tokens=max_tokens, seed=1,
    )  # fmt: skip


class Recorder:
    """A client that notes the (fake) time of every call and can be made to fail or block."""

    model = "fake"

    def __init__(self, time: FakeTime, fail: Callable[[int], ClientError | None] | None = None):
        self.time = time
        self.fail = fail
        self.calls: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.gate: anyio.Event | None = None

    def describe(self) -> dict[str, object]:
        return {}

    async def complete(self, req: SampleRequest) -> Completion:
        self.calls.append(self.time.now)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await anyio.lowlevel.checkpoint()
            error = self.fail(len(self.calls)) if self.fail else None
            if error is not None:
                raise error
            return Completion(
                text="ok", finish_reason="stop", input_tokens=20, output_tokens=30, model="fake"
            )
        finally:
            self.in_flight -= 1


class AtOnce(Recorder):
    """A Recorder that can also answer without awaiting (``complete_now``)."""

    async def complete(self, req: SampleRequest) -> Completion:
        return await super().complete(req)

    def complete_now(self, req: SampleRequest) -> Completion | None:
        self.calls.append(self.time.now)
        error = self.fail(len(self.calls)) if self.fail else None
        if error is not None:
            raise error
        return Completion(
            text="now", finish_reason="stop", input_tokens=20, output_tokens=30, model="fake"
        )


class Changes(SchedulerObserver):
    def __init__(self) -> None:
        self.changes: list[BreakerChange] = []

    def breaker_changed(self, change: BreakerChange) -> None:
        self.changes.append(change)


# -- backoff -------------------------------------------------------------------------------


@example(attempt=1025, base=2.225073858507e-311, cap=1.0, retry_after=None, draw=0.5)  # subnormal
@given(
    attempt=st.integers(1, 2000),
    base=st.floats(0.0, 10.0),
    cap=st.floats(0.0, 100.0),
    retry_after=st.one_of(st.none(), st.floats(0.0, 500.0)),
    draw=st.floats(0.0, 1.0, exclude_max=True),
)
def test_backoff_is_full_jitter_under_the_cap_and_honours_retry_after(
    attempt: int, base: float, cap: float, retry_after: float | None, draw: float
) -> None:
    delay = backoff_delay(attempt, base_s=base, cap_s=cap, retry_after_s=retry_after, draw=draw)
    # Exact arithmetic, so the expectation holds at attempts where floats would overflow.
    ceiling = float(min(Fraction(cap), Fraction(base) * 2 ** (attempt - 1)))
    assert delay >= 0
    if retry_after is not None:
        assert delay >= retry_after
        assert delay <= max(ceiling, retry_after)
    else:
        assert delay == pytest.approx(draw * ceiling)


def test_backoff_grows_exponentially_then_stops_at_the_cap() -> None:
    ceilings = [
        backoff_delay(a, base_s=0.5, cap_s=10.0, retry_after_s=None, draw=0.999999)
        for a in range(1, 8)
    ]
    assert [round(c, 3) for c in ceilings] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(0, base_s=1, cap_s=1, retry_after_s=None, draw=0.5)


# -- the sliding window ----------------------------------------------------------------------


@given(
    limit=st.integers(1, 8),
    gaps=st.lists(st.floats(0.0, 40.0), min_size=1, max_size=60),
)
def test_a_window_never_admits_more_than_its_limit_in_any_minute(
    limit: int, gaps: list[float]
) -> None:
    time = FakeTime()
    window = SlidingWindow(limit, time.clock)
    admitted: list[float] = []
    for gap in gaps:
        time.now += gap
        wait = window.wait_for(1)
        time.now += wait
        assert window.wait_for(1) == 0
        window.admit(1)
        admitted.append(time.now)
    for i, start in enumerate(admitted):
        in_window = [t for t in admitted[i:] if t < start + 60.0]
        assert len(in_window) <= limit


def test_a_window_settles_reservations_to_real_usage() -> None:
    time = FakeTime()
    window = SlidingWindow(1000, time.clock)
    entry = window.admit(900)
    assert window.wait_for(200) == pytest.approx(60.0)
    window.settle(entry, 100)
    assert window.wait_for(200) == 0
    time.now += 60.0
    assert window.wait_for(1000) == 0


# -- the breaker -----------------------------------------------------------------------------


def test_the_breaker_opens_after_threshold_failures_then_probes_once() -> None:
    time = FakeTime()
    breaker = CircuitBreaker(3, 10.0, time.clock)
    assert [breaker.failure() for _ in range(3)] == [None, None, "open"]
    assert breaker.wait_for() == pytest.approx(10.0)
    time.now += 4.0
    assert breaker.wait_for() == pytest.approx(6.0)
    time.now += 6.0
    assert breaker.wait_for() == 0.0  # the probe
    assert breaker.state == "half_open"
    assert breaker.wait_for() is None  # others wait for the probe's verdict
    assert breaker.failure() == "open"  # a failed probe opens it again
    time.now += 10.0
    assert breaker.wait_for() == 0.0
    assert breaker.success() == "closed"
    assert breaker.wait_for() == 0.0
    assert breaker.failures == 0


# -- the scheduler ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_concurrency_is_capped_and_cancellation_frees_the_slot_at_once() -> None:
    time = FakeTime()
    scheduler = Scheduler(Limits(concurrency=2), clock=time.clock, sleep=time.sleep)
    client = Recorder(time)
    client.gate = anyio.Event()
    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(scheduler.call, client, request(f"0:{i}"))
        while client.in_flight < 2 or scheduler.statistics().queued < 3:
            await anyio.lowlevel.checkpoint()
        assert scheduler.statistics()[:2] == (2, 3)
        tg.cancel_scope.cancel()
    assert scheduler.statistics()[:2] == (0, 0)
    client.gate = None
    await scheduler.call(client, request())  # the cancelled calls released their slots
    assert client.max_in_flight == 2


@pytest.mark.anyio
async def test_rpm_holds_over_any_minute_on_the_injected_clock() -> None:
    time = FakeTime()
    scheduler = Scheduler(Limits(rpm=3), clock=time.clock, sleep=time.sleep)
    client = Recorder(time)
    waits: list[float] = []

    class Obs(SchedulerObserver):
        def waited(self, wait: Wait) -> None:
            waits.append(wait.seconds)

        def breaker_changed(self, change: BreakerChange) -> None:
            raise AssertionError("no breaker change expected")

    for i in range(10):
        await scheduler.call(client, request(f"0:{i}"), Obs())
    for i, start in enumerate(client.calls):
        assert sum(1 for t in client.calls[i:] if t < start + 60.0) <= 3
    assert client.calls[-1] - client.calls[0] == pytest.approx(180.0)
    assert waits == pytest.approx([60.0] * 3)


@pytest.mark.anyio
async def test_tpm_counts_prompt_estimate_plus_cap_then_real_usage() -> None:
    time = FakeTime()
    scheduler = Scheduler(Limits(tpm=250), clock=time.clock, sleep=time.sleep)
    client = Recorder(time)
    # Each call reserves 20 + 100 tokens, then settles to 50 (20 in + 30 out).
    for i in range(6):
        await scheduler.call(client, request(f"0:{i}"))
    # 3 x 50 settled + 120 reserved = 270 > 250: the fourth call waits for the window to pass.
    start = client.calls[0]
    assert client.calls == pytest.approx([start] * 3 + [start + 60.0] * 3)


@pytest.mark.anyio
async def test_the_breaker_pauses_a_failing_model_and_a_dead_one_fails_for_good() -> None:
    time = FakeTime()
    limits = Limits(breaker_threshold=3, breaker_cooldown_s=5.0, unavailable_budget_s=12.0)
    scheduler = Scheduler(limits, clock=time.clock, sleep=time.sleep)
    client = Recorder(time, fail=lambda n: ClientError("down", kind="unavailable", retryable=True))
    for i in range(3):
        with pytest.raises(ClientError, match="down"):
            await scheduler.call(client, request(f"0:{i}"))
    assert scheduler.breaker_state("fake") == "open"
    before = time.now
    with pytest.raises(ClientError, match="down"):
        await scheduler.call(client, request("0:3"))  # waits the cooldown, then probes
    assert client.calls[-1] == pytest.approx(before + 5.0)
    assert scheduler.breaker_state("fake") == "open"
    calls = len(client.calls)
    # Cooldowns of 5 s against a 12 s budget: it probes twice more, then gives up for good.

    async def keep_calling() -> None:
        for i in range(4, 10):
            try:
                await scheduler.call(client, request(f"0:{i}"))
            except ClientError as exc:
                if not exc.retryable:
                    raise

    with pytest.raises(ClientError) as info:
        await keep_calling()
    assert info.value.kind == "unavailable"
    assert "has been open for" in str(info.value)
    assert time.now - before <= 12.0 + 5.0
    assert scheduler.statistics().breaker_opens >= 2
    assert len(client.calls) > calls


@pytest.mark.anyio
async def test_budget_exhaustion_is_not_retryable_and_names_the_model() -> None:
    time = FakeTime()
    limits = Limits(breaker_threshold=1, breaker_cooldown_s=100.0, unavailable_budget_s=30.0)
    scheduler = Scheduler(limits, clock=time.clock, sleep=time.sleep)
    client = Recorder(time, fail=lambda n: ClientError("503", kind="unavailable", retryable=True))
    with pytest.raises(ClientError):
        await scheduler.call(client, request())
    with pytest.raises(ClientError) as info:
        await scheduler.call(client, request("0:1"))
    assert not info.value.retryable
    assert "fake unavailable" in str(info.value)
    assert len(client.calls) == 1  # never called while the breaker was open


@pytest.mark.anyio
async def test_a_call_past_its_timeout_is_a_retryable_timeout() -> None:
    scheduler = Scheduler(Limits(timeout_s=0.01))
    client = Recorder(FakeTime())
    client.gate = anyio.Event()  # never set: the call would hang forever
    with pytest.raises(ClientError) as info:
        await scheduler.call(client, request())
    assert (info.value.kind, info.value.retryable) == ("timeout", True)
    assert scheduler.statistics().in_flight == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"concurrency": 0}, "concurrency"), ({"rpm": -1}, "rpm"), ({"timeout_s": 0}, "timeout_s"),
     ({"backoff_base_s": -1.0}, "backoff_base_s"), ({"tpm": 1.5}, "tpm")],
)  # fmt: skip
def test_limits_are_validated(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        Limits(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


# -- the engine with the scheduler ---------------------------------------------------------------


@pytest.mark.anyio
async def test_the_engine_backs_off_per_retry_after_and_records_waits(tmp_path: Path) -> None:
    time = FakeTime()

    def flaky(req: SampleRequest, attempt: int) -> Reply:
        if req.sample_id == "0:0" and attempt == 1:
            return ClientError("slow down", kind="rate_limited", retryable=True, retry_after=7.0)
        return correct(req, attempt)

    scheduler = Scheduler(Limits(concurrency=1), clock=time.clock, sleep=time.sleep)
    client = ScriptedClient(flaky)
    async with Engine(log=tmp_path / "log.db", client=client, scheduler=scheduler) as engine:
        result = await engine.run(Count(2), policy=Policy(k=3), seed=5)
    assert result.ok
    events = await read_events(tmp_path / "log.db", result.run_id)
    failed = [e for e in events if isinstance(e, SampleFailed)]
    assert len(failed) == 1
    assert failed[0].backoff_s >= 7.0
    assert 7.0 <= max(time.slept) <= failed[0].backoff_s + 1e-9
    waits = [e for e in events if isinstance(e, SchedulerWaited)]
    assert waits
    assert {w.reason for w in waits} == {"concurrency"}
    assert not any(isinstance(e, BreakerChanged) for e in events)


@pytest.mark.anyio
async def test_the_same_seed_draws_the_same_backoff(tmp_path: Path) -> None:
    def flaky(req: SampleRequest, attempt: int) -> Reply:
        if attempt < 3:
            return ClientError("busy", kind="server_error", retryable=True)
        return correct(req, attempt)

    delays = []
    for run in range(2):
        time = FakeTime()
        scheduler = Scheduler(Limits(), clock=time.clock, sleep=time.sleep)
        path = tmp_path / f"{run}.db"
        async with Engine(log=path, client=ScriptedClient(flaky), scheduler=scheduler) as engine:
            result = await engine.run(Count(1), policy=Policy(k=1), seed=9)
        events = await read_events(path, result.run_id)
        delays.append([e.backoff_s for e in events if isinstance(e, SampleFailed)])
    assert delays[0] == delays[1]
    assert len(delays[0]) == 2
    assert all(d > 0 for d in delays[0])


# -- answering at once ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "limits", [Limits(concurrency=4), Limits(rpm=1000), Limits(tpm=100_000)], ids=str
)
def test_call_now_answers_only_a_client_that_can_and_only_when_no_limit_is_in_force(
    limits: Limits,
) -> None:
    time = FakeTime()
    free = Scheduler(clock=time.clock, sleep=time.sleep)
    completion = free.call_now(AtOnce(time), request())
    assert completion is not None
    assert completion.text == "now"
    assert free.call_now(Recorder(time), request()) is None  # it has no complete_now
    assert free.statistics() == SchedulerStatistics(0, 0, 1, 0, 0)
    limited = Scheduler(limits, clock=time.clock, sleep=time.sleep)
    client = AtOnce(time)
    assert limited.call_now(client, request()) is None
    assert client.calls == []
    assert limited.statistics().calls == 0


def test_call_now_failures_count_and_open_the_breaker_then_calls_must_wait() -> None:
    time = FakeTime()
    scheduler = Scheduler(Limits(breaker_threshold=2), clock=time.clock, sleep=time.sleep)
    client = AtOnce(time, fail=lambda n: ClientError("down", kind="unavailable", retryable=True))
    observer = Changes()
    for i in range(2):
        with pytest.raises(ClientError, match="down"):
            scheduler.call_now(client, request(f"0:{i}"), observer)
    assert [c.state for c in observer.changes] == ["open"]
    assert scheduler.breaker_state("fake") == "open"
    assert scheduler.call_now(client, request("0:2")) is None  # the breaker makes it wait
    stats = scheduler.statistics()
    assert (stats.calls, stats.failures, stats.breaker_opens, stats.in_flight) == (2, 2, 1, 0)


def test_call_now_returns_none_uncounted_when_the_client_cannot_answer_at_once() -> None:
    time = FakeTime()
    scheduler = Scheduler(clock=time.clock, sleep=time.sleep)

    class Later(AtOnce):
        def complete_now(self, req: SampleRequest) -> Completion | None:
            return None

    assert scheduler.call_now(Later(time), request()) is None
    assert scheduler.statistics() == SchedulerStatistics(0, 0, 0, 0, 0)


def test_call_now_leaves_a_subclass_that_overrides_only_complete_to_its_complete() -> None:
    # A subclass that makes the simulated model wait, count or fail overrides complete: its
    # inherited complete_now would skip that, so the scheduler does not use it.
    class Gated(SimulatedModel):
        async def complete(self, request: SampleRequest) -> Completion:
            raise AssertionError("not called here")

    scheduler = Scheduler()
    assert scheduler.call_now(Gated(preset="ideal"), request()) is None
    patched = SimulatedModel(preset="ideal")
    patched.complete = Gated(preset="ideal").complete  # type: ignore[method-assign]
    assert scheduler.call_now(patched, request()) is None
    assert scheduler.call_now(SimulatedModel(preset="ideal"), request()) is not None
    assert scheduler.statistics().calls == 1
