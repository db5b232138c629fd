"""The voting policy of a run: frozen, keyword-only, validated on construction."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ._adaptive import AdaptiveK
from ._errors import ConfigError
from ._redflags import RedFlagCheck, RedFlagRules
from ._tally import VoteRule


@dataclass(frozen=True, kw_only=True)
class Policy:
    """How each step is voted.

    - ``k``: the vote margin;
    - ``rule``: ``"ahead"`` (first-to-ahead-by-k, the paper's default) or ``"first"`` (first-to-k);
    - ``first_temperature``: temperature of a step's first sample (the paper: 0);
    - ``temperature``: temperature of every later sample (the paper: 0.1);
    - ``max_tokens``: the output cap sent to the model; it sits above the red-flag threshold so
      that an overlong answer is seen, and flagged, rather than silently cut;
    - ``max_samples_per_step``: a step that has requested this many samples without a decision
      ends the run as failed;
    - ``max_attempts``: transport attempts per sample before the run fails;
    - ``speculative``: samples kept in flight beyond the k - lead that could still matter. The
      default 0 requests nothing that could not change the outcome; a few extra cut wall time
      when red flags or disagreements are common, at the price of samples cancelled unused;
    - ``red_flags``: which responses are discarded;
    - ``adaptive``: when set, k follows the run's own votes (see :class:`AdaptiveK`); ``k`` is
      then only the value recorded before the first step.

    >>> Policy(k=0)
    Traceback (most recent call last):
    ...
    maker.core._errors.ConfigError: k: must be at least 1, got 0
    """

    k: int = 3
    rule: VoteRule = "ahead"
    first_temperature: float = 0.0
    temperature: float = 0.1
    max_tokens: int = 1000
    max_samples_per_step: int = 100
    max_attempts: int = 5
    speculative: int = 0
    red_flags: RedFlagRules = field(default_factory=RedFlagRules)
    adaptive: AdaptiveK | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise ConfigError("k", f"must be at least 1, got {self.k}")
        if self.rule not in ("ahead", "first"):
            raise ConfigError("rule", f"must be 'ahead' or 'first', got {self.rule!r}")
        for name in ("first_temperature", "temperature"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 2.0):
                raise ConfigError(name, f"must be between 0 and 2, got {value}")
        if self.max_tokens < 1:
            raise ConfigError("max_tokens", f"must be positive, got {self.max_tokens}")
        limit = self.red_flags.max_output_tokens
        if limit is not None and self.max_tokens <= limit:
            raise ConfigError(
                "max_tokens",
                f"must exceed red_flags.max_output_tokens ({limit}) so overlong answers are seen",
            )
        if self.max_samples_per_step < self.k:
            raise ConfigError(
                "max_samples_per_step",
                f"must be at least k ({self.k}), got {self.max_samples_per_step}",
            )
        if self.speculative < 0:
            raise ConfigError("speculative", f"must be >= 0, got {self.speculative}")
        if self.adaptive is not None and self.max_samples_per_step < self.adaptive.k_max:
            raise ConfigError(
                "max_samples_per_step",
                f"must be at least adaptive.k_max ({self.adaptive.k_max}), "
                f"got {self.max_samples_per_step}",
            )
        if self.max_attempts < 1:
            raise ConfigError("max_attempts", f"must be at least 1, got {self.max_attempts}")

    def describe(self) -> dict[str, Any]:
        """The policy as JSON, for ``run_started``."""
        out: dict[str, Any] = {
            "k": self.k,
            "rule": self.rule,
            "first_temperature": self.first_temperature,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "max_samples_per_step": self.max_samples_per_step,
            "max_attempts": self.max_attempts,
            "speculative": self.speculative,
            "red_flags": self.red_flags.describe(),
        }
        if self.adaptive is not None:
            # Only when set: runs recorded before adaptive k existed must still replay exactly.
            out["adaptive"] = self.adaptive.describe()
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, checks: tuple[RedFlagCheck, ...] = ()) -> Policy:
        """The policy a ``run_started`` event records: the inverse of :meth:`describe`.

        A field the record leaves out (a log from before the field existed) takes the
        policy's default, as do the red-flag rules' fields. User red-flag checks are code, so
        the log holds only their names: pass the same checks again, in order, or this fails
        naming them. A calibration's policy is not a voting policy (see
        ``maker.engine.is_calibration``).
        """
        flags = dict(data.get("red_flags", {}))
        names = list(flags.get("checks", []))
        given = [getattr(c, "__name__", repr(c)) for c in checks]
        if names != given:
            raise ConfigError(
                "red_flags.checks",
                f"the run used red-flag checks {names}; pass the same checks (got {given})",
            )
        defaults = RedFlagRules()
        rules = RedFlagRules(
            max_output_tokens=flags.get("max_output_tokens", defaults.max_output_tokens),
            flag_truncated=bool(flags.get("flag_truncated", defaults.flag_truncated)),
            checks=checks,
        )
        # Every other field is recorded as it is: read back by the dataclass's own field list.
        plain = {f.name for f in fields(cls)} - {"red_flags", "adaptive"}
        recorded = {name: data[name] for name in plain if name in data}
        adaptive = data.get("adaptive")
        return cls(
            red_flags=rules,
            adaptive=AdaptiveK.from_json(adaptive) if adaptive else None,
            **recorded,
        )

    def temperature_for(self, ordinal: int) -> float:
        """The temperature of a step's sample number ``ordinal`` (0-based)."""
        return self.first_temperature if ordinal == 0 else self.temperature
