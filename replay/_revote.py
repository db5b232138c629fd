"""Counterfactual re-vote: what another k, voting rule, red-flag rule or matcher would have
decided, judged offline on the samples a run recorded. No model is called.

For every step the run decided, the step's recorded responses are taken in the order they were
received; on a pipelined run, only those of the start that decided it (an abandoned,
misspeculated start's samples were drawn for another state). Hedged samples count like any
other. Each is judged again, by the new red-flag rules and then the task's strict parser, and
the valid ones vote, under the key the matcher gives them, into a fresh :class:`maker.Tally`
until it decides. The step is then reported as decided or not, with its new winner and how many
of its recorded samples the decision used. Under another matcher than the recorded one, a step
has changed when the answer the run applied (the recorded winner's first answer) does not
vote under the new winner's key.

**Caveat.** Only the recorded samples exist. After a step that would have decided differently,
the real run would have gone on from a different state; this re-vote keeps judging the later
steps on the samples drawn for the recorded states, so everything after the first changed step
is counterfactual twice over. Likewise a step that needs more samples than were recorded is
reported as such: what those extra samples would have said is unknown.
"""

from __future__ import annotations

import enum
from array import array
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal

import msgspec

from events import (
    AnyEvent,
    RunStarted,
    SampleReceived,
    StepAbandoned,
    StepDecided,
    StepStarted,
    canonical_json,
)
from maker.clients import make_matcher
from maker.core import (
    Completion,
    ConfigError,
    Matcher,
    PolicyRecord,
    RedFlag,
    RedFlagCheck,
    RedFlagRecord,
    RedFlagRules,
    Tally,
    Task,
    VoteRule,
    judge,
    matcher_spec,
    recorded_policy,
)
from maker.core._serialise import fields_json


class _Unchanged(enum.Enum):
    UNCHANGED = "unchanged"

    def __repr__(self) -> str:
        return "UNCHANGED"


