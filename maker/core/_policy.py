"""The voting policy of a run: frozen, keyword-only, validated on construction."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import msgspec

from ._adaptive import AdaptiveK
from ._errors import ConfigError
from ._matchers import EXACT, matcher_spec
from ._redflags import RedFlagCheck, RedFlagRules
from ._tally import VoteRule


@dataclass(frozen=True, kw_only=True)
class Hedge:
    """When a straggling sample gets a second one sent beside it (a hedge).

    A sample of the step that holds up the run (the oldest undecided) that has been in flight
    longer than the ``quantile`` of this run's observed latencies, and at least ``min_s``
    seconds, gets one more sample requested for its step: whichever answers first votes first,
    and the straggler still votes if it answers before the step is decided. Until ``warmup``
    latencies are observed the threshold is twice the slowest seen so far (nothing is hedged
    before one is seen). At most ``per_step`` hedges go to one start of a step, and hedges stay
    within ``share`` of the run's samples (at least one is always allowed).

    The threshold is a wall-clock matter, so a hedge is recorded (``sample_requested`` with
    ``hedge_of``) and a replay sends it where the log has it, never from a clock.
    """

    quantile: float = 0.95
    min_s: float = 0.01
    warmup: int = 20
    per_step: int = 1
    share: float = 0.05

    def __post_init__(self) -> None:
        if not (math.isfinite(self.quantile) and 0.0 < self.quantile < 1.0):
            raise ConfigError("hedge.quantile", f"must be between 0 and 1, got {self.quantile}")
        if not (math.isfinite(self.min_s) and self.min_s >= 0.0):
            raise ConfigError("hedge.min_s", f"must be >= 0, got {self.min_s}")
        if self.warmup < 1:
            raise ConfigError("hedge.warmup", f"must be at least 1, got {self.warmup}")
        if self.per_step < 1:
            raise ConfigError("hedge.per_step", f"must be at least 1, got {self.per_step}")
        if not (math.isfinite(self.share) and 0.0 < self.share <= 1.0):
            raise ConfigError("hedge.share", f"must be in (0, 1], got {self.share}")


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
    - ``pipeline``: how many steps may be voted ahead of the oldest undecided one, each from
      the state its predecessor's leading answer implies (0: one step at a time). A step still
      decides only from samples drawn for the state it was decided to start from: a start whose
      predecessor decides otherwise is abandoned, its samples cancelled, and started again;
    - ``hedge``: when set, a straggling sample of the step that holds up the run gets one more
      sample sent beside it (see :class:`Hedge`);
    - ``red_flags``: which responses are discarded;
    - ``adaptive``: when set, k follows the run's own votes (see :class:`AdaptiveK`); ``k`` is
      then only the value recorded before the first step;
    - ``matcher``: the spec of the matcher that decides which answers vote together
      (``"exact"``, canonical JSON, by default; ``"text"``, ``"number:rel=1e-6"``, ...: see
      :mod:`maker.core._matchers`); kept in its canonical form.

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
    pipeline: int = 0
    hedge: Hedge | None = None
    red_flags: RedFlagRules = field(default_factory=RedFlagRules)
    adaptive: AdaptiveK | None = None
    matcher: str = EXACT

    def __post_init__(self) -> None:
        # The canonical spec, so that two spellings of one matcher record the same policy.
        object.__setattr__(self, "matcher", matcher_spec(self.matcher))
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
        if not isinstance(self.pipeline, int) or self.pipeline < 0:
            raise ConfigError("pipeline", f"must be >= 0, got {self.pipeline}")
        if self.hedge is not None and not isinstance(self.hedge, Hedge):
            raise ConfigError("hedge", f"must be a Hedge or None, got {self.hedge!r}")
        if self.adaptive is not None and self.max_samples_per_step < self.adaptive.k_max:
            raise ConfigError(
                "max_samples_per_step",
                f"must be at least adaptive.k_max ({self.adaptive.k_max}), "
                f"got {self.max_samples_per_step}",
            )
        if self.max_attempts < 1:
            raise ConfigError("max_attempts", f"must be at least 1, got {self.max_attempts}")

    def record(self) -> PolicyRecord:
        """The policy as ``run_started`` records it, typed."""
        flags = self.red_flags
        return PolicyRecord(
            **{name: getattr(self, name) for name in _RECORDED_AS_IS},
            red_flags=RedFlagRecord(
                max_output_tokens=flags.max_output_tokens,
                flag_truncated=flags.flag_truncated,
                checks=tuple(getattr(c, "__name__", repr(c)) for c in flags.checks),
            ),
            hedge=self.hedge,
            adaptive=self.adaptive,
        )

    def describe(self) -> dict[str, Any]:
        """The policy as JSON, for ``run_started``."""
        return self.record().to_json()

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, checks: tuple[RedFlagCheck, ...] = ()) -> Policy:
        """The policy a ``run_started`` event records: the inverse of :meth:`describe`.

        A field the record leaves out (a log from before the field existed) takes the
        policy's default, as do the red-flag rules' fields. User red-flag checks are code, so
        the log holds only their names: pass the same checks again, in order, or this fails
        naming them. A calibration's policy is not a voting policy: this fails on one (see
        :func:`recorded_policy`).
        """
        record = recorded_policy(data)
        if not isinstance(record, PolicyRecord):
            raise ConfigError("policy", "the run is a calibration, which records no voting policy")
        return record.policy(checks)

    def temperature_for(self, ordinal: int) -> float:
        """The temperature of a step's sample number ``ordinal`` (0-based)."""
        return self.first_temperature if ordinal == 0 else self.temperature


