"""Counterfactual re-votes on real logs: the recorded policy reproduces the run exactly, and
other policies change what the recorded samples decide in the ways the rules say."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner

from events import (
    AnyEvent,
    RedFlagged,
    RunStarted,
    SampleReceived,
    StepDecided,
    UnknownRunError,
    VoteCounted,
)
from maker import ConfigError, Policy, Prompt, RedFlagRules, Task, UnknownTaskError
from maker.tasks import Arithmetic, Hanoi, make_task
from replay import UNCHANGED, BrokenLogError, RevoteReport, revote
from replay._commands import describe, revote_command_impl

from ..events._factory import run_events
from ._logs import copy_log, load, record, tampering


@dataclass(frozen=True)
class Run:
    path: Path
    run_id: str
    events: list[AnyEvent]

    @property
    def task(self) -> Any:
        started = self.events[0]
        assert isinstance(started, RunStarted)
        return make_task(started.task, started.task_params)

    def decided(self) -> list[StepDecided]:
        return [e for e in self.events if isinstance(e, StepDecided)]

    def per_step(self, kind: type[Any]) -> dict[int, list[Any]]:
        out: dict[int, list[Any]] = defaultdict(list)
        for e in self.events:
            if isinstance(e, kind):
                out[e.step].append(e)
        return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Run]:
    """Two tasks, several seeds, k = 2: red flags, disagreements, multi-sample steps."""
    root = tmp_path_factory.mktemp("revote")
    out: list[Run] = []
    for name, make in (
        ("hanoi", lambda: Hanoi(5)),
        ("arith", lambda: Arithmetic(steps=15, digits=4, seed=2)),
    ):
        path = root / f"{name}.db"
        for result in record(path, make, [1, 2, 3]):
            out.append(Run(path, result.run_id, load(path, result.run_id)))
    return out


def test_the_recorded_policy_reproduces_every_step_exactly(runs: list[Run]) -> None:
    for run in runs:
        report = revote(run.events, run.task, k=2)
        decided = run.decided()
        assert len(report.steps) == len(decided) > 0
        for step, d in zip(report.steps, decided, strict=True):
            assert step.step == d.step
            assert step.winner == step.recorded_winner == d.winner
            assert not step.changed
            # Speculation is off, so every requested sample was received and consumed.
            assert step.needed == step.recorded_samples == step.requested == d.samples
            assert step.red_flags == d.red_flags
            assert step.votes == d.votes
            assert step.saved == 0
        assert report.changed_steps == []
        assert report.short_steps == []
        assert report.samples_saved == 0
        assert report.needed_samples == report.recorded_samples
        assert (report.k, report.rule) == (report.recorded_k, report.recorded_rule) == (2, "ahead")
    # The logs are not trivial: some steps took more than k samples, some samples were flagged.
    assert any(s.samples > 2 for run in runs for s in run.decided())
    assert any(s.red_flags for run in runs for s in run.decided())


def test_a_larger_k_needs_more_samples_than_were_recorded(runs: list[Run]) -> None:
    for run in runs:
        report = revote(run.events, run.task, k=3)
        # Each step stopped the moment its lead reached 2: one more vote was always needed.
        assert report.short_steps == [d.step for d in run.decided()]
        assert all(s.more_votes_needed == 1 and s.needed is None for s in report.steps)
        assert report.changed_steps == []
        assert report.samples_saved == 0
        assert report.decided_steps == 0


def test_k_of_one_decides_at_the_first_valid_vote_and_saves_the_rest(runs: list[Run]) -> None:
    saved_somewhere = False
    for run in runs:
        report = revote(run.events, run.task, k=1)
        received = run.per_step(SampleReceived)
        votes = run.per_step(VoteCounted)
        expected_saved = 0
        for step in report.steps:
            first_vote = votes[step.step][0]
            order = [r.sample_id for r in received[step.step]]
            needed = order.index(first_vote.sample_id) + 1
            assert step.winner == first_vote.candidate
            assert step.needed == needed
            assert step.red_flags == needed - 1
            expected_saved += len(order) - needed
        assert report.samples_saved == expected_saved
        assert report.short_steps == []
        saved_somewhere |= expected_saved > 0
        # A step decided differently exactly when its first valid vote was not the winner.
        assert report.changed_steps == [
            s.step for s in report.steps if votes[s.step][0].candidate != s.recorded_winner
        ]
    assert saved_somewhere


def test_first_to_k_decides_when_a_candidate_reaches_k(runs: list[Run]) -> None:
    for run in runs:
        report = revote(run.events, run.task, k=2, rule="first")
        assert report.rule == "first"
        received = run.per_step(SampleReceived)
        for step in report.steps:
            counts: dict[str, int] = defaultdict(int)
            winner = None
            for vote in run.per_step(VoteCounted)[step.step]:
                counts[vote.candidate] += 1
                if counts[vote.candidate] == 2:
                    winner, last = vote.candidate, vote.sample_id
                    break
            # The recorded ahead-by-2 decision implies some candidate reached 2 votes.
            assert winner is not None
            assert step.winner == winner
            order = [r.sample_id for r in received[step.step]]
            assert step.needed == order.index(last) + 1


def test_a_stricter_token_threshold_flags_more_and_changes_what_steps_need(
    runs: list[Run],
) -> None:
    limit = 540  # about the simulated model's mean output length
    shorts = 0
    for run in runs:
        report = revote(run.events, run.task, k=2, max_output_tokens=limit)
        assert report.red_flags["max_output_tokens"] == limit
        flagged_before = {e.sample_id for e in run.events if isinstance(e, RedFlagged)}
        received = run.per_step(SampleReceived)
        for step in report.steps:
            samples = received[step.step]
            consumed = samples if step.needed is None else samples[: step.needed]
            # Flagged now: what was flagged before, and everything over the new limit.
            expected = sum(
                1 for r in consumed if r.sample_id in flagged_before or r.output_tokens > limit
            )
            assert step.red_flags == expected
        shorts += len(report.short_steps)
        assert sum(s.red_flags for s in report.steps) > sum(d.red_flags for d in run.decided())
    assert shorts > 0


def test_without_a_token_limit_only_cut_off_and_malformed_responses_are_flagged(
    runs: list[Run],
) -> None:
    truncated = 0
    for run in runs:
        report = revote(run.events, run.task, k=2, max_output_tokens=None)
        reasons = {e.sample_id: e.reason for e in run.events if isinstance(e, RedFlagged)}
        truncated += sum(r == "truncated" for r in reasons.values())
        received = run.per_step(SampleReceived)
        for step in report.steps:
            samples = received[step.step]
            consumed = samples if step.needed is None else samples[: step.needed]
            # The engine checks truncation before length, so "too_long" marks exactly the
            # responses that were long but not cut off: only those are let through now.
            expected = sum(
                1 for r in consumed if reasons.get(r.sample_id, "too_long") != "too_long"
            )
            assert step.red_flags == expected
    assert truncated > 0


def test_a_looser_threshold_and_no_truncation_flag_count_more_votes(runs: list[Run]) -> None:
    run = next(
        r
        for r in runs
        if any(e.reason == "truncated" for e in r.events if isinstance(e, RedFlagged))
    )
    strict = revote(run.events, run.task, k=2)
    loose = revote(run.events, run.task, k=2, max_output_tokens=None, flag_truncated=False)
    assert loose.red_flags["max_output_tokens"] is None
    assert loose.red_flags["flag_truncated"] is False
    # Only malformed responses are flagged now; overlong ones vote (and can save samples).
    assert sum(s.red_flags for s in loose.steps) < sum(s.red_flags for s in strict.steps)
    assert loose.samples_saved >= 0
    assert any(n.startswith("after a step that decides differently") for n in loose.notes)


def test_the_defaults_are_the_recorded_settings(runs: list[Run]) -> None:
    run = runs[0]
    given = revote(
        run.events,
        run.task,
        k=2,
        rule="ahead",
        max_output_tokens=750,
        flag_truncated=True,
        checks=(),
    )
    default = revote(run.events, run.task, k=2)
    assert given == default
    assert repr(UNCHANGED) == "UNCHANGED"
    assert default.red_flags == RedFlagRules().describe() == default.recorded_red_flags


def test_invalid_settings_name_their_field(runs: list[Run]) -> None:
    run = runs[0]
    with pytest.raises(ConfigError, match=r"^k:"):
        revote(run.events, run.task, k=0)
    with pytest.raises(ConfigError, match=r"^rule:"):
        revote(run.events, run.task, k=2, rule="most")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_output_tokens"):
        revote(run.events, run.task, k=2, max_output_tokens=0)
    with pytest.raises(ConfigError, match=r"^events:"):
        revote(run.events[1:], run.task, k=2)


def test_recorded_user_checks_must_be_given_again() -> None:
    events = run_events("r", 3)
    started = events[0]
    assert isinstance(started, RunStarted)
    policy = Policy().describe()
    policy["red_flags"]["checks"] = ["no_apologies"]
    events[0] = msgspec.structs.replace(started, policy=policy)
    task = _CountTask()
    with pytest.raises(ConfigError, match="no_apologies"):
        revote(events, task, k=2)

    def never(completion: Any) -> str | None:
        return None

    report = revote(events, task, k=2, checks=(never,))
    assert report.red_flags["checks"] == ["never"]
    # The factory's responses say "move = N"; the counting task parses them, and each step's
    # recorded samples decide it again.
    assert report.short_steps == []


def test_cut_off_responses_are_flagged_unless_the_rule_is_off() -> None:
    events: list[AnyEvent] = []
    for event in run_events("r", 3, samples_per_step=3):
        if isinstance(event, SampleReceived) and event.sample_id == "1:0":
            event = msgspec.structs.replace(event, finish_reason="length")
        events.append(event)
    task = _CountTask()
    flagged = revote(events, task, k=2)
    assert [(s.needed, s.red_flags, s.saved) for s in flagged.steps] == [
        (2, 0, 1),
        (3, 1, 0),
        (2, 0, 1),
    ]
    kept = revote(events, task, k=2, flag_truncated=False)
    assert [(s.needed, s.red_flags) for s in kept.steps] == [(2, 0), (2, 0), (2, 0)]
    assert kept.samples_saved == 3


class _CountTask(Task[int, dict[str, int]]):
    """Parses the factory's ``move = N`` responses (the events tests' counting task)."""

    name = "count"

    def initial_state(self) -> int:
        return 0

    def is_done(self, state: int) -> bool:
        return False

    def prompt(self, state: int) -> Prompt:
        return Prompt(system="", user=str(state))

    def parse(self, text: str) -> dict[str, int]:
        return {"move": int(text.rsplit("=", 1)[1])}

    def apply(self, state: int, answer: dict[str, int]) -> int:
        return answer["move"]


def test_a_step_undecided_at_the_end_is_noted_and_not_revoted(runs: list[Run]) -> None:
    run = runs[0]
    last = run.decided()[-1]
    cut = [e for e in run.events if e.seq < last.seq]  # the recording stops before the decision
    report = revote(cut, run.task, k=2)
    assert [s.step for s in report.steps] == [d.step for d in run.decided()[:-1]]
    assert any(f"step {last.step} was undecided" in n for n in report.notes)


# -- the command -----------------------------------------------------------------------------


def test_revote_command_text_and_json(runs: list[Run]) -> None:
    from maker.apps.cli._cli import app

    run = runs[0]
    runner = CliRunner()
    result = runner.invoke(app, ["replay", str(run.path), "--run", run.run_id, "--k", "1"])
    assert result.exit_code == 0, result.output
    report = revote(run.events, run.task, k=1)
    assert result.output.splitlines() == describe(report)
    assert "k=1 (recorded 2)" in result.output
    assert f"{report.samples_saved} saved of {report.recorded_samples} recorded" in result.output

    result = runner.invoke(
        app,
        [
            "replay",
            str(run.path),
            "--run",
            run.run_id[:10],
            "--k",
            "3",
            "--red-flag-tokens",
            "600",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    expected = revote(run.events, run.task, k=3, max_output_tokens=600)
    assert data == json.loads(json.dumps(expected.to_json()))
    assert data["short_steps"] == [d.step for d in run.decided()]
    assert data["recorded"]["k"] == 2


def test_revote_command_impl_uses_the_recorded_settings_by_default(
    runs: list[Run], capsys: pytest.CaptureFixture[str]
) -> None:
    run = runs[0]
    assert revote_command_impl(run.path, run.run_id, None, None, None, True) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["k"], data["rule"], data["samples_saved"]) == (2, "ahead", 0)
    assert data["changed_steps"] == data["short_steps"] == []


def test_revote_command_refuses_a_broken_log(runs: list[Run], tmp_path: Path) -> None:
    run = runs[0]
    copy = copy_log(run.path, tmp_path / "copy.db")
    with tampering(copy) as conn:
        conn.execute(
            "DELETE FROM events WHERE run = (SELECT key FROM runs WHERE run_id = ?) AND seq = 5",
            (run.run_id,),
        )
    with pytest.raises(BrokenLogError, match="at seq 5: seq 5 missing"):
        revote_command_impl(copy, run.run_id, 1, None, None, False)


def test_revote_command_errors(runs: list[Run], tmp_path: Path) -> None:
    run = runs[0]
    with pytest.raises(UnknownRunError):
        revote_command_impl(run.path, "nope", 1, None, None, False)
    with pytest.raises(UnknownRunError, match="name one with --run"):
        revote_command_impl(run.path, None, 1, None, None, False)
    import click

    with pytest.raises(click.UsageError, match="--rule"):
        revote_command_impl(run.path, run.run_id, 1, "most", None, False)
    with pytest.raises(click.UsageError, match="--k"):
        revote_command_impl(run.path, run.run_id, 0, None, None, False)

    # A log of a task that is not built in cannot be re-voted from the command line.
    path = tmp_path / "count.db"
    import anyio

    from events import EventLog

    async def write() -> None:
        async with EventLog(path) as log:
            for event in run_events("c", 2):
                log.append(event)

    anyio.run(write)
    with pytest.raises(UnknownTaskError):
        revote_command_impl(path, None, 1, None, None, False)


def test_report_json_is_plain_data(runs: list[Run]) -> None:
    report: RevoteReport = revote(runs[0].events, runs[0].task, k=1)
    data = report.to_json(steps=True)
    assert msgspec.json.decode(msgspec.json.encode(data)) == data
    assert len(data["per_step"]) == len(report.steps)
    assert data["changed"] == [s.to_json() for s in report.steps if s.changed]
