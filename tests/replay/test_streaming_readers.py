"""The streaming readers agree with the whole-list ones: a recording read from the log, the
decision filter, and ``maker show --steps``, which lists the hardest steps from a heap."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
from click.testing import CliRunner

from events import AnyEvent, EventLog, RunFinished, RunResumed, SampleCancelled
from maker import Policy, Recording, decision_events
from maker.apps.cli._cli import app
from maker.tasks import Hanoi
from replay import summarize

from ..events._factory import run_events
from ._logs import load, record


def _interrupted() -> list[AnyEvent]:
    """A run cancelled mid-step and resumed, then cancelled again at its end."""
    first = run_events("r", 2, finished=False)
    seq = len(first)
    cut: list[AnyEvent] = [
        SampleCancelled(
            run_id="r", seq=seq, ts=1.0, step=2, sample_id="2:0", reason="run_cancelled"
        ),
        RunFinished(run_id="r", seq=seq + 1, ts=2.0, status="cancelled", steps=2, samples=6),
        RunResumed(run_id="r", seq=seq + 2, ts=3.0, replayed=seq),
    ]
    rest = run_events("r", 1, first_seq=seq + 3, first_step=2, start=False, finished=False)
    end = rest[-1].seq + 1
    again: list[AnyEvent] = [
        SampleCancelled(
            run_id="r", seq=end, ts=4.0, step=3, sample_id="3:0", reason="run_cancelled"
        ),
        RunFinished(run_id="r", seq=end + 1, ts=5.0, status="cancelled", steps=3, samples=9),
    ]
    return [*first, *cut, *rest, *again]


def test_the_decisions_drop_each_interruption_and_a_recording_the_last_one_too() -> None:
    events = _interrupted()
    kept = decision_events(events)
    assert not any(isinstance(e, RunResumed) for e in kept)
    # The resumed interruption is gone; the last one stays, as the log's last events.
    assert [e.seq for e in kept[-2:]] == [events[-2].seq, events[-1].seq]
    assert events[len(run_events("r", 2, finished=False))] not in kept

    async def reproduce() -> list[AnyEvent]:
        recording = Recording(events)
        out: list[AnyEvent] = []
        position = 0
        while True:
            await recording.ready(position)
            event = recording.expected_at(position)
            if event is None:
                return out
            recording.check(position, event)
            out.append(event)
            position += 1

    # A recording resumes from before its last cancellation.
    assert anyio.run(reproduce) == kept[:-2]
    assert Recording(events).resumable
    assert Recording(events).next_seq == events[-1].seq + 1


def test_a_recording_read_from_the_log_serves_what_one_from_a_list_serves(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    (result,) = record(path, lambda: Hanoi(4), [3], policy=Policy(k=2))
    events = load(path, result.run_id)

    async def walk(recording: Recording) -> tuple[list[int], int]:
        seqs: list[int] = []
        position = 0
        while recording.pending(position):
            await recording.ready(position)
            event = recording.expected_at(position)
            if event is None:
                break
            recording.check(position, event)
            seqs.append(event.seq)
            position += 1
        return seqs, await recording.length()

    async def from_log() -> tuple[list[int], int, bool]:
        async with EventLog(path, mode="r") as log, Recording.open(log) as recording:
            seqs, length = await walk(recording)
            return seqs, length, recording.resumable

    listed = anyio.run(walk, Recording(events))
    seqs, length, resumable = anyio.run(from_log)
    assert (seqs, length) == listed
    assert length == len(decision_events(events)) == len(seqs)
    assert not resumable


def test_show_lists_the_steps_that_needed_the_most_samples(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    (result,) = record(path, lambda: Hanoi(5), [2], policy=Policy(k=2))
    full = summarize(load(path, result.run_id))
    out = CliRunner().invoke(app, ["show", str(path), "--json", "--steps", "4"])
    assert out.exit_code == 0, out.output
    shown = json.loads(out.output)
    want = sorted(full.step_records, key=lambda r: (-r.samples, r.step))[:4]
    assert shown["hardest_steps"] == [r.to_json() for r in want]
    plain = CliRunner().invoke(app, ["show", str(path), "--json"])
    assert "hardest_steps" not in json.loads(plain.output)
