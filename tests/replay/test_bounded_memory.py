"""Reading a long log holds neither its events nor its samples: folds, re-vote, report and
re-execution stream in seq order, so their peak memory does not grow with the run.

Each test measures the peak that ``tracemalloc`` sees (every Python allocation, in every thread:
aiosqlite reads on one) while a short and a ten times longer run are read, and asserts

- that the long run's peak exceeds the short one's by less than a small allowance, where a
  reader that kept the events would need hundreds of bytes for every event (the whole list of
  a 100,000-step run is over 200 MB); and
- an absolute bound, a few MiB: the reader's batch of rows, one step's events, the fold's
  counters, and a fixed allowance for the interpreter's own caches.

The long logs are written straight into the store with :meth:`events.EventLog.put`, from the
counting-task events of ``tests/events/_factory.py``, a few hundred steps at a time.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest

from events import AnyEvent, EventLog
from maker import Engine, Policy
from replay import report_data_async, revote_async, summarize_async, verify_run

from ..events._factory import run_events
from ..maker._fakes import Count, ScriptedClient
from .test_revote import _CountTask

SHORT, LONG = 10_000, 100_000
"""Steps of the two synthetic runs (six events a step: 600,000 events in the long one)."""

MiB = 1024 * 1024
GROWTH = 256 * 1024
"""What the long run's peak may exceed the short one's by: under half a byte for each of the
540,000 events more (the reader's row batches vary a little with the rows' sizes)."""

T = TypeVar("T")


def _events(run_id: str, steps: int, chunk: int = 500) -> Iterator[AnyEvent]:
    """A counting-task run of ``steps`` steps, one sample a step, built a chunk at a time."""
    yield from run_events(run_id, 0, finished=False)
    seq = 1
    for first in range(0, steps, chunk):
        events = run_events(
            run_id,
            min(chunk, steps - first),
            samples_per_step=1,
            first_seq=seq,
            first_step=first,
            start=False,
            finished=False,
        )
        seq += len(events)
        yield from events


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """One log per length, written once for the module."""
    directory = tmp_path_factory.mktemp("long")

    async def write(path: Path, steps: int) -> None:
        async with EventLog(path) as log:
            for event in _events("r", steps):
                await log.put(event)

    out = {}
    for steps in (SHORT, LONG):
        out[steps] = directory / f"{steps}.db"
        anyio.run(write, out[steps], steps)
    return out


def _peak(read: Callable[[AsyncIterator[AnyEvent]], Awaitable[T]], path: Path) -> tuple[T, int]:
    """What ``read`` returns for the run's events, and the peak traced while it read them."""

    async def go() -> T:
        async with EventLog(path, mode="r") as log, aclosing(log.read("r")) as events:
            return await read(events)

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = anyio.run(go)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _bounded(peaks: dict[int, int], limit: int) -> None:
    short, long = peaks[SHORT], peaks[LONG]
    assert long < short + GROWTH, f"peak grew from {short} to {long} bytes"
    assert long < limit, f"peak {long} bytes"


def test_a_fold_of_a_long_log_keeps_a_bounded_peak(logs: dict[int, Path]) -> None:
    peaks = {}
    for steps, path in logs.items():
        summary, peaks[steps] = _peak(lambda e: summarize_async(e, per_step=False), path)
        assert (summary.steps, summary.samples, summary.events) == (steps, steps, 6 * steps + 1)
        assert summary.max_samples_per_step == 1
    _bounded(peaks, 4 * MiB)


def test_the_hardest_steps_of_a_long_log_come_from_a_bounded_heap(logs: dict[int, Path]) -> None:
    peaks = {}
    for steps, path in logs.items():
        summary, peaks[steps] = _peak(lambda e: summarize_async(e, per_step=10), path)
        # Every step requested one sample: the first ten are kept, in step order.
        assert [r.step for r in summary.step_records] == list(range(10))
    _bounded(peaks, 4 * MiB)


def test_a_revote_of_a_long_log_keeps_a_bounded_peak(logs: dict[int, Path]) -> None:
    peaks = {}
    for steps, path in logs.items():

        async def read(events: AsyncIterator[AnyEvent]) -> Any:
            return await revote_async(events, _CountTask(), k=1, keep_steps=False)

        report, peaks[steps] = _peak(read, path)
        # The recording flagged every fifth step's only response for its length; judged again,
        # every response is a valid vote, and one vote decides at k = 1.
        assert (report.revoted, report.decided_steps) == (steps, steps)
        assert (report.recorded_samples, report.samples_saved) == (steps, 0)
        assert report.short_steps == report.changed_steps == []
    _bounded(peaks, 4 * MiB)


def test_report_data_of_a_long_log_keeps_a_bounded_peak(logs: dict[int, Path]) -> None:
    peaks = {}
    for steps, path in logs.items():
        data, peaks[steps] = _peak(report_data_async, path)
        assert data.steps_started == steps
        assert len(data.votes_to_decide) == steps
        assert sum(sum(r.values()) for r in data.red_flags_by_step.values()) == steps // 5
        assert len(data.latencies) <= 4097
        assert data.cost_over_time[-1][0] == pytest.approx(steps - 1 - 1_700_000_000.0)
    # The votes of every decided step are kept, 4 bytes a step: 360 KB more in the long run.
    peaks[LONG] -= 4 * (LONG - SHORT)
    _bounded(peaks, 4 * MiB)


@pytest.mark.anyio
async def test_a_verification_re_executes_a_long_run_in_bounded_memory(tmp_path: Path) -> None:
    """A real engine run, re-executed from its log: the recording holds about one step."""
    short, long = 500, 5_000
    peaks = {}
    for steps in (short, long):
        path = tmp_path / f"{steps}.db"
        async with Engine(log=path, client=ScriptedClient()) as engine:
            result = await engine.run(Count(steps), policy=Policy(k=2), seed=1)
        assert result.ok
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            verified = await verify_run(path, task=Count(steps))
            peaks[steps] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert verified.ok
        assert verified.checked == verified.recorded > 8 * steps
    # A whole recording of the long run would be 45,000 events, tens of MB.
    assert peaks[long] < peaks[short] + GROWTH, peaks
    assert peaks[long] < 4 * MiB, peaks
