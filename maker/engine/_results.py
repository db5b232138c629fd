"""What the engine hands back: a run's result, a verification's outcome, an engine's counters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from events import RunStatus

from ._recording import Divergence


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """How a run ended, with its totals."""

    run_id: str
    status: RunStatus
    steps: int
    samples: int
    votes: int
    red_flags: int
    red_flags_by_reason: dict[str, int]
    failures: int
    cancelled_samples: int
    k: int
    wall_s: float
    reason: str = ""
    final_state: Any = None
    max_samples_in_step: int = 0
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def ok(self) -> bool:
        """Whether the run succeeded."""
        return self.status == "succeeded"

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-compatible builtins (``maker run --json`` prints this)."""
        return {
            "run_id": self.run_id,
            "status": self.status,
            "reason": self.reason,
            "steps": self.steps,
            "samples": self.samples,
            "votes": self.votes,
            "red_flags": self.red_flags,
            "red_flags_by_reason": dict(self.red_flags_by_reason),
            "failures": self.failures,
            "cancelled_samples": self.cancelled_samples,
            "samples_per_step": self.samples / self.steps if self.steps else 0.0,
            "max_samples_in_step": self.max_samples_in_step,
            "k": self.k,
            "cost_usd": self.cost_usd,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "wall_s": self.wall_s,
        }


class EngineStatistics(NamedTuple):
    """Counters of one engine: runs and samples in flight, retries, events appended."""

    runs_active: int
    in_flight: int
    requested: int
    retries: int
    appended: int


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of re-executing a recorded run: ``ok``, or the first divergence."""

    run_id: str
    ok: bool
    checked: int
    recorded: int
    divergence: Divergence | None

    def to_json(self) -> dict[str, Any]:
        """The result as JSON (``maker replay --verify --json``)."""
        out: dict[str, Any] = {
            "run_id": self.run_id,
            "ok": self.ok,
            "checked": self.checked,
            "recorded": self.recorded,
        }
        if self.divergence is not None:
            out["divergence"] = {
                "seq": self.divergence.seq,
                "message": str(self.divergence),
                "expected": self.divergence.expected,
                "got": self.divergence.got,
            }
        return out
