"""Counterfactual re-vote: what another k, voting rule or red-flag rule would have decided,
judged offline on the samples a run recorded. No model is called.

For every step the run decided, the step's recorded responses are taken in the order they were
received. Each is judged again, by the new red-flag rules and then the task's strict parser, and
the valid ones vote into a fresh :class:`maker.Tally` until it decides. The step is then reported
as decided or not, with its new winner and how many of its recorded samples the decision used.

**Caveat.** Only the recorded samples exist. After a step that would have decided differently,
the real run would have gone on from a different state; this re-vote keeps judging the later
steps on the samples drawn for the recorded states, so everything after the first changed step
is counterfactual twice over. Likewise a step that needs more samples than were recorded is
reported as such: what those extra samples would have said is unknown.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

from events import (
    AnyEvent,
    RunStarted,
    SampleReceived,
    StepDecided,
    StepStarted,
    canonical_json,
)
from maker import (
    Completion,
    ConfigError,
    RedFlag,
    RedFlagCheck,
    RedFlagRules,
    Tally,
    Task,
    VoteRule,
)


class _Unchanged(enum.Enum):
    UNCHANGED = "unchanged"

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = _Unchanged.UNCHANGED
"""Keep the setting the run recorded (the default of every :func:`revote` option)."""

Unchanged = Literal[_Unchanged.UNCHANGED]


@dataclass(frozen=True, slots=True, kw_only=True)
class StepRevote:
    """One step re-voted under the new policy.

    ``recorded_samples`` counts the responses the step received (the outcomes the re-vote can
    use); ``requested`` also counts samples cancelled or never answered. ``needed`` is how many
    received responses, red-flagged ones included, the new decision consumed; None when the
    recorded responses do not decide the step under the new policy.
    """

    step: int
    recorded_winner: str
    winner: str | None
    recorded_samples: int
    requested: int
    needed: int | None
    red_flags: int
    """Responses the new rules (or the parser) flagged among those consumed."""
    votes: dict[str, int]
    """The new tally: at the decision, or after every recorded response when undecided."""
    more_votes_needed: int = 0
    """When undecided: the fewest further valid votes that could decide (k minus the lead)."""

    @property
    def decided(self) -> bool:
        """Whether the recorded responses decide the step under the new policy."""
        return self.winner is not None

    @property
    def changed(self) -> bool:
        """Whether the step decides, and for another answer than the recorded one."""
        return self.winner is not None and self.winner != self.recorded_winner

    @property
    def saved(self) -> int:
        """Recorded responses the new decision did not need (0 when undecided)."""
        return self.recorded_samples - self.needed if self.needed is not None else 0

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible builtins."""
        return {
            "step": self.step,
            "recorded_winner": self.recorded_winner,
            "winner": self.winner,
            "decided": self.decided,
            "changed": self.changed,
            "recorded_samples": self.recorded_samples,
            "requested": self.requested,
            "needed": self.needed,
            "red_flags": self.red_flags,
            "votes": dict(self.votes),
            "more_votes_needed": self.more_votes_needed,
        }


