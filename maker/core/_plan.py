"""Planning: choose the model and k for a target reliability, and say what the run will cost.

Steps two and three of the paper's critical path: from each candidate model's
per-step success rate p, its valid rate v and its cost per call c,

- k_min for the target (Eq 14), computed from the *lower* 95% confidence bound of p, so that a
  lucky calibration does not under-provision the vote margin;
- the probability that the whole run succeeds at that k (Eq 13), also at the lower bound, so it
  is a figure the run can be expected to meet;
- the expected samples per step: the exact gambler's-ruin duration of Eq 16 at the point
  estimate of p, divided by v for the red-flagged samples drawn again (Eq 19);
- with pipelining or hedging, the samples they add per step (see :func:`plan`), counted in
  the expected samples and cost;
- the expected cost, samples times c (Eq 19-20), and the expected wall time;
- the recommended model: the lowest expected cost among the models whose lower bound of p is
  above one half (below it voting cannot be relied on to converge on the right answer).

>>> from maker import ModelEstimate, plan
>>> cheap = ModelEstimate(model="mini", p=0.998, p_low=0.995, v=0.99, cost_per_call=0.001)
>>> dear = ModelEstimate(model="big", p=0.9995, p_low=0.998, v=1.0, cost_per_call=0.01)
>>> result = plan([cheap, dear], steps=2**20 - 1, target=0.95)
>>> result.recommended, result.model("mini").k_min, result.model("big").k_min
('mini', 4, 3)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from ._errors import ConfigError
from ._formulas import expected_samples_per_step, k_min, p_run
from ._policy import Hedge


def _number(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(field, f"must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True, kw_only=True)
class ModelEstimate:
    """What is known of one model: p with its 95% interval, v, the cost per call and latency.

    ``p_low`` and ``p_high`` default to ``p`` (a p given without an interval is taken as
    exact). ``latency_s`` is the seconds one call takes, when known. Validated on construction.

    >>> ModelEstimate(model="m", p=0.99).p_low
    0.99
    >>> ModelEstimate(model="m", p=0.9, p_low=0.95)
    Traceback (most recent call last):
    ...
    maker.core._errors.ConfigError: p_low: must be at most p (0.9), got 0.95
    """

    model: str
    p: float
    v: float = 1.0
    cost_per_call: float = 0.0
    p_low: float = math.nan
    p_high: float = math.nan
    latency_s: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError("model", f"must be a non-empty name, got {self.model!r}")
        p = _number("p", self.p)
        if not 0.0 <= p <= 1.0:
            raise ConfigError("p", f"must be between 0 and 1, got {p}")
        # A frozen dataclass fills its defaults from other fields only through object.__setattr__.
        if math.isnan(self.p_low):
            object.__setattr__(self, "p_low", p)
        if math.isnan(self.p_high):
            object.__setattr__(self, "p_high", p)
        low, high = _number("p_low", self.p_low), _number("p_high", self.p_high)
        if not 0.0 <= low <= p:
            raise ConfigError("p_low", f"must be at most p ({p}), got {low}")
        if not p <= high <= 1.0:
            raise ConfigError("p_high", f"must be between p ({p}) and 1, got {high}")
        v = _number("v", self.v)
        if not 0.0 < v <= 1.0:
            raise ConfigError("v", f"must be in (0, 1] (the share not red-flagged), got {v}")
        cost = _number("cost_per_call", self.cost_per_call)
        if cost < 0:
            raise ConfigError("cost_per_call", f"must not be negative, got {cost}")
        if self.latency_s is not None and not _number("latency_s", self.latency_s) >= 0:
            raise ConfigError("latency_s", f"must not be negative, got {self.latency_s}")

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> ModelEstimate:
        """An estimate from one entry of a calibration report's ``models`` list.

        A model with no valid response (``p`` null) gets ``p = p_low = 0``: nothing says its
        voting would converge. A model with no response at all (``v`` null) cannot be planned.
        """
        if not isinstance(entry, Mapping):
            raise ConfigError("models", f"each entry must be an object, got {entry!r}")
        for key in ("model", "p_low", "v", "cost_per_call"):
            if key not in entry:
                raise ConfigError(f"models.{key}", "missing from a calibration entry")
        name = entry["model"]
        if entry["v"] is None:
            raise ConfigError("models.v", f"{name} answered no sample; calibrate it again")
        p = entry.get("p")
        latency = entry.get("mean_latency_s")
        return cls(
            model=name,
            p=0.0 if p is None else p,
            p_low=0.0 if p is None else entry["p_low"],
            p_high=entry.get("p_high", 1.0) if p is not None else 1.0,
            v=entry["v"],
            cost_per_call=entry["cost_per_call"],
            latency_s=latency,
        )


def estimates_from_calibration(
    source: str | os.PathLike[str] | Mapping[str, Any],
) -> list[ModelEstimate]:
    """Every model's estimate from a calibration report: a JSON file, or its parsed object."""
    if isinstance(source, Mapping):
        data: object = source
        where = "the calibration"
    else:
        path = Path(source)
        where = str(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError("from_calibration", f"cannot read {path}: {exc.strerror}") from exc
        except ValueError as exc:
            raise ConfigError("from_calibration", f"{path} is not JSON: {exc}") from exc
    if not isinstance(data, Mapping) or not isinstance(data.get("models"), list):
        raise ConfigError(
            "from_calibration", f"{where} is not a calibration report (no 'models' list)"
        )
    if not data["models"]:
        raise ConfigError("from_calibration", f"{where} holds no model")
    try:
        return [ModelEstimate.from_json(entry) for entry in data["models"]]
    except ConfigError as exc:
        raise ConfigError("from_calibration", f"{where}: {exc}") from exc


@dataclass(frozen=True, kw_only=True)
class ModelPlan:
    """The plan for one model. The expectations are None when voting cannot converge."""

    estimate: ModelEstimate
    k_min: int | None
    """Eq 14 at ``p_low``."""
    p_run: float | None
    """Eq 13: P(every step right) at ``k_min`` and ``p_low``."""
    expected_samples_per_step: float | None
    """Eq 16 at ``p`` and ``k_min``, over ``v`` (red-flagged samples are drawn again): the
    samples of the start of each step that decides it."""
    misspeculation_samples_per_step: float | None = None
    """Samples per step drawn for speculative starts that are abandoned (0 without
    pipelining): ``(1 - p) * k_min * pipeline`` (see :func:`plan`)."""
    hedge_samples_per_step: float | None = None
    """Hedges per step (0 without hedging): ``min((1 - quantile) * samples, per_step,
    share * (samples + misspeculated))`` (see :func:`plan`)."""
    expected_samples: float | None
    """All samples: those three per step, times the steps."""
    expected_cost_usd: float | None
    expected_wall_s: float | None
    """None when no latency is known. Steps one after another: pipelining and hedging cut
    wall time, which this leaves out (an upper estimate for them)."""
    note: str = ""

    @property
    def model(self) -> str:
        """The model's name."""
        return self.estimate.model

    @property
    def converges(self) -> bool:
        """Whether the lower bound of p is above one half, so that a k_min exists."""
        return self.k_min is not None

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible builtins: one entry of ``Plan.to_json()["models"]``."""
        # The estimate's fields flattened in, beside the one computed field.
        out: dict[str, Any] = msgspec.to_builtins(self.estimate)
        plan: dict[str, Any] = msgspec.to_builtins(self)
        del plan["estimate"]
        return {**out, "converges": self.converges, **plan}


@dataclass(frozen=True, kw_only=True)
class Plan:
    """Every model's plan for one task and target, and the recommended model."""

    steps: int
    target: float
    concurrency: int
    latency_s: float | None
    pipeline: int = 0
    """The pipeline depth planned for (0: off)."""
    hedge: Hedge | None = None
    """The hedging planned for (None: off)."""
    models: tuple[ModelPlan, ...]
    recommended: str | None
    """The model with the lowest expected cost among those that converge; None if none does."""

    def model(self, name: str) -> ModelPlan:
        """The plan of the model named ``name``."""
        for found in self.models:
            if found.model == name:
                return found
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible builtins (``maker plan --json``)."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        out["models"] = [m.to_json() for m in self.models]
        return out


def misspeculation_per_step(p: float, k: int, pipeline: int) -> float:
    """Expected samples per step drawn for speculative starts that a pipelined run abandons.

    A step's first valid vote is wrong with probability about ``1 - p``; the steps started
    ahead from the state it implies (up to ``pipeline`` of them) are then abandoned, each
    having drawn about its first round, ``k`` samples. Leads that change later (two wrong
    votes for one rival before the right answer's) are of order ``(1 - p)**2`` and left out;
    so are speculative starts that latency let draw less than a round.

    >>> misspeculation_per_step(0.99, 3, 0), round(misspeculation_per_step(0.99, 3, 2), 6)
    (0.0, 0.06)
    """
    return (1.0 - p) * k * pipeline


def hedges_per_step(hedge: Hedge | None, samples: float, misspeculated: float = 0.0) -> float:
    """Expected hedges per step, at most: each of the step's ``samples`` is past the
    ``quantile`` of the latencies with probability ``1 - quantile``, and if every such
    straggler held up the run, each would get a hedge; at most ``per_step`` of them go to
    one start, and at most ``share`` of all samples (``samples + misspeculated``) are hedges.
    Stragglers of steps that do not hold up the run get none, so the real figure is lower.

    >>> hedges_per_step(None, 3.0), round(hedges_per_step(Hedge(quantile=0.9), 3.0), 6)
    (0.0, 0.15)
    >>> hedges_per_step(Hedge(quantile=0.5, share=1.0), 3.0)  # per_step bounds it
    1.0
    """
    if hedge is None:
        return 0.0
    return min(
        (1.0 - hedge.quantile) * samples,
        float(hedge.per_step),
        hedge.share * (samples + misspeculated),
    )


def _plan_one(
    est: ModelEstimate,
    steps: int,
    target: float,
    concurrency: int,
    latency_s: float | None,
    pipeline: int,
    hedge: Hedge | None,
) -> ModelPlan:
    if not est.p_low > 0.5:
        note = (
            f"the lower bound of p ({est.p_low:.4f}) is not above 0.5: voting cannot be relied on "
            "to converge on the right answer"
        )
        return ModelPlan(
            estimate=est,
            k_min=None,
            p_run=None,
            expected_samples_per_step=None,
            expected_samples=None,
            expected_cost_usd=None,
            expected_wall_s=None,
            note=note,
        )
    k = k_min(est.p_low, target, steps)
    per_step = expected_samples_per_step(est.p, k, est.v)
    misspeculated = misspeculation_per_step(est.p, k, pipeline)
    hedged = hedges_per_step(hedge, per_step, misspeculated)
    total = (per_step + misspeculated + hedged) * steps
    latency = latency_s if latency_s is not None else est.latency_s
    wall: float | None = None
    if latency is not None:
        # Steps are decided one after another; within a step the engine keeps at most the k
        # samples that could still matter in flight (fewer under a smaller cap), so a step takes
        # about per_step / min(k, concurrency) call latencies, and never less than one. Tail
        # rounds with fewer samples in flight make the real figure somewhat larger.
        rounds = max(1.0, per_step / min(k, concurrency))
        wall = steps * rounds * latency
    return ModelPlan(
        estimate=est,
        k_min=k,
        p_run=p_run(est.p_low, k, steps),
        expected_samples_per_step=per_step,
        misspeculation_samples_per_step=misspeculated,
        hedge_samples_per_step=hedged,
        expected_samples=total,
        expected_cost_usd=total * est.cost_per_call,
        expected_wall_s=wall,
    )


def plan(
    models: Sequence[ModelEstimate],
    *,
    steps: int,
    target: float,
    concurrency: int = 1,
    latency_s: float | None = None,
    pipeline: int = 0,
    hedge: Hedge | None = None,
) -> Plan:
    """Plan a run of ``steps`` steps that must succeed with probability ``target``.

    ``concurrency`` is the cap on samples in flight; ``latency_s`` the seconds per call, which
    overrides each model's own ``latency_s`` (the wall time is None when neither is known).
    Ties in expected cost (unpriced models cost 0) go to fewer expected samples, then to the
    order given.

    ``pipeline`` and ``hedge`` are the run's (:class:`Policy`'s fields of those names); the
    samples they add are counted in the expected samples and cost, and shown per step:

    - misspeculation, with ``pipeline`` > 0: ``(1 - p) * k * pipeline`` per step
      (:func:`misspeculation_per_step`: the first valid vote is wrong with probability about
      1 - p, and then each of the ``pipeline`` steps started ahead is abandoned after about a
      round of k samples);
    - hedges: ``min((1 - quantile) * s, per_step, share * (s + misspeculated))`` per step,
      s being the Eq 16 samples (:func:`hedges_per_step`: an upper estimate).

    Both are estimates of what such a run draws and pays for; the counters of the run itself
    (:class:`maker.RunResult`'s ``misspeculated_samples`` and ``hedged_samples``) are what it
    drew.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError("steps", f"must be a positive integer, got {steps!r}")
    if not 0.0 < _number("target", target) < 1.0:
        raise ConfigError("target", f"must be strictly between 0 and 1, got {target}")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigError("concurrency", f"must be a positive integer, got {concurrency!r}")
    if latency_s is not None and not _number("latency_s", latency_s) >= 0:
        raise ConfigError("latency_s", f"must not be negative, got {latency_s}")
    if isinstance(pipeline, bool) or not isinstance(pipeline, int) or pipeline < 0:
        raise ConfigError("pipeline", f"must be an integer >= 0, got {pipeline!r}")
    if hedge is not None and not isinstance(hedge, Hedge):
        raise ConfigError("hedge", f"must be a Hedge or None, got {hedge!r}")
    if not models:
        raise ConfigError("models", "give at least one model to plan for")
    names = [m.model for m in models]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError("models", f"each model may appear once; repeated: {repeated}")
    plans = tuple(
        _plan_one(m, steps, target, concurrency, latency_s, pipeline, hedge) for m in models
    )
    ranked = sorted(
        (
            (p.expected_cost_usd, p.expected_samples, i)
            for i, p in enumerate(plans)
            if p.expected_cost_usd is not None and p.expected_samples is not None
        ),
    )
    recommended = plans[ranked[0][2]].model if ranked else None
    return Plan(
        steps=steps,
        target=target,
        concurrency=concurrency,
        latency_s=latency_s,
        pipeline=pipeline,
        hedge=hedge,
        models=plans,
        recommended=recommended,
    )
