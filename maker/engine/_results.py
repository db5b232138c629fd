"""What the engine hands back: a run's result, a verification's outcome, an engine's counters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from events import RunStatus

from ..core._serialise import fields_json
from ._recording import Divergence


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """How a run ended, with its totals."""

    run_id: str
    status: RunStatus
    reason: str = ""
    steps: int
    samples: int
    votes: int
    red_flags: int
    red_flags_by_reason: dict[str, int]
    failures: int
    cancelled_samples: int
    """Samples abandoned in flight, whatever the reason (the misspeculated among them)."""
    misspeculated_samples: int = 0
    """Samples drawn for a speculative start of a step that did not count (drawn, received or
    cancelled): the price of pipelining."""
    misspeculated_steps: int = 0
    """Speculative starts of a step abandoned (``step_abandoned`` events)."""
    hedged_samples: int = 0
    """Samples sent as hedges beside a straggler (counted in ``samples`` too)."""
    max_samples_in_step: int = 0
    k: int
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    wall_s: float
    final_state: Any = None
    """The task's own state object, which is not JSON: left out of :meth:`to_json`."""

    @property
    def ok(self) -> bool:
        """Whether the run succeeded."""
        return self.status == "succeeded"

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-compatible builtins (``maker run --json`` prints this): every
        field but ``final_state``, and ``samples_per_step``."""
        per_step = self.samples / self.steps if self.steps else 0.0
        return fields_json(self, omit=("final_state",), derived={"samples_per_step": per_step})


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
        """The result as JSON (``maker replay --verify --json``): the fields, with the
        divergence (an exception, not a record) written out only when there is one."""
        out = fields_json(self, omit=("divergence",))
        if self.divergence is not None:
            out["divergence"] = {
                "seq": self.divergence.seq,
                "message": str(self.divergence),
                "expected": self.divergence.expected,
                "got": self.divergence.got,
            }
        return out