_RECORDED_AS_IS = tuple(
    f.name for f in fields(Policy) if f.name not in ("red_flags", "adaptive", "hedge")
)
"""The policy's fields a record holds as they are (red-flag checks are code: only their names
are recorded). A field added to :class:`Policy` is recorded without more ado, once
:class:`PolicyRecord` has it too (a test checks that the two agree)."""

_DEFAULT = Policy()
_DEFAULT_FLAGS = RedFlagRules()


class RedFlagRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The red-flag rules as a run records them: user checks are code, so only their names."""

    max_output_tokens: int | None = _DEFAULT_FLAGS.max_output_tokens
    flag_truncated: bool = _DEFAULT_FLAGS.flag_truncated
    checks: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """As recorded."""
        return _as_recorded(self)

    def rules(self, checks: tuple[RedFlagCheck, ...] = ()) -> RedFlagRules:
        """The rules again, given the same user checks, in order, or this fails naming them."""
        given = tuple(getattr(c, "__name__", repr(c)) for c in checks)
        if given != self.checks:
            raise ConfigError(
                "red_flags.checks",
                f"the run used red-flag checks {list(self.checks)}; "
                f"pass the same checks (got {list(given)})",
            )
        return RedFlagRules(
            max_output_tokens=self.max_output_tokens,
            flag_truncated=self.flag_truncated,
            checks=checks,
        )


class PolicyRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A voting run's policy as its ``run_started`` records it.

    A field a record leaves out (a log from before the field existed) takes the policy's
    default: the defaults live in :class:`Policy` alone.
    """

    k: int = _DEFAULT.k
    rule: VoteRule = _DEFAULT.rule
    first_temperature: float = _DEFAULT.first_temperature
    temperature: float = _DEFAULT.temperature
    max_tokens: int = _DEFAULT.max_tokens
    max_samples_per_step: int = _DEFAULT.max_samples_per_step
    max_attempts: int = _DEFAULT.max_attempts
    speculative: int = _DEFAULT.speculative
    pipeline: int = 0
    """0, not the policy's default: a run recorded before pipelining voted one step at a time."""
    hedge: Hedge | None = None
    red_flags: RedFlagRecord = RedFlagRecord()
    adaptive: AdaptiveK | None = None
    matcher: str = EXACT
    """The matcher's spec; a run recorded before matchers voted by canonical JSON."""

    def to_json(self) -> dict[str, Any]:
        """As recorded: ``pipeline``, ``hedge``, ``adaptive`` and ``matcher`` only when set, so
        runs recorded before they existed still replay exactly."""
        out = _as_recorded(self)
        for name, off in _OMITTED_WHEN_OFF:
            if out[name] == off:
                del out[name]
        return out

    def policy(self, checks: tuple[RedFlagCheck, ...] = ()) -> Policy:
        """The policy again (validated); ``checks`` as for :meth:`RedFlagRecord.rules`."""
        return Policy(
            **{name: getattr(self, name) for name in _RECORDED_AS_IS},
            red_flags=self.red_flags.rules(checks),
            hedge=self.hedge,
            adaptive=self.adaptive,
        )


_OMITTED_WHEN_OFF: tuple[tuple[str, Any], ...] = (
    ("pipeline", 0),
    ("hedge", None),
    ("adaptive", None),
    ("matcher", EXACT),
)
"""The record's fields that a run without them leaves out (runs recorded before they existed
had none), with the value that means off."""


class CalibrationRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A calibration's policy as its ``run_started`` records it: it votes nothing, so it
    records no k or rule, only how it sampled (and ``mode``, which marks it in the log)."""

    mode: Literal["calibration"] = "calibration"
    samples: int = 0
    temperature: float = _DEFAULT.temperature
    max_tokens: int = _DEFAULT.max_tokens
    max_attempts: int = _DEFAULT.max_attempts
    red_flags: RedFlagRecord = RedFlagRecord()

    def to_json(self) -> dict[str, Any]:
        """As recorded."""
        return _as_recorded(self)


def _as_recorded(record: msgspec.Struct) -> dict[str, Any]:
    # Through JSON rather than to_builtins: the result must equal what a log reads back (lists,
    # not tuples), since a replay compares the two.
    out: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(record))
    return out


def recorded_policy(data: Mapping[str, Any]) -> PolicyRecord | CalibrationRecord:
    """The policy a ``run_started`` event records, typed: a calibration's or a voting run's.

    Every reader of a recorded policy goes through here, so that a field missing from an old
    log takes one default everywhere. A record that is not a policy raises
    :class:`ConfigError`.
    """
    kind: type[PolicyRecord | CalibrationRecord] = (
        CalibrationRecord if data.get("mode") == "calibration" else PolicyRecord
    )
    try:
        return msgspec.convert(dict(data), kind)
    except msgspec.ValidationError as exc:
        raise ConfigError("policy", f"the recorded policy does not read back: {exc}") from None