MAX_CHANGED = 100
"""How many changed steps a re-vote that does not keep its steps gives in full."""

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
    recorded_as: str = ""
    """Under another matcher: the key the new matcher gives the answer the run applied (""
    when the matcher is the recorded one, whose key is ``recorded_winner``)."""

    @property
    def decided(self) -> bool:
        """Whether the recorded responses decide the step under the new policy."""
        return self.winner is not None

    @property
    def changed(self) -> bool:
        """Whether the step decides, and for another answer than the recorded one."""
        return self.winner is not None and self.winner != (self.recorded_as or self.recorded_winner)

    @property
    def saved(self) -> int:
        """Recorded responses the new decision did not need (0 when undecided)."""
        return self.recorded_samples - self.needed if self.needed is not None else 0

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible builtins: the fields, then ``decided`` and ``changed``."""
        return fields_json(self, derived={"decided": self.decided, "changed": self.changed})


@dataclass(frozen=True, kw_only=True)
class RevoteReport:
    """A whole run re-voted: the new policy, the recorded one, and its decided steps.

    The figures are totals folded as the events went by. :attr:`steps` holds every re-voted
    step when :func:`revote` was asked to keep them (the default); otherwise it is empty and
    :attr:`changed` holds the first changed steps in full. The lists of changed and short steps
    are kept as compact arrays (4 bytes a listed step).
    """

    run_id: str
    k: int
    rule: VoteRule
    red_flags: dict[str, Any]
    """The red-flag rules applied (as :meth:`maker.RedFlagRules.describe` gives them)."""
    recorded_k: int
    recorded_rule: str
    recorded_red_flags: dict[str, Any]
    matcher: str = "exact"
    """The matcher's spec the steps were re-voted under."""
    recorded_matcher: str = "exact"
    revoted: int = 0
    """How many decided steps were re-voted."""
    decided_steps: int = 0
    """How many re-voted steps the recorded responses decide under the new policy."""
    recorded_samples: int = 0
    """Responses the re-voted steps received."""
    needed_samples: int = 0
    """Responses the new policy consumed, over the steps that decide."""
    samples_saved: int = 0
    """Over the steps that decide: recorded responses minus those the new policy needed."""
    changed: tuple[StepRevote, ...] = ()
    """The changed steps in full: all of them, or the first ``max_changed`` when the steps
    were not kept."""
    notes: tuple[str, ...] = ()
    """Caveats that apply to this run (a threshold past the recorded cap, an undecided step)."""
    steps: tuple[StepRevote, ...] = ()
    changed_steps_: array[int] = field(default_factory=lambda: array("I"), repr=False)
    short_steps_: array[int] = field(default_factory=lambda: array("I"), repr=False)

    _RECORDED: ClassVar[tuple[str, ...]] = (
        "recorded_k",
        "recorded_rule",
        "recorded_red_flags",
        "recorded_matcher",
    )
    """The recorded settings, which the JSON nests as ``recorded`` (``k``, ``rule``,
    ``red_flags``, ``matcher``) beside the new ones."""

    @property
    def changed_steps(self) -> list[int]:
        """Steps that would have decided for another answer."""
        return list(self.changed_steps_)

    @property
    def short_steps(self) -> list[int]:
        """Steps that would have needed more samples than were recorded."""
        return list(self.short_steps_)

    def to_json(self, *, steps: bool = False) -> dict[str, Any]:
        """JSON-compatible builtins. The changed steps are given in full; ``steps`` adds all.

        The fields, with the recorded settings nested as ``recorded`` (they stay flat
        attributes, which the CLI and callers read), ``revoted`` as ``steps`` and the step
        lists as ``changed_steps`` and ``short_steps``; every step only as ``per_step``."""
        out = fields_json(
            self,
            omit=(*self._RECORDED, "steps", "changed_steps_", "short_steps_"),
            rename={"revoted": "steps"},
            values={"changed": [s.to_json() for s in self.changed]},
            derived={
                "recorded": {
                    name.removeprefix("recorded_"): getattr(self, name) for name in self._RECORDED
                },
                "changed_steps": self.changed_steps,
                "short_steps": self.short_steps,
            },
        )
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
    matcher: str | Unchanged = UNCHANGED,
    keep_steps: bool = True,
    max_changed: int = MAX_CHANGED,
) -> RevoteReport:
    """Re-vote every decided step of one run (its events in seq order) under a new policy.

    The events are consumed one at a time, holding the responses of one step: pass a
    generator, or use :func:`revote_async` over a log's reader. ``keep_steps`` (the default)
    keeps every :class:`StepRevote` in :attr:`RevoteReport.steps`, O(steps); without it the
    report holds totals, the changed and short step numbers (4 bytes each) and the first
    ``max_changed`` changed steps in full: what ``maker replay --k`` prints.

    ``rule``, ``max_output_tokens`` (None disables the length rule), ``flag_truncated``,
    ``checks`` and ``matcher`` (a spec, see :class:`maker.Matcher`) default to what the run
    recorded. User checks are code, so the log keeps only
    their names: a run that used some needs them passed again (or a deliberate replacement).
    ``task`` parses the responses; build it with ``maker.tasks.make_task(started.task,
    started.task_params)`` for a built-in task. See the module's caveat about later steps.

    Raises :class:`maker.ConfigError` naming the field for an invalid setting, or when the events
    do not begin with the run's ``run_started``.

    >>> import anyio, os, tempfile
    >>> from events import open_run
    >>> from maker import Engine, Policy, SimulatedModel
    >>> from maker.tasks import Hanoi
    >>> path = os.path.join(tempfile.mkdtemp(), "log.db")
    >>> async def main() -> list[AnyEvent]:
    ...     async with Engine(log=path, client=SimulatedModel(preset="ideal")) as engine:
    ...         result = await engine.run(Hanoi(3), policy=Policy(k=3), seed=1)
    ...     async with open_run(path, result.run_id) as run:
    ...         return [event async for event in run.events]
    >>> events = anyio.run(main)
    >>> report = revote(events, Hanoi(3), k=2)  # a model that never errs needs k votes a step
    >>> report.recorded_samples, report.samples_saved, report.changed_steps
    (21, 7, [])
    """
    stream = iter(events)
    fold = _RevoteFold(
        next(stream, None),
        task,
        k=k,
        rule=rule,
        max_output_tokens=max_output_tokens,
        flag_truncated=flag_truncated,
        checks=checks,
        matcher=matcher,
        keep_steps=keep_steps,
        max_changed=max_changed,
    )
    for event in stream:
        fold.add(event)
    return fold.result()


