"""Adaptive k: set the vote margin from the run's own votes. Pure, no I/O.

The estimator is a Beta posterior over p, the chance that a valid vote is right. Each decided
step adds its votes: those for the winner count as agreeing (right, on the assumption that the
winner is right, which holds with probability P_step), the others as disagreeing. k for the
remaining steps is Eq 14's k_min at a lower confidence bound of p (normal approximation to the
posterior), so that a few lucky steps do not under-provision k. Because it only reads recorded
votes, a replay recomputes the same k at the same steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import msgspec

from ._errors import ConfigError
from ._formulas import k_min


@dataclass(frozen=True, kw_only=True)
class AdaptiveK:
    """How k adapts to the run's own votes.

    - ``target``: the probability that the whole run succeeds;
    - ``prior_p``, ``prior_strength``: the initial guess of p and how many votes it weighs
      (a pessimistic guess only costs samples until the run's votes correct it);
    - ``confidence``: k is planned with the lower bound of p at this one-sided confidence;
    - ``k_min``, ``k_max``: the bounds k stays within.
    """

    target: float
    prior_p: float = 0.9
    prior_strength: float = 20.0
    confidence: float = 0.95
    k_min: int = 1
    k_max: int = 25

    def __post_init__(self) -> None:
        if not 0.0 < self.target < 1.0:
            raise ConfigError("adaptive.target", f"must be between 0 and 1, got {self.target}")
        if not 0.5 < self.prior_p < 1.0:
            raise ConfigError("adaptive.prior_p", f"must be between 0.5 and 1, got {self.prior_p}")
        if not self.prior_strength > 0:
            raise ConfigError(
                "adaptive.prior_strength", f"must be positive, got {self.prior_strength}"
            )
        if not 0.5 <= self.confidence < 1.0:
            raise ConfigError("adaptive.confidence", f"must be in [0.5, 1), got {self.confidence}")
        if not 1 <= self.k_min <= self.k_max:
            raise ConfigError(
                "adaptive.k_min", f"need 1 <= k_min <= k_max, got {self.k_min}, {self.k_max}"
            )

    def describe(self) -> dict[str, Any]:
        """As JSON, inside the policy of ``run_started``."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AdaptiveK:
        """The inverse of :meth:`describe`."""
        return cls(**data)


class PEstimate:
    """The Beta posterior over p, updated step by step.

    >>> est = PEstimate(AdaptiveK(target=0.99, prior_p=0.8, prior_strength=10))
    >>> round(est.mean, 3)
    0.8
    >>> est.add(agree=3, disagree=0)
    >>> round(est.mean, 3)
    0.846
    """

    def __init__(self, config: AdaptiveK) -> None:
        self.config = config
        self.alpha = config.prior_p * config.prior_strength
        self.beta = (1.0 - config.prior_p) * config.prior_strength
        self._z = NormalDist().inv_cdf(config.confidence)

    def add(self, *, agree: int, disagree: int) -> None:
        """Count one decided step's valid votes."""
        self.alpha += agree
        self.beta += disagree

    @property
    def mean(self) -> float:
        """The posterior mean of p."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def lower(self) -> float:
        """The lower confidence bound of p (normal approximation to the Beta posterior)."""
        n = self.alpha + self.beta
        sd = math.sqrt(self.alpha * self.beta / (n * n * (n + 1.0)))
        return self.mean - self._z * sd

    def k(self, steps: int) -> int:
        """k for a run of ``steps`` steps at the lower bound of p, within the bounds."""
        cfg = self.config
        p = min(self.lower, 1.0 - 1e-12)
        if p <= 0.5:
            return cfg.k_max  # no margin can be justified: spend the most the user allows
        return max(cfg.k_min, min(cfg.k_max, k_min(p, cfg.target, steps)))