@dataclass(frozen=True, kw_only=True)
class RevoteReport:
    """A whole run re-voted: the new policy, the recorded one, and every decided step."""

    run_id: str
    k: int
    rule: VoteRule
    red_flags: dict[str, Any]
    """The red-flag rules applied (as :meth:`maker.RedFlagRules.describe` gives them)."""
    recorded_k: int
    recorded_rule: str
    recorded_red_flags: dict[str, Any]
    steps: tuple[StepRevote, ...]
    notes: tuple[str, ...] = ()
    """Caveats that apply to this run (a threshold past the recorded cap, an undecided step)."""

    @property
    def changed_steps(self) -> list[int]:
        """Steps that would have decided for another answer."""
        return [s.step for s in self.steps if s.changed]

    @property
    def short_steps(self) -> list[int]:
        """Steps that would have needed more samples than were recorded."""
        return [s.step for s in self.steps if not s.decided]

    @property
    def samples_saved(self) -> int:
        """Over the steps that decide: recorded responses minus those the new policy needed."""
        return sum(s.saved for s in self.steps)

    @property
    def recorded_samples(self) -> int:
        """Responses the re-voted steps received."""
        return sum(s.recorded_samples for s in self.steps)

    @property
    def needed_samples(self) -> int:
        """Responses the new policy consumed, over the steps that decide."""
        return sum(s.needed for s in self.steps if s.needed is not None)

    @property
    def decided_steps(self) -> int:
        """How many re-voted steps the recorded responses decide under the new policy."""
        return sum(1 for s in self.steps if s.decided)

    def to_json(self, *, steps: bool = False) -> dict[str, Any]:
        """JSON-compatible builtins. The changed steps are given in full; ``steps`` adds all."""
        out: dict[str, Any] = {
            "run_id": self.run_id,
            "k": self.k,
            "rule": self.rule,
            "red_flags": self.red_flags,
            "recorded": {
                "k": self.recorded_k,
                "rule": self.recorded_rule,
                "red_flags": self.recorded_red_flags,
            },
            "steps": len(self.steps),
            "decided_steps": self.decided_steps,
            "changed_steps": self.changed_steps,
            "short_steps": self.short_steps,
            "recorded_samples": self.recorded_samples,
            "needed_samples": self.needed_samples,
            "samples_saved": self.samples_saved,
            "changed": [s.to_json() for s in self.steps if s.changed],
            "notes": list(self.notes),
        }
        if steps:
            out["per_step"] = [s.to_json() for s in self.steps]
        return out


def revote(
    events: Iterable[AnyEvent],
    task: Task[Any, Any],
    *,
    k: int,
    rule: VoteRule | Unchanged = UNCHANGED,
    max_output_tokens: int | Unchanged | None = UNCHANGED,
    flag_truncated: bool | Unchanged = UNCHANGED,
    checks: tuple[RedFlagCheck, ...] | Unchanged = UNCHANGED,
) -> RevoteReport:
    """Re-vote every decided step of one run (its events in seq order) under a new policy.

    ``rule``, ``max_output_tokens`` (None disables the length rule), ``flag_truncated`` and
    ``checks`` default to what the run recorded. User checks are code, so the log keeps only
    their names: a run that used some needs them passed again (or a deliberate replacement).
    ``task`` parses the responses; build it with ``maker.tasks.make_task(started.task,
    started.task_params)`` for a built-in task. See the module's caveat about later steps.

    Raises :class:`maker.ConfigError` naming the field for an invalid setting, or when the events
    do not begin with the run's ``run_started``.

    >>> import anyio, os, tempfile
    >>> from events import EventLog
    >>> from maker import Engine, Policy, SimulatedModel
    >>> from maker.tasks import Hanoi
    >>> path = os.path.join(tempfile.mkdtemp(), "log.db")
    >>> async def main() -> list[AnyEvent]:
    ...     async with Engine(log=path, client=SimulatedModel(preset="ideal")) as engine:
    ...         result = await engine.run(Hanoi(3), policy=Policy(k=3), seed=1)
    ...     async with EventLog(path, mode="r") as log:
    ...         return [event async for event in log.read(result.run_id)]
    >>> events = anyio.run(main)
    >>> report = revote(events, Hanoi(3), k=2)  # a model that never errs needs k votes a step
    >>> report.recorded_samples, report.samples_saved, report.changed_steps
    (21, 7, [])
    """
    stream = iter(events)
    started = next(stream, None)
    if not isinstance(started, RunStarted):
        raise ConfigError("events", "a run's events must begin with its run_started event")
    recorded_flags = dict(started.policy.get("red_flags", {}))
    recorded_rule = str(started.policy.get("rule", "ahead"))
    new_rule = recorded_rule if rule is UNCHANGED else rule
    if new_rule not in ("ahead", "first"):
        raise ConfigError("rule", f"must be 'ahead' or 'first', got {new_rule!r}")
    if not isinstance(k, int) or k < 1:
        raise ConfigError("k", f"must be at least 1, got {k}")
    rules = _rules(recorded_flags, max_output_tokens, flag_truncated, checks)
    the_rule: VoteRule = "first" if new_rule == "first" else "ahead"

    steps: list[StepRevote] = []
    pending: dict[int, list[SampleReceived]] = {}
    for event in stream:
        if isinstance(event, StepStarted):
            # A resumed run may restart a step it had begun; the responses it received stay.
            pending.setdefault(event.step, [])
        elif isinstance(event, SampleReceived):
            pending.setdefault(event.step, []).append(event)
        elif isinstance(event, StepDecided):
            received = pending.pop(event.step, [])
            steps.append(_revote_step(event, received, task, rules, k, the_rule))

    notes = [
        "after a step that decides differently, later steps are judged on samples drawn for "
        "the recorded states, so their outcome is counterfactual"
    ]
    cap = started.policy.get("max_tokens")
    if (
        rules.max_output_tokens is not None
        and isinstance(cap, int)
        and rules.max_output_tokens >= cap
    ):
        notes.append(
            f"responses were cut at max_tokens={cap} when recorded, so a threshold of "
            f"{rules.max_output_tokens} output tokens flags nothing the cap did not cut"
        )
    undecided = sorted(step for step, got in pending.items() if got)
    if undecided:
        notes.append(
            f"step {undecided[-1]} was undecided when the recording ended and is not re-voted"
        )
    return RevoteReport(
        run_id=started.run_id,
        k=k,
        rule=the_rule,
        red_flags=rules.describe(),
        recorded_k=int(started.policy.get("k", 0)),
        recorded_rule=recorded_rule,
        recorded_red_flags=recorded_flags,
        steps=tuple(steps),
        notes=tuple(notes),
    )


