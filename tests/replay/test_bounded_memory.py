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

SHORT, LONG = 1_000, 100_000
"""Steps of the two synthetic runs the fold reads (six events a step: 600,000 in the long one)."""

BRIEF, LENGTHY = 5_000, 15_000
"""Steps of the runs the other readers read: three times longer is enough to see growth, and
tracing every allocation makes each event several times dearer to read. The short one is past
the report's caps already (4,096 responses, 1,024 flagged steps), so what grows is a leak."""

MiB = 1024 * 1024
GROWTH = 256 * 1024
"""What the long run's peak may exceed the short one's by: under half a byte for each of the
594,000 events more (the reader's row batches vary a little with the rows' sizes)."""

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


class _Logs:
    """One log per length, each written the first time a test asks for it (in this worker)."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._paths: dict[int, Path] = {}

    def __getitem__(self, steps: int) -> Path:
        if steps not in self._paths:
            path = self._directory / f"{steps}.db"
            anyio.run(self._write, path, steps)
            self._paths[steps] = path
        return self._paths[steps]

    @staticmethod
    async def _write(path: Path, steps: int) -> None:
        async with EventLog(path) as log:
            for event in _events("r", steps):
                await log.put(event)


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> _Logs:
    return _Logs(tmp_path_factory.mktemp("long"))


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
    short, long = min(peaks.items())[1], max(peaks.items())[1]
    assert long < short + GROWTH, f"peak grew from {short} to {long} bytes"
    assert long < limit, f"peak {long} bytes"


def test_a_fold_of_a_long_log_keeps_a_bounded_peak(logs: _Logs) -> None:
    peaks = {}
    for steps in (SHORT, LONG):
        summary, peaks[steps] = _peak(lambda e: summarize_async(e, per_step=False), logs[steps])
        assert (summary.steps, summary.samples, summary.events) == (steps, steps, 6 * steps + 1)
        assert summary.max_samples_per_step == 1
    _bounded(peaks, 4 * MiB)


def test_the_hardest_steps_of_a_long_log_come_from_a_bounded_heap(logs: _Logs) -> None:
    peaks = {}
    for steps in (BRIEF, LENGTHY):
        summary, peaks[steps] = _peak(lambda e: summarize_async(e, per_step=10), logs[steps])
        # Every step requested one sample: the first ten are kept, in step order.
        assert [r.step for r in summary.step_records] == list(range(10))
    _bounded(peaks, 4 * MiB)


def test_a_revote_of_a_long_log_keeps_a_bounded_peak(logs: _Logs) -> None:
    peaks = {}
    for steps in (BRIEF, LENGTHY):
        path = logs[steps]

        async def read(events: AsyncIterator[AnyEvent]) -> Any:
            return await revote_async(events, _CountTask(), k=1, keep_steps=False)

        report, peaks[steps] = _peak(read, path)
        # The recording flagged every fifth step's only response for its length; judged again,
        # every response is a valid vote, and one vote decides at k = 1.
        assert (report.revoted, report.decided_steps) == (steps, steps)
        assert (report.recorded_samples, report.samples_saved) == (steps, 0)
        assert report.short_steps == report.changed_steps == []
    _bounded(peaks, 4 * MiB)


def test_report_data_of_a_long_log_keeps_a_bounded_peak(logs: _Logs) -> None:
    peaks = {}
    points = {}
    for steps in (BRIEF, LENGTHY):
        data, peaks[steps] = _peak(report_data_async, logs[steps])
        assert data.steps_started == steps
        assert len(data.votes_to_decide) == steps
        assert sum(sum(r.values()) for r in data.red_flags_by_step.values()) == steps // 5
        assert len(data.latencies) <= 4097
        assert len(data.cost_over_time) <= 4097
        assert data.cost_over_time[-1][0] == pytest.approx(steps - 1 - 1_700_000_000.0)
        points[steps] = len(data.cost_over_time)
    # The votes of every decided step are kept, 4 bytes a step: 40 KB more in the long run.
    peaks[LENGTHY] -= 4 * (LENGTHY - BRIEF)
    # The cost series is thinned to at most 4,097 points, so two logs hold different numbers of
    # points below that bound (a pair of floats, about 112 bytes each): not growth with the log.
    peaks[LENGTHY] -= 112 * (points[LENGTHY] - points[BRIEF])
    _bounded(peaks, 4 * MiB)


@pytest.mark.anyio
async def test_a_verification_re_executes_a_long_run_in_bounded_memory(tmp_path: Path) -> None:
    """A real engine run, re-executed from its log: the recording holds about one step, and a
    helper process reading the log hands it over a batch at a time."""
    short, long = 400, 2_400
    for steps in (short, long):
        async with Engine(log=tmp_path / f"{steps}.db", client=ScriptedClient()) as engine:
            result = await engine.run(Count(steps), policy=Policy(k=2), seed=1)
        assert result.ok
    for read_ahead in (False, True):
        peaks = {}
        for steps in (short, long):
            tracemalloc.start()
            try:
                tracemalloc.reset_peak()
                verified = await verify_run(
                    tmp_path / f"{steps}.db", task=Count(steps), read_ahead=read_ahead
                )
                peaks[steps] = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert verified.ok
            assert verified.checked == verified.recorded > 8 * steps
        # A whole recording of the long run would be 21,600 events, over ten MB.
        assert peaks[long] < peaks[short] + GROWTH, (read_ahead, peaks)
        assert peaks[long] < 4 * MiB, (read_ahead, peaks)
