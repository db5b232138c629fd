"""Fold a run's events into what happened: no model, no engine, only the log."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from events import (
    AnyEvent,
    RedFlagged,
    RunFinished,
    RunResumed,
    RunStarted,
    SampleCancelled,
    SampleFailed,
    SampleReceived,
    SampleRequested,
    StateChanged,
    StepDecided,
    StepStarted,
    VoteCounted,
)


@dataclass(slots=True, kw_only=True)
class StepRecord:
    """One step as the log tells it: its samples, its final tally and what it decided.

    ``samples`` counts the samples requested for the step (cancelled ones included), ``received``
    those a model answered; every received sample either voted or was red-flagged.
    """

    step: int
    winner: str | None = None
    """The winning answer's canonical JSON; None while the step is undecided."""
    votes: dict[str, int] = field(default_factory=dict)
    """The tally when the step ended (the decision's tally, or the last vote's)."""
    samples: int = 0
    received: int = 0
    red_flags: int = 0
    failures: int = 0
    cancelled: int = 0
    cost_usd: float = 0.0
    state: Any = None
    """The state after the winner was applied (the next step's state); None until then."""

    @property
    def decided(self) -> bool:
        """Whether the step reached a decision."""
        return self.winner is not None

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible builtins."""
        return {
            "step": self.step,
            "winner": self.winner,
            "votes": dict(self.votes),
            "samples": self.samples,
            "received": self.received,
            "red_flags": self.red_flags,
            "failures": self.failures,
            "cancelled": self.cancelled,
            "cost_usd": self.cost_usd,
            "state": self.state,
        }


@dataclass
class RunSummary:
    """A run's figures, rebuilt from its events alone.

    With ``per_step`` (the default) :attr:`step_records` holds a :class:`StepRecord` per step,
    in step order.
    """

    run_id: str = ""
    task: str = ""
    task_params: dict[str, Any] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    k: int = 0
    seed: int = 0
    status: str = "running"
    reason: str = ""
    steps: int = 0
    samples: int = 0
    received: int = 0
    votes: int = 0
    failures: int = 0
    cancelled: int = 0
    red_flags: Counter[str] = field(default_factory=Counter)
    samples_per_step: dict[int, int] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    first_ts: float = 0.0
    last_ts: float = 0.0
    wall_s: float | None = None
    final_state: Any = None
    events: int = 0
    policy: dict[str, Any] = field(default_factory=dict)
    """The recorded policy, as ``run_started`` holds it."""
    model_params: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    initial_state: Any = None
    failures_by_kind: Counter[str] = field(default_factory=Counter)
    cost_usd: float = 0.0
    resumed: int = 0
    """How many times the run was resumed after a crash or a cancellation."""
    step_records: list[StepRecord] = field(default_factory=list)

    @property
    def mean_samples_per_step(self) -> float:
        """Samples requested per decided step."""
        if not self.samples_per_step:
            return 0.0
        return sum(self.samples_per_step.values()) / len(self.samples_per_step)

    @property
    def max_samples_per_step(self) -> int:
        """The most samples any decided step requested."""
        return max(self.samples_per_step.values(), default=0)

    @property
    def rule(self) -> str:
        """The recorded voting rule (``"ahead"`` when the policy does not say)."""
        return str(self.policy.get("rule", "ahead"))

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON-compatible builtins (``maker show --json``), without the steps."""
        return {
            "run_id": self.run_id,
            "task": self.task,
            "task_params": self.task_params,
            "models": self.models,
            "k": self.k,
            "seed": self.seed,
            "policy": self.policy,
            "status": self.status,
            "reason": self.reason,
            "steps": self.steps,
            "samples": self.samples,
            "votes": self.votes,
            "failures": self.failures,
            "failures_by_kind": dict(self.failures_by_kind),
            "cancelled_samples": self.cancelled,
            "red_flags": sum(self.red_flags.values()),
            "red_flags_by_reason": dict(self.red_flags),
            "samples_per_step_mean": self.mean_samples_per_step,
            "samples_per_step_max": self.max_samples_per_step,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
            "wall_s": self.wall_s if self.wall_s is not None else self.last_ts - self.first_ts,
            "resumed": self.resumed,
            "events": self.events,
        }


class _Steps:
    """Step records by step number; a resumed run may touch a step in two sessions."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.by_step: dict[int, StepRecord] = {}

    def get(self, step: int) -> StepRecord | None:
        if not self.enabled:
            return None
        record = self.by_step.get(step)
        if record is None:
            record = self.by_step[step] = StepRecord(step=step)
        return record


def summarize(events: Iterable[AnyEvent], *, per_step: bool = True) -> RunSummary:
    """Fold one run's events, in seq order, into its :class:`RunSummary`.

    ``per_step=False`` skips the per-step records (and their states), for a quick look at a
    very long run.

    ``wall_s`` adds up the ``run_finished`` durations of the run's sessions (a run cancelled and
    resumed has two); a session killed outright left none, so its time is not counted. When no
    session finished, :meth:`RunSummary.to_json` falls back to the span of the timestamps.
    """
    s = RunSummary()
    steps = _Steps(per_step)
    for event in events:
        s.events += 1
        if s.events == 1:
            s.first_ts = event.ts
        s.last_ts = event.ts
        match event:
            case RunStarted():
                s.run_id, s.task, s.task_params = event.run_id, event.task, event.task_params
                s.models, s.seed = list(event.models), event.seed
                s.policy, s.model_params = dict(event.policy), dict(event.model_params)
                s.version = event.version
                s.k = int(event.policy.get("k", 0))
                s.initial_state = s.final_state = event.initial_state
            case StepStarted():
                steps.get(event.step)
            case SampleRequested():
                s.samples += 1
                if (record := steps.get(event.step)) is not None:
                    record.samples += 1
            case SampleReceived():
                s.received += 1
                s.input_tokens += event.input_tokens
                s.output_tokens += event.output_tokens
                s.cost_usd += event.cost_usd
                if (record := steps.get(event.step)) is not None:
                    record.received += 1
                    record.cost_usd += event.cost_usd
            case SampleFailed():
                s.failures += 1
                s.failures_by_kind[event.error_kind] += 1
                if (record := steps.get(event.step)) is not None:
                    record.failures += 1
            case SampleCancelled():
                s.cancelled += 1
                if (record := steps.get(event.step)) is not None:
                    record.cancelled += 1
            case RedFlagged():
                s.red_flags[event.reason] += 1
                if (record := steps.get(event.step)) is not None:
                    record.red_flags += 1
            case VoteCounted():
                s.votes += 1
                if (record := steps.get(event.step)) is not None:
                    record.votes = dict(event.tally)
            case StepDecided():
                s.samples_per_step[event.step] = event.samples
                if (record := steps.get(event.step)) is not None:
                    record.winner, record.votes = event.winner, dict(event.votes)
            case StateChanged():
                s.steps = event.step + 1
                s.final_state = event.state
                if (record := steps.get(event.step)) is not None:
                    record.state = event.state
            case RunResumed():
                # Until it finishes again the run is running, whatever an earlier session said.
                s.resumed += 1
                s.status, s.reason = "running", ""
            case RunFinished():
                s.status, s.reason = event.status, event.reason
                s.wall_s = (s.wall_s or 0.0) + event.wall_s
            case _:
                pass
    s.step_records = [steps.by_step[n] for n in sorted(steps.by_step)]
    return s
