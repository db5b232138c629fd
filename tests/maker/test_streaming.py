"""Many runs in one engine, live event streams, late and slow subscribers, cancellation."""

from __future__ import annotations

from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from events import (
    AnyEvent,
    BreakerChanged,
    EventLog,
    RunFinished,
    SampleCancelled,
    SchedulerWaited,
    StateChanged,
    StepDecided,
)
from maker import (
    Completion,
    Engine,
    Limits,
    MakerError,
    Policy,
    RunHandle,
    SampleRequest,
    Scheduler,
    SimConfig,
    SimulatedModel,
)
from maker.tasks import Hanoi
from replay import load_events, resume_run, verify_log, verify_run

pytestmark = pytest.mark.anyio

LATENT = SimConfig(latency_ms=1.0, latency_sigma=0.3)


class Counting(SimulatedModel):
    """The simulated model, counting how many calls are in flight at once."""

    def __init__(self, config: SimConfig) -> None:
        super().__init__(config)
        self.in_flight = 0
        self.max_in_flight = 0

    async def complete(self, request: SampleRequest) -> Completion:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await super().complete(request)
        finally:
            self.in_flight -= 1


async def _all(handle: RunHandle, after_seq: int = -1) -> list[AnyEvent]:
    return [event async for event in handle.events(after_seq=after_seq)]


async def _wait_for_steps(handle: RunHandle, steps: int) -> None:
    """An ordering point on the run's own progress: return once it has taken ``steps`` steps."""
    async with aclosing(handle.events()) as stream:
        async for event in stream:
            if isinstance(event, StateChanged) and event.step + 1 >= steps:
                return


async def test_fifty_runs_share_one_engine_and_ten_cancelled_stay_resumable(
    tmp_path: Path,
) -> None:
    log = tmp_path / "many.db"
    client = Counting(LATENT)
    scheduler = Scheduler(Limits(concurrency=8))
    async with Engine(log=log, client=client, scheduler=scheduler) as engine:
        handles = [engine.start(Hanoi(5), policy=Policy(k=3), seed=i) for i in range(50)]
        doomed = handles[::5]
        cancelled = []

        async def cancel_midway(handle: RunHandle) -> None:
            await _wait_for_steps(handle, 3)
            cancelled.append(await handle.cancel())

        async with anyio.create_task_group() as tg:
            for handle in doomed:
                tg.start_soon(cancel_midway, handle)
        results = [await handle.result() for handle in handles]
    assert client.max_in_flight == 8  # the limit held across all runs, and was reached
    assert [r.status for r in cancelled] == ["cancelled"] * 10, [r.steps for r in cancelled]
    for handle, result in zip(handles, results, strict=True):
        if handle in doomed:
            assert result.status == "cancelled"
            assert 3 <= result.steps < 31
        else:
            assert result.status == "succeeded", result.reason
            assert result.steps == 31
    report = verify_log(log)
    assert len(report.runs) == 50
    assert all(run.ok for run in report.runs)
    for handle in handles[1:4]:  # untouched runs replay exactly
        assert (await verify_run(log, handle.run_id)).ok
    for handle in doomed[:3]:  # cancelled ones resume to the end
        resumed = await resume_run(log, handle.run_id, client=SimulatedModel(LATENT))
        assert resumed.ok
        assert resumed.steps == 31


async def test_a_late_subscriber_gets_every_event_once_in_order(tmp_path: Path) -> None:
    async with Engine(log=tmp_path / "late.db", client=SimulatedModel(LATENT)) as engine:
        handle = engine.start(Hanoi(6), policy=Policy(k=3), seed=1)
        await _wait_for_steps(handle, 20)
        assert handle.statistics().events > 100
        early, late = await _both(handle)
        await handle.result()
    logged = await load_events(tmp_path / "late.db", handle.run_id)
    assert late == logged
    assert early == logged
    assert [e.seq for e in late] == list(range(len(logged)))