async def revote_async(
    events: AsyncIterable[AnyEvent],
    task: Task[Any, Any],
    *,
    k: int,
    rule: VoteRule | Unchanged = UNCHANGED,
    max_output_tokens: int | Unchanged | None = UNCHANGED,
    flag_truncated: bool | Unchanged = UNCHANGED,
    checks: tuple[RedFlagCheck, ...] | Unchanged = UNCHANGED,
    matcher: str | Unchanged = UNCHANGED,
    keep_steps: bool = True,
    max_changed: int = MAX_CHANGED,
) -> RevoteReport:
    """:func:`revote` over an async iterable, such as :meth:`events.EventLog.read`."""
    stream = aiter(events)
    fold = _RevoteFold(
        await anext(stream, None),
        task,
        k=k,
        rule=rule,
        max_output_tokens=max_output_tokens,
        flag_truncated=flag_truncated,
        checks=checks,
        matcher=matcher,
        keep_steps=keep_steps,
        max_changed=max_changed,
    )
    async for event in stream:
        fold.add(event)
    return fold.result()


class _RevoteFold:
    """The fold behind :func:`revote`: one event at a time, holding one step's responses."""

    def __init__(
        self,
        started: AnyEvent | None,
        task: Task[Any, Any],
        *,
        k: int,
        rule: VoteRule | Unchanged,
        max_output_tokens: int | Unchanged | None,
        flag_truncated: bool | Unchanged,
        checks: tuple[RedFlagCheck, ...] | Unchanged,
        matcher: str | Unchanged,
        keep_steps: bool,
        max_changed: int,
    ) -> None:
        if not isinstance(started, RunStarted):
            raise ConfigError("events", "a run's events must begin with its run_started event")
        self.started = started
        recorded = recorded_policy(started.policy)
        if not isinstance(recorded, PolicyRecord):
            raise ConfigError(
                "events", f"run {started.run_id} is a calibration: it voted nothing to re-vote"
            )
        self.recorded_policy = recorded
        self.recorded_rule: VoteRule = recorded.rule
        new_rule = self.recorded_rule if rule is UNCHANGED else rule
        if new_rule not in ("ahead", "first"):
            raise ConfigError("rule", f"must be 'ahead' or 'first', got {new_rule!r}")
        if not isinstance(k, int) or k < 1:
            raise ConfigError("k", f"must be at least 1, got {k}")
        self.rules = _rules(recorded.red_flags, max_output_tokens, flag_truncated, checks)
        spec = recorded.matcher if matcher is UNCHANGED else matcher_spec(matcher)
        self.matcher = make_matcher(spec)
        # Keys are comparable with the recorded ones only under the recorded matcher.
        self.rematched = self.matcher.spec != matcher_spec(recorded.matcher)
        self.rule: VoteRule = "first" if new_rule == "first" else "ahead"
        self.task, self.k = task, k
        self.keep_steps, self.max_changed = keep_steps, max(0, max_changed)
        self.steps: list[StepRevote] = []
        self.changed: list[StepRevote] = []
        self.changed_steps = array("I")
        self.short_steps = array("I")
        self.revoted = self.decided = self.recorded = self.needed = self.saved = 0
        # The responses of each step's open start, and that start's branch: at most a
        # pipelined run's depth + 1 steps are open at once.
        self.pending: dict[int, list[SampleReceived]] = {}
        self.branch: dict[int, int] = {}
        self.abandoned: int | None = None  # the last earlier step left undecided with responses

    def add(self, event: AnyEvent) -> None:
        if isinstance(event, StepStarted):
            # A resumed run may restart a step it had begun (the same branch): the responses
            # it received stay. A new branch is a new start, drawn for another state: the
            # previous start's responses were for a state the step does not decide from.
            if self.branch.get(event.step, event.branch) != event.branch:
                self.pending[event.step] = []
            self.branch[event.step] = event.branch
            self.pending.setdefault(event.step, [])
        elif isinstance(event, SampleReceived):
            self.pending.setdefault(event.step, []).append(event)
        elif isinstance(event, StepAbandoned):
            # A misspeculated start: its votes count for nothing (the step starts again).
            self.pending[event.step] = []
            self.branch[event.step] = event.branch + 1
        elif isinstance(event, StepDecided):
            # Steps are decided in order: one before this still open was left undecided (a
            # pipelined run votes ahead, so a step's start is not the end of those before it).
            for step in [s for s in self.pending if s < event.step]:
                self.branch.pop(step, None)
                if self.pending.pop(step):
                    self.abandoned = step if self.abandoned is None else max(self.abandoned, step)
            received = self.pending.pop(event.step, [])
            self.branch.pop(event.step, None)
            self._count(
                _revote_step(
                    event,
                    received,
                    self.task,
                    self.rules,
                    self.k,
                    self.rule,
                    self.matcher,
                    rematched=self.rematched,
                )
            )

    def _count(self, step: StepRevote) -> None:
        self.revoted += 1
        self.recorded += step.recorded_samples
        if step.decided:
            self.decided += 1
            self.needed += step.needed or 0
            self.saved += step.saved
        else:
            self.short_steps.append(step.step)
        if step.changed:
            self.changed_steps.append(step.step)
            if self.keep_steps or len(self.changed) < self.max_changed:
                self.changed.append(step)
        if self.keep_steps:
            self.steps.append(step)

    def result(self) -> RevoteReport:
        started, rules = self.started, self.rules
        notes = [
            "after a step that decides differently, later steps are judged on samples drawn "
            "for the recorded states, so their outcome is counterfactual"
        ]
        cap = self.recorded_policy.max_tokens
        if rules.max_output_tokens is not None and rules.max_output_tokens >= cap:
            notes.append(
                f"responses were cut at max_tokens={cap} when recorded, so a threshold of "
                f"{rules.max_output_tokens} output tokens flags nothing the cap did not cut"
            )
        undecided = sorted(step for step, got in self.pending.items() if got)
        if self.abandoned is not None:
            undecided.append(self.abandoned)
        if undecided:
            notes.append(
                f"step {max(undecided)} was undecided when the recording ended and is not re-voted"
            )
        if not self.keep_steps and len(self.changed_steps) > len(self.changed):
            notes.append(
                f"{len(self.changed_steps)} steps decide differently; the first "
                f"{len(self.changed)} are given in full"
            )
        return RevoteReport(
            run_id=started.run_id,
            k=self.k,
            rule=self.rule,
            red_flags=rules.describe(),
            recorded_k=self.recorded_policy.k,
            recorded_rule=self.recorded_rule,
            recorded_red_flags=self.recorded_policy.red_flags.to_json(),
            matcher=self.matcher.spec,
            recorded_matcher=self.recorded_policy.matcher,
            steps=tuple(self.steps),
            notes=tuple(notes),
            revoted=self.revoted,
            decided_steps=self.decided,
            recorded_samples=self.recorded,
            needed_samples=self.needed,
            samples_saved=self.saved,
            changed=tuple(self.changed),
            changed_steps_=self.changed_steps,
            short_steps_=self.short_steps,
        )