def _rules(
    recorded: dict[str, Any],
    max_output_tokens: int | Unchanged | None,
    flag_truncated: bool | Unchanged,
    checks: tuple[RedFlagCheck, ...] | Unchanged,
) -> RedFlagRules:
    if checks is UNCHANGED:
        names = list(recorded.get("checks", []))
        if names:
            raise ConfigError(
                "red_flags.checks",
                f"the run used red-flag checks {names}; pass them (or replacements) as checks",
            )
        checks = ()
    limit = (
        recorded.get("max_output_tokens", 750)
        if max_output_tokens is UNCHANGED
        else max_output_tokens
    )
    truncated = (
        bool(recorded.get("flag_truncated", True))
        if flag_truncated is UNCHANGED
        else flag_truncated
    )
    return RedFlagRules(max_output_tokens=limit, flag_truncated=truncated, checks=checks)


def _revote_step(
    decided: StepDecided,
    received: list[SampleReceived],
    task: Task[Any, Any],
    rules: RedFlagRules,
    k: int,
    rule: VoteRule,
) -> StepRevote:
    tally = Tally(k, rule)
    consumed = flagged = 0
    winner: str | None = None
    for sample in received:
        consumed += 1
        # The same judgement as the engine's: the rules first, then the strict parser.
        completion = Completion(
            text=sample.text,
            finish_reason=sample.finish_reason,
            input_tokens=sample.input_tokens,
            output_tokens=sample.output_tokens,
            model=sample.model,
            temperature_sent=sample.temperature_sent,
        )
        if rules.check(completion) is not None:
            flagged += 1
            continue
        try:
            answer = task.parse(sample.text)
        except RedFlag:
            flagged += 1
            continue
        winner = tally.add(canonical_json(task.answer_to_json(answer)))
        if winner is not None:
            break
    return StepRevote(
        step=decided.step,
        recorded_winner=decided.winner,
        winner=winner,
        recorded_samples=len(received),
        requested=decided.samples,
        needed=consumed if winner is not None else None,
        red_flags=flagged,
        votes=tally.votes,
        more_votes_needed=tally.needed(),
    )