async def test_a_late_subscriber_gets_the_events_so_far_while_the_run_waits(
    tmp_path: Path,
) -> None:
    # A run waiting for its model publishes nothing: a subscriber joining then gets what was
    # published before it joined at once, not when the model answers.
    from ._fakes import Count, ScriptedClient

    client = ScriptedClient(hold={"4:0"})
    async with Engine(log=tmp_path / "held.db", client=client) as engine:
        handle = engine.start(Count(8), policy=Policy(k=1), seed=1)
        await client.all_held.wait()
        published = handle.statistics().events
        seen: list[AnyEvent] = []
        with anyio.fail_after(10):  # a guard against hanging, not a timing check
            async with aclosing(handle.events()) as stream:
                async for event in stream:
                    seen.append(event)
                    if len(seen) == published:
                        break
        client.released.set()
        assert (await handle.result()).ok
    assert [e.seq for e in seen] == list(range(published))
    assert seen == (await load_events(tmp_path / "held.db", handle.run_id))[:published]


async def _both(handle: RunHandle) -> tuple[list[AnyEvent], list[AnyEvent]]:
    out: dict[str, list[AnyEvent]] = {}

    async def collect(name: str) -> None:
        out[name] = await _all(handle)

    async with anyio.create_task_group() as tg:
        tg.start_soon(collect, "early")
        await _wait_for_steps(handle, 40)
        tg.start_soon(collect, "late")
    return out["early"], out["late"]


async def test_a_stalled_subscriber_never_holds_the_engine_back(tmp_path: Path) -> None:
    release = anyio.Event()
    received: list[AnyEvent] = []
    async with Engine(log=tmp_path / "slow.db", client=SimulatedModel()) as engine:
        handle = engine.start(Hanoi(8), policy=Policy(k=3), seed=2)  # thousands of events

        async def stalled() -> None:
            async for event in handle.events():
                received.append(event)
                if len(received) == 10:
                    await release.wait()  # stops reading for the rest of the run

        async with anyio.create_task_group() as tg:
            tg.start_soon(stalled)
            result = await handle.result()  # finishes while the subscriber reads nothing
            assert len(received) <= 10
            assert not release.is_set()
            assert handle.statistics().events > 1024  # more than its buffer holds
            release.set()
    assert result.ok
    logged = await load_events(tmp_path / "slow.db", handle.run_id)
    assert received == logged  # it caught up from the log: every event, once, in order
    assert handle.statistics().catch_ups >= 1
    assert handle.statistics().subscribers == 0


async def test_a_subscriber_that_stops_listening_is_released(tmp_path: Path) -> None:
    async with Engine(log=tmp_path / "stop.db", client=SimulatedModel(LATENT)) as engine:
        handle = engine.start(Hanoi(5), policy=Policy(k=3), seed=3)
        seen = 0
        async with aclosing(handle.events()) as stream:
            async for event in stream:
                seen += 1
                assert handle.statistics().subscribers == 1
                if isinstance(event, StepDecided):
                    break
        assert handle.statistics().subscribers == 0
        assert (await handle.result()).ok
        after = await _all(handle, after_seq=seen - 1)  # resume from where it stopped
    assert after[0].seq == seen
    assert isinstance(after[-1], RunFinished)


async def test_one_run_failing_does_not_disturb_another(tmp_path: Path) -> None:
    class Broken(Hanoi):
        def apply(self, state: Any, answer: Any) -> Any:
            if state.previous_move is not None:
                raise RuntimeError("a bug in task code")
            return super().apply(state, answer)

    async with Engine(log=tmp_path / "two.db", client=SimulatedModel(LATENT)) as engine:
        broken = engine.start(Broken(4), seed=1)
        fine = engine.start(Hanoi(4), seed=1)
        with pytest.raises(RuntimeError, match="a bug in task code"):
            await broken.result()
        assert (await fine.result()).ok


