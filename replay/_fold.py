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
    RunStarted,
    SampleCancelled,
    SampleFailed,
    SampleReceived,
    SampleRequested,
    StateChanged,
    StepDecided,
    VoteCounted,
)


@dataclass
class RunSummary:
    """A run's figures, rebuilt from its events alone."""

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

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON-compatible builtins (``maker show --json``)."""
        return {
            "run_id": self.run_id,
            "task": self.task,
            "task_params": self.task_params,
            "models": self.models,
            "k": self.k,
            "seed": self.seed,
            "status": self.status,
            "reason": self.reason,
            "steps": self.steps,
            "samples": self.samples,
            "votes": self.votes,
            "failures": self.failures,
            "cancelled_samples": self.cancelled,
            "red_flags": sum(self.red_flags.values()),
            "red_flags_by_reason": dict(self.red_flags),
            "samples_per_step_mean": self.mean_samples_per_step,
            "samples_per_step_max": self.max_samples_per_step,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "wall_s": self.wall_s if self.wall_s is not None else self.last_ts - self.first_ts,
            "events": self.events,
        }


def summarize(events: Iterable[AnyEvent]) -> RunSummary:
    """Fold one run's events, in seq order, into its :class:`RunSummary`."""
    s = RunSummary()
    for event in events:
        s.events += 1
        if s.events == 1:
            s.first_ts = event.ts
        s.last_ts = event.ts
        match event:
            case RunStarted():
                s.run_id, s.task, s.task_params = event.run_id, event.task, event.task_params
                s.models, s.seed = list(event.models), event.seed
                s.k = int(event.policy.get("k", 0))
                s.final_state = event.initial_state
            case SampleRequested():
                s.samples += 1
            case SampleReceived():
                s.received += 1
                s.input_tokens += event.input_tokens
                s.output_tokens += event.output_tokens
            case SampleFailed():
                s.failures += 1
            case SampleCancelled():
                s.cancelled += 1
            case RedFlagged():
                s.red_flags[event.reason] += 1
            case VoteCounted():
                s.votes += 1
            case StepDecided():
                s.samples_per_step[event.step] = event.samples
            case StateChanged():
                s.steps = event.step + 1
                s.final_state = event.state
            case RunFinished():
                s.status, s.reason, s.wall_s = event.status, event.reason, event.wall_s
            case _:
                pass
    return s