def _rules(
    recorded: RedFlagRecord,
    max_output_tokens: int | Unchanged | None,
    flag_truncated: bool | Unchanged,
    checks: tuple[RedFlagCheck, ...] | Unchanged,
) -> RedFlagRules:
    if checks is UNCHANGED:
        if recorded.checks:
            raise ConfigError(
                "red_flags.checks",
                f"the run used red-flag checks {list(recorded.checks)}; "
                "pass them (or replacements) as checks",
            )
        checks = ()
    limit = recorded.max_output_tokens if max_output_tokens is UNCHANGED else max_output_tokens
    truncated = recorded.flag_truncated if flag_truncated is UNCHANGED else flag_truncated
    return RedFlagRules(max_output_tokens=limit, flag_truncated=truncated, checks=checks)


def _revote_step(
    decided: StepDecided,
    received: list[SampleReceived],
    task: Task[Any, Any],
    rules: RedFlagRules,
    k: int,
    rule: VoteRule,
    matcher: Matcher,
    *,
    rematched: bool,
) -> StepRevote:
    tally = Tally(k, rule)
    grouping = None if matcher.exact else matcher.grouping()
    consumed = flagged = 0
    winner: str | None = None
    for sample in received:
        consumed += 1
        # The engine's own judge: the rules first, then the strict parser.
        completion = Completion(
            text=sample.text,
            finish_reason=sample.finish_reason,
            input_tokens=sample.input_tokens,
            output_tokens=sample.output_tokens,
            model=sample.model,
            temperature_sent=sample.temperature_sent,
            response_id=sample.response_id if type(sample.response_id) is str else None,
        )
        verdict = judge(task, rules, completion)
        if isinstance(verdict, RedFlag):
            flagged += 1
            continue
        value = task.answer_to_json(verdict)
        winner = tally.add(canonical_json(value) if grouping is None else grouping.key(value))
        if winner is not None:
            break
    recorded_as = ""
    if rematched:
        # The answer the run applied, as the new matcher keys it beside the answers it counted.
        applied = decided.answer if type(decided.answer) is str else decided.winner
        recorded_as = (
            applied if grouping is None else grouping.key(msgspec.json.decode(applied), applied)
        )
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
        recorded_as=recorded_as,
    )