async def test_cancelling_the_enclosing_scope_records_every_run_as_cancelled(
    tmp_path: Path,
) -> None:
    path = tmp_path / "scope.db"
    with anyio.CancelScope() as scope:
        async with Engine(log=path, client=SimulatedModel(LATENT)) as engine:
            handles = [engine.start(Hanoi(6), seed=i) for i in range(3)]
            await _wait_for_steps(handles[0], 5)
            scope.cancel()
            await anyio.sleep_forever()
    async with EventLog(path, mode="r") as log:
        runs = await log.runs()
    assert len(runs) == 3
    assert all(info.finished is not None for info in runs)
    assert {info.finished.status for info in runs if info.finished} == {"cancelled"}
    assert all(h.done for h in handles)


async def test_a_run_resumed_in_the_background_streams_and_decides_as_if_unbroken(
    tmp_path: Path,
) -> None:
    from maker import Recording

    log = tmp_path / "resume.db"
    async with Engine(log=log, client=SimulatedModel(LATENT)) as engine:
        first = engine.start(Hanoi(6), policy=Policy(k=2), seed=5)
        await _wait_for_steps(first, 10)
        await first.cancel()
        recording = Recording(await load_events(log, first.run_id))
        handle = engine.start_resume(Hanoi(6), recording)
        with pytest.raises(MakerError, match="already running"):
            engine.start_resume(Hanoi(6), recording)
        streamed = await _all(handle)
        result = await handle.result()
        unbroken = await engine.run(Hanoi(6), policy=Policy(k=2), seed=5)
    assert result.ok
    assert result.steps == unbroken.steps == 63
    # The stream carries the re-executed prefix and the live rest, in seq order, each event as
    # the log has it; only the recorded waits and the interruption it continues from are not
    # re-executed, so they stay in the log alone.
    logged = {e.seq: e for e in await load_events(log, first.run_id)}
    seqs = [e.seq for e in streamed]
    assert seqs == sorted(set(seqs))
    assert all(type(logged[e.seq]) is type(e) for e in streamed)
    left_out = {type(logged[seq]) for seq in set(logged) - set(seqs)}
    assert left_out <= {SchedulerWaited, BreakerChanged, SampleCancelled, RunFinished}
    decided = [e.winner for e in streamed if isinstance(e, StepDecided)]
    later = [
        e.winner for e in await load_events(log, unbroken.run_id) if isinstance(e, StepDecided)
    ]
    assert decided == later
    assert (await verify_run(log, first.run_id)).ok


async def test_a_background_resume_that_diverges_appends_nothing(tmp_path: Path) -> None:
    from maker import Divergence, Recording

    log = tmp_path / "diverge.db"
    async with Engine(log=log, client=SimulatedModel(LATENT)) as engine:
        first = engine.start(Hanoi(6), policy=Policy(k=2), seed=5)
        await _wait_for_steps(first, 5)
        await first.cancel()
        before = await load_events(log, first.run_id)
        # Another k decides differently from the recorded votes: the prefix cannot reproduce.
        handle = engine.start_resume(Hanoi(6), Recording(before), policy=Policy(k=4))
        with pytest.raises(Divergence):
            await handle.result()
        done = Recording(await load_events(log, (await engine.run(Hanoi(3))).run_id))
        with pytest.raises(MakerError, match="nothing to resume"):
            engine.start_resume(Hanoi(3), done)
    assert await load_events(log, first.run_id) == before


async def test_a_resume_cancelled_before_it_recorded_anything_says_so(tmp_path: Path) -> None:
    from maker import CancelledBeforeStart, Recording

    log = tmp_path / "cut.db"
    async with Engine(log=log, client=SimulatedModel(LATENT)) as engine:
        first = engine.start(Hanoi(6), policy=Policy(k=2), seed=5)
        await _wait_for_steps(first, 10)
        await first.cancel()
        before = await load_events(log, first.run_id)
        # Cancelled at once, before its first turn, so while (before) it re-executes its log.
        handle = engine.start_resume(Hanoi(6), Recording(before))
        with pytest.raises(CancelledBeforeStart, match="cancelled before it started"):
            await handle.cancel()
        assert handle.done
        # Nothing was appended, and the run resumes as before.
        assert await load_events(log, first.run_id) == before
        again = await engine.start_resume(Hanoi(6), Recording(before)).result()
    assert again.ok
