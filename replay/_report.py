"""A run's report data: the numbers behind every plot of its report, folded from its log.

:func:`report_data` folds one run's events into a :class:`ReportData`, with no plotting library
involved (``replay._plots`` draws it, ``replay._page`` writes the page and its files). The
figures, and the paper's predictions beside them:

- undecided steps after each voting round (the paper's Fig. 8), with the curve the run's own p
  and k predict (:func:`maker.undecided_share`, the gambler's-ruin walk behind Eq 9 and Eq 16);
- votes needed per step, and samples per decided step over the run against Eq 16 and Eq 16 / v;
- red flags as a share of the responses, over the steps and against the responses' output
  tokens, beside the share of valid votes against the step's winner (the paper's length
  analysis);
- the models' latency, with its quantiles;
- retries, failures, scheduler waits and circuit-breaker changes over time, and steps per second;
- cost when prices are known, tokens otherwise;
- the hardest steps, each with its events;
- for a calibration run, the model's p (judged against the task's oracle) with its interval.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
from array import array
from collections import Counter
from collections.abc import AsyncIterable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from events import (
    AnyEvent,
    BreakerChanged,
    KChanged,
    RedFlagged,
    RunStarted,
    SampleFailed,
    SampleReceived,
    SampleRequested,
    SchedulerWaited,
    StepAbandoned,
    StepDecided,
    StepEvent,
    StepStarted,
    VoteCounted,
    canonical_json,
    to_dict,
)
from maker.core import (
    CalibrationRecord,
    ConfigError,
    PolicyRecord,
    Task,
    expected_votes_per_step,
    recorded_policy,
    undecided_share,
)
from maker.core._serialise import fields_json
from maker.engine import ModelCalibration

from ._fold import Fold, OpenSteps, RunSummary, TopSteps
from ._replayer import task_for

HARDEST = 10
"""How many of the hardest steps a report lists."""

POINTS = 4096
"""How many entries a report keeps of each response series."""

FLAG_BINS = 1024
"""How many steps (or bins of steps) a report keeps red flags by reason for."""

STEP_BINS = 256
"""At most this many bins of steps in the per-step series (the width doubles to fit)."""

TIME_BINS = 240
"""At most this many bins of time in the series over time."""

TOKEN_BINS = 64
"""At most this many bins of output tokens in the length analysis."""

HARD_STEP_EVENTS = 500
"""The most events a report keeps of each hardest step (the first ones)."""

BREAKER_CHANGES = 256
"""The most circuit-breaker changes a report lists (the first ones)."""

PREDICTED_ROUNDS = 1000
"""The predicted convergence curve stops after this many rounds, or sooner, when fewer than
half a step is expected to be left undecided."""

_FIRST_TIME_WIDTH = 1 / 64
"""Seconds each time bin starts with: a power of two, so widths stay exact as they double."""


@dataclass(frozen=True, kw_only=True)
class HardStep:
    """One of the steps that needed the most votes."""

    step: int
    votes: int
    samples: int
    red_flags: int
    decided: bool
    tally: dict[str, int]
    """The votes each candidate had when the step ended (canonical JSON answers)."""
    events: tuple[AnyEvent, ...] = ()
    """The step's events in seq order (abandoned starts included), the first
    :data:`HARD_STEP_EVENTS` of them."""
    events_total: int = 0
    """How many events the step had."""

    @property
    def candidates(self) -> int:
        """How many distinct answers got a vote."""
        return len(self.tally)

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible builtins: the fields (each event as ``maker export`` prints it) and
        ``candidates``."""
        return fields_json(
            self,
            values={"events": [to_dict(e) for e in self.events]},
            derived={"candidates": self.candidates},
        )


class StepVotes(Mapping[int, int]):
    """Decided step -> the valid votes counted until its decision, stored compactly: an
    ``array('I')`` indexed by step holding votes + 1 (0 for a step not decided), 4 bytes a
    step. The only per-step series a report keeps."""

    def __init__(self) -> None:
        self._votes = array("I")
        self._decided = 0

    def set(self, step: int, votes: int) -> None:
        if step < 0:
            return
        if step >= len(self._votes):
            self._votes.extend(bytes(4 * (step + 1 - len(self._votes))))
        if self._votes[step] == 0:
            self._decided += 1
        self._votes[step] = votes + 1

    def __getitem__(self, step: int) -> int:
        if 0 <= step < len(self._votes) and self._votes[step]:
            return self._votes[step] - 1
        raise KeyError(step)

    def __iter__(self) -> Iterator[int]:
        return (step for step, votes in enumerate(self._votes) if votes)

    def __len__(self) -> int:
        return self._decided

    def __repr__(self) -> str:
        # Bounded: a task's or a dataclass's repr must not spell out a million steps.
        shown = dict(itertools.islice(self.items(), 8))
        more = f", ... {len(self) - len(shown)} more" if len(self) > len(shown) else ""
        return f"StepVotes({shown!r}{more})"


@dataclass(frozen=True, kw_only=True)
class Binned:
    """Counts over bins of one width along a line (steps, seconds, output tokens).

    Bin ``i`` covers ``[i * width, (i + 1) * width)``; every series has one value per bin, from
    bin 0 to the last bin anything fell in. The width doubles while the fold runs whenever a
    value lands past the last bin allowed, so a series has a bounded number of bins however
    long the run.
    """

    width: float
    series: dict[str, tuple[float, ...]]

    @property
    def bins(self) -> int:
        """How many bins each series has."""
        return max((len(v) for v in self.series.values()), default=0)

    def get(self, name: str) -> tuple[float, ...]:
        """The series ``name``: zeros when nothing was counted under it."""
        return self.series.get(name, (0.0,) * self.bins)

    def starts(self) -> list[float]:
        """Where each bin begins."""
        return [i * self.width for i in range(self.bins)]

    def coarsened(self, bins: int) -> Binned:
        """The same counts in bins 2, 4, 8, ... times as wide, the fewest doublings that leave
        at most ``bins`` bins (``self`` when it has no more already)."""
        factor = 1
        while -(-self.bins // factor) > max(1, bins):
            factor *= 2
        if factor == 1:
            return self
        series = {
            name: tuple(math.fsum(values[i : i + factor]) for i in range(0, len(values), factor))
            for name, values in self.series.items()
        }
        return Binned(width=self.width * factor, series=series)

    def to_json(self) -> dict[str, Any]:
        """``{"width", "start", "series": {name: values}}``; a series of whole numbers (every
        count) as integers."""

        def plain(values: tuple[float, ...]) -> list[float] | list[int]:
            if all(float(v).is_integer() for v in values):
                return [int(v) for v in values]
            return list(values)

        width: float | int = int(self.width) if self.width.is_integer() else self.width
        return {
            "width": width,
            "start": plain(tuple(self.starts())),
            "series": {name: plain(values) for name, values in sorted(self.series.items())},
        }


class _Bins:
    """The fold behind :class:`Binned`: sparse counts by bin index, coarsened as needed."""

    def __init__(self, width: float, limit: int) -> None:
        self.width = float(width)
        self.limit = max(2, limit)
        self.rows: dict[str, dict[int, float]] = {}
        self.top = -1

    def _index(self, x: float) -> int:
        if not x > 0:  # a clock that went back, or the very start
            return 0
        while (index := int(x // self.width)) >= self.limit:
            self.width *= 2
            self.rows = {name: _halved(row) for name, row in self.rows.items()}
            self.top //= 2
        return index

    def add(self, x: float, name: str, amount: float = 1.0) -> None:
        index = self._index(x)
        row = self.rows.setdefault(name, {})
        row[index] = row.get(index, 0.0) + amount
        self.top = max(self.top, index)

    def reach(self, x: float) -> None:
        """Extend the bins to ``x`` with nothing counted (the run went on until then)."""
        index = self._index(x)  # first: it may widen the bins, and so lower ``top``
        self.top = max(self.top, index)

    def result(self, names: Iterable[str] = ()) -> Binned:
        bins = self.top + 1
        series = {
            name: tuple(row.get(i, 0.0) for i in range(bins)) for name, row in self.rows.items()
        }
        for name in names:
            series.setdefault(name, (0.0,) * bins)
        return Binned(width=self.width, series=series)


def _halved(row: dict[int, float]) -> dict[int, float]:
    merged: dict[int, float] = {}
    for index, value in row.items():
        merged[index // 2] = merged.get(index // 2, 0.0) + value
    return merged


class _Sampled:
    """A series thinned to at most ``points`` entries: every entry until then, then every
    2nd, 4th, ... (the stride doubles whenever the buffer fills), plus always the last entry.
    An even, deterministic sample of the run in O(points) memory."""

    def __init__(self, points: int, columns: int = 2) -> None:
        self._points = max(2, points)
        self._columns = [array("d") for _ in range(columns)]
        self._stride = 1
        self._seen = 0
        self._last: tuple[float, ...] | None = None

    def add(self, *row: float) -> None:
        if self._seen % self._stride == 0:
            for column, value in zip(self._columns, row, strict=True):
                column.append(value)
            if len(self._columns[0]) > self._points:
                self._columns = [column[::2] for column in self._columns]
                self._stride *= 2
            self._last = None
        else:
            self._last = row
        self._seen += 1

    def rows(self) -> tuple[tuple[float, ...], ...]:
        out = tuple(zip(*self._columns, strict=True))
        return out + ((self._last,) if self._last is not None else ())


def _quantile(ordered: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of sorted values (one of the values, never between)."""
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, kw_only=True)
class Prediction:
    """What the paper's formulas expect of a run, at the p and v it measured.

    ``p`` is the share of the decided steps' valid votes that went to their step's winner, ``v``
    the share of responses that were not red-flagged; each k the run used is weighted by the
    steps it started with it.
    """

    p: float
    v: float
    undecided: tuple[float, ...]
    """Expected undecided steps after each round r = 0, 1, ...: the steps started under each k
    times :func:`maker.undecided_share` at p."""
    votes_per_step: float
    """Eq 16: the expected valid votes per decided step."""
    samples_per_step: float
    """Eq 16 / v: the expected samples per decided step, red-flagged ones included."""

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible builtins: the fields."""
        return fields_json(self)


@dataclass(frozen=True, kw_only=True)
class ReportData:
    """The numbers behind every plot of a run's report, folded from its events alone.

    Memory does not grow with the run but for :attr:`votes_to_decide` (4 bytes a step): the
    response series are sampled down to at most ``points`` entries, the binned series kept to
    a bounded number of bins, and the red flags by step to at most :data:`FLAG_BINS` bins
    (see :func:`report_data`).

    On a pipelined run the per-step figures (votes to decide, the hardest steps, red flags by
    step) are of each step's decided start (or its latest, if undecided): a misspeculated
    start's samples were drawn for another state. They count in the summary's totals, with
    its ``misspeculated_samples``, ``misspeculated_steps`` and ``hedged_samples``, and in the
    series over time, over steps and over tokens, which count every response.
    """

    summary: RunSummary
    steps_started: int
    """Distinct steps the run began voting on."""
    votes_to_decide: Mapping[int, int]
    """Decided step -> the valid votes counted until its decision (a compact
    :class:`StepVotes`)."""
    hardest: tuple[HardStep, ...]
    red_flags_by_step: dict[int, dict[str, int]]
    """Step -> red flags by reason, for the steps that had any. When more than
    :data:`FLAG_BINS` steps had some, the keys are the first steps of bins of
    :attr:`red_flags_step_width` steps."""
    latencies: tuple[float, ...]
    """Seconds of every response received, in the order received; sampled like
    :attr:`cost_over_time` for a longer run. The JSON gives their number."""
    k_changes: tuple[tuple[int, int], ...] = ()
    """(step, new k) of every change adaptive k made, in order."""
    undecided: tuple[int, ...]
    """``undecided[r]``: steps not decided after r voting rounds (votes), r = 0, 1, ... R, where
    R is the most votes any step needed. ``undecided[0] == steps_started``; steps never decided
    stay counted to the end. The JSON gives it as :attr:`convergence`."""
    cost_over_time: tuple[tuple[float, float], ...]
    """(seconds since the run started, cumulative USD) at each response received; sampled
    evenly down to about ``points`` entries for a longer run, always ending with the last. The
    JSON gives the last total, as ``cost_usd``."""
    tokens_over_time: tuple[tuple[float, int], ...] = ()
    """(seconds since the run started, cumulative input + output tokens), sampled as
    :attr:`cost_over_time` is."""
    red_flags_step_width: int = 1
    """How many steps each key of :attr:`red_flags_by_step` covers."""
    votes_histogram: dict[int, int] = field(default_factory=dict)
    """Votes -> how many decided steps needed that many."""
    by_step: Binned = field(default_factory=lambda: Binned(width=1.0, series={}))
    """Over the steps (every start's responses): ``received`` responses, ``red_flags`` and
    ``red_flags:REASON``, and of the decided steps, by the step decided: ``decided``,
    ``samples`` and ``votes`` (their sums)."""
    by_time: Binned = field(default_factory=lambda: Binned(width=1.0, series={}))
    """Over the seconds since the run started: ``decided`` steps, ``received`` responses,
    ``retries`` (failed attempts tried again), ``failures`` (attempts that failed for good),
    ``waits`` the scheduler made and ``waited_s``, the seconds they held samples back."""
    by_tokens: Binned = field(default_factory=lambda: Binned(width=1.0, series={}))
    """Over the responses' output tokens: ``responses``, ``red_flags``, ``judged`` valid votes
    (of decided steps, or of a calibration) and ``against``, those for another answer than the
    step's winner (a calibration's: than the task's oracle)."""
    breaker_changes: tuple[tuple[float, str, str, int], ...] = ()
    """(seconds since the run started, model, new state, failures) of the first
    :data:`BREAKER_CHANGES` circuit-breaker changes."""
    breaker_changes_total: int = 0
    started_by_k: dict[int, int] = field(default_factory=dict)
    """k -> steps started while the run voted with that margin."""
    agree: int = 0
    """Valid votes of decided steps that went to the step's winner."""
    disagree: int = 0
    """Valid votes of decided steps that went to another answer."""
    max_tokens: int = 0
    """The output-token cap the run recorded (0: none recorded)."""
    last_seq: int = -1
    """The seq of the last event folded: a live view follows the run's events from there."""
    started_at: float = 0.0
    """The timestamp of ``run_started``: the origin of the series over time."""
    calibration: ModelCalibration | None = None
    """A calibration run's figures (p judged against the task's oracle), as ``maker calibrate``
    reports them; None for a voting run."""
    calibration_error: str = ""
    """Why a calibration run's answers could not be judged (its task could not be rebuilt)."""

    _NOT_IN_JSON: ClassVar[tuple[str, ...]] = (
        "undecided",
        "cost_over_time",
        "tokens_over_time",
        "red_flags_step_width",
        "votes_histogram",
    )
    """Fields :meth:`to_json` leaves out: the series behind the plots, given in the JSON by
    what they add up to (``convergence``, ``cost_usd``, ``tokens``), and what only the plots
    need."""

    @property
    def ks(self) -> list[int]:
        """Every vote margin the run used, in order of first use (the recorded k first)."""
        used = [self.summary.k] if self.summary.k else []
        for _step, k in self.k_changes:
            if k not in used:
                used.append(k)
        return used

    @property
    def convergence(self) -> list[tuple[int, int]]:
        """(round, steps undecided after it) for rounds 1..R: the paper's Fig. 8."""
        return [(r, self.undecided[r]) for r in range(1, len(self.undecided))]

    @property
    def is_calibration(self) -> bool:
        """Whether the run is a calibration (it votes on no step)."""
        return isinstance(self.summary.recorded_policy, CalibrationRecord)

    @property
    def p_estimate(self) -> float | None:
        """The share of the decided steps' valid votes that went to the winner; None before
        any step was decided."""
        total = self.agree + self.disagree
        return self.agree / total if total else None

    @property
    def v_estimate(self) -> float | None:
        """The share of responses that were not red-flagged; None without a response."""
        received = self.summary.received
        return self.summary.votes / received if received else None

    @functools.cached_property
    def prediction(self) -> Prediction | None:
        """The formulas' expectations at the measured p and v; None for a calibration, before
        a step was decided, or when p is not above 0.5 (voting would not converge)."""
        p, v = self.p_estimate, self.v_estimate
        started = {k: n for k, n in self.started_by_k.items() if n > 0 and k > 0}
        if self.is_calibration or p is None or not p > 0.5 or not v or not started:
            return None
        total = sum(started.values())
        rounds = max(len(self.undecided) - 1, max(started))
        shares = {k: undecided_share(p, k, rounds) for k in started}

        def expected(r: int) -> float:
            return math.fsum(n * shares[k][r] for k, n in started.items())

        curve = [expected(r) for r in range(rounds + 1)]
        # The tail, until less than half a step is expected to be left.
        while curve[-1] >= 0.5 and len(curve) <= PREDICTED_ROUNDS:
            rounds = 2 * rounds
            shares = {k: undecided_share(p, k, rounds) for k in started}
            curve = [expected(r) for r in range(rounds + 1)]
        while len(curve) > len(self.undecided) and curve[-2] < 0.5:
            curve.pop()
        votes = math.fsum(n * expected_votes_per_step(p, k) for k, n in started.items()) / total
        return Prediction(
            p=p,
            v=v,
            undecided=tuple(curve[: PREDICTED_ROUNDS + 1]),
            votes_per_step=votes,
            samples_per_step=votes / v,
        )

    @property
    def latency_quantiles(self) -> dict[str, float]:
        """The p50, p95 and p99 of the latencies (nearest rank; of the sample kept, for a run
        past ``points`` responses); empty without a response."""
        if not self.latencies:
            return {}
        ordered = sorted(self.latencies)
        return {f"p{round(q * 100)}": _quantile(ordered, q) for q in (0.5, 0.95, 0.99)}

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible builtins: the fields (steps as string keys, in step order; the
        number of latencies; the binned series as :meth:`Binned.to_json`), then
        ``convergence``, the run's ``cost_usd`` and ``tokens``, ``p_estimate``,
        ``v_estimate``, ``prediction`` and ``latency_quantiles``."""
        prediction = self.prediction
        return fields_json(
            self,
            omit=self._NOT_IN_JSON,
            values={
                "summary": self.summary.to_json(),
                "votes_to_decide": {str(s): v for s, v in sorted(self.votes_to_decide.items())},
                "hardest": [h.to_json() for h in self.hardest],
                "red_flags_by_step": {
                    str(s): dict(r) for s, r in sorted(self.red_flags_by_step.items())
                },
                "latencies": len(self.latencies),
                "by_step": self.by_step.to_json(),
                "by_time": self.by_time.to_json(),
                "by_tokens": self.by_tokens.to_json(),
                "breaker_changes": [list(c) for c in self.breaker_changes],
                "started_by_k": {str(k): n for k, n in sorted(self.started_by_k.items())},
                "calibration": None if self.calibration is None else self.calibration.to_json(),
            },
            derived={
                "convergence": [list(pair) for pair in self.convergence],
                "cost_usd": self.cost_over_time[-1][1] if self.cost_over_time else 0.0,
                "tokens": self.tokens_over_time[-1][1] if self.tokens_over_time else 0,
                "p_estimate": self.p_estimate,
                "v_estimate": self.v_estimate,
                "prediction": None if prediction is None else prediction.to_json(),
                "latency_quantiles": self.latency_quantiles,
            },
        )


@dataclass(slots=True)
class _OpenStep:
    """A step's figures while it is voted on: of its latest start only (a pipelined run may
    abandon a start and begin the step again, as the next branch), but for its events."""

    step: int
    started: bool = False
    branch: int = 0
    votes: int = 0
    samples: int = 0
    red_flags: int = 0
    tally: dict[str, int] = field(default_factory=dict)
    decided: bool = False
    flags: list[str] = field(default_factory=list)
    """The red flags' reasons of the start, binned by step once it is decided (or at the end):
    an abandoned start's are not the step's."""
    tokens: dict[str, int] = field(default_factory=dict)
    """Output tokens of the responses received and not yet judged, by sample id."""
    ballots: list[tuple[str, int]] = field(default_factory=list)
    """(candidate, output tokens) of the start's valid votes, judged once it is decided."""
    expected: str | None = None
    """A calibration step's right answer (the oracle's, canonical JSON)."""
    events: list[AnyEvent] | None = field(default_factory=list)
    """The step's events while it may still be one of the hardest; None once it cannot."""
    events_total: int = 0

    def restart(self, branch: int) -> None:
        self.branch, self.votes, self.samples, self.red_flags = branch, 0, 0, 0
        self.tally, self.flags, self.ballots = {}, [], []


def _hardness(step: _OpenStep) -> tuple[int, int, int]:
    """The order of the hardest steps: most votes, then most samples, then the earliest."""
    return (step.votes, step.samples, -step.step)


class _ReportFold:
    """The fold behind :func:`report_data`: one event at a time, in bounded memory."""

    def __init__(self, hardest: int, points: int, allow_plugins: Collection[str]) -> None:
        self.fold = Fold(per_step=False)
        self.points = max(2, points)
        self.allow_plugins = tuple(allow_plugins)
        self.run_id: str | None = None
        self.started_at = 0.0
        self.last_seq = -1
        self.steps_started = 0
        self.decided = StepVotes()
        self.needed: Counter[int] = Counter()
        self.top: TopSteps[_OpenStep] = TopSteps(hardest, _hardness)
        self.open: OpenSteps[_OpenStep] = OpenSteps(_OpenStep, self._close)
        self.flags: dict[int, Counter[str]] = {}
        self.flag_width = 1
        self.cost = 0.0
        self.tokens = 0
        self.cost_over_time = _Sampled(self.points, 3)
        self.latencies = _Sampled(self.points, 1)
        self.k_changes: list[tuple[int, int]] = []
        self.by_step = _Bins(1, STEP_BINS)
        self.by_time = _Bins(_FIRST_TIME_WIDTH, TIME_BINS)
        self.by_tokens = _Bins(1, TOKEN_BINS)
        self.breakers: list[tuple[float, str, str, int]] = []
        self.breakers_total = 0
        self.started_by_k: Counter[int] = Counter()
        self.k = 0
        self.max_attempts = 1
        self.max_tokens = 0
        self.agree = self.disagree = 0
        self.calibrating = False
        self.judge: Task[Any, Any] | None = None
        self.judge_error = ""
        self.correct = 0
        self.final_failures = 0
        self.latency_total = 0.0

    def _k_of(self, step: int) -> int:
        """The margin ``step`` was voted with: the recorded k, or the last change at or
        before it."""
        starts = [s for s, _ in self.k_changes]
        at = bisect.bisect_right(starts, step)
        return self.k_changes[at - 1][1] if at else self.k

    def _close(self, step: _OpenStep) -> None:
        self._flush(step)
        if step.started:
            self.steps_started += 1
            if not self.calibrating:
                self.started_by_k[self._k_of(step.step)] += 1
            self.top.add(step)
        step.tokens = {}

    def _flush(self, step: _OpenStep) -> None:
        for reason in step.flags:
            self._flag(step.step, reason)
        step.flags = []

    def _flag(self, step: int, reason: str) -> None:
        key = step - step % self.flag_width
        self.flags.setdefault(key, Counter())[reason] += 1
        while len(self.flags) > FLAG_BINS:
            # Too many flagged steps to list one by one: coarsen to bins twice as wide.
            self.flag_width *= 2
            merged: dict[int, Counter[str]] = {}
            for start, counts in self.flags.items():
                merged.setdefault(start - start % self.flag_width, Counter()).update(counts)
            self.flags = merged

    def _start(self, event: RunStarted) -> None:
        self.started_at = event.ts
        recorded = recorded_policy(event.policy)
        self.max_attempts = recorded.max_attempts
        self.max_tokens = recorded.max_tokens
        if isinstance(recorded, PolicyRecord):
            self.k = recorded.k
            return
        self.calibrating = True
        try:
            # The oracle judges a calibration's answers, as `maker calibrate` did.
            self.judge = task_for(event, allow_plugins=self.allow_plugins)
        except Exception as exc:  # a task that cannot be rebuilt: the rest is still shown
            self.judge_error = f"{type(exc).__name__}: {exc}"

    def _expected(self, event: StepStarted) -> str | None:
        judge = self.judge
        if judge is None:
            return None
        try:
            answer = judge.oracle(judge.state_from_json(event.state))
        except Exception as exc:
            self.judge, self.judge_error = None, f"step {event.step}: {type(exc).__name__}: {exc}"
            return None
        if answer is None:
            self.judge, self.judge_error = None, f"step {event.step}: the task has no oracle"
            return None
        return canonical_json(judge.answer_to_json(answer))

    def add(self, event: AnyEvent) -> None:
        if self.run_id is None:
            self.run_id = event.run_id
            self.started_at = event.ts
        elif event.run_id != self.run_id:
            raise ConfigError("events", "a report covers one run; got 2 or more runs")
        self.fold.add(event)
        self.last_seq = event.seq
        t = event.ts - self.started_at
        self.by_time.reach(t)
        step = self.open.get(event.step) if isinstance(event, StepEvent) else None
        if step is not None:
            step.events_total += 1
            if step.events is not None and len(step.events) < HARD_STEP_EVENTS:
                step.events.append(event)
        match event:
            case RunStarted():
                self._start(event)
            case StepStarted():
                assert step is not None
                if step.branch != event.branch:
                    step.restart(event.branch)
                step.started = True
                if self.calibrating and step.expected is None:
                    step.expected = self._expected(event)
            case SampleRequested():
                assert step is not None
                step.samples += 1
            case SampleReceived():
                assert step is not None
                self.cost += event.cost_usd
                self.tokens += event.input_tokens + event.output_tokens
                self.cost_over_time.add(t, self.cost, self.tokens)
                self.latencies.add(event.latency_s)
                self.latency_total += event.latency_s
                step.tokens[event.sample_id] = event.output_tokens
                self.by_step.add(event.step, "received")
                self.by_time.add(t, "received")
                self.by_tokens.add(event.output_tokens, "responses")
            case RedFlagged():
                assert step is not None
                step.red_flags += 1
                step.flags.append(event.reason)
                self.by_step.add(event.step, "red_flags")
                self.by_step.add(event.step, f"red_flags:{event.reason}")
                tokens = step.tokens.pop(event.sample_id, None)
                if tokens is not None:
                    self.by_tokens.add(tokens, "red_flags")
            case VoteCounted():
                assert step is not None
                step.votes += 1
                step.tally = dict(event.tally)
                tokens = step.tokens.pop(event.sample_id, None)
                if self.calibrating:
                    right = step.expected is not None and event.candidate == step.expected
                    self.correct += right
                    if tokens is not None and step.expected is not None:
                        self.by_tokens.add(tokens, "judged")
                        self.by_tokens.add(tokens, "against", 0.0 if right else 1.0)
                elif tokens is not None:
                    step.ballots.append((event.candidate, tokens))
            case StepDecided():
                assert step is not None
                step.decided = True
                step.tally = dict(event.votes)
                votes = sum(event.votes.values())
                self.decided.set(event.step, step.votes)
                self.needed[step.votes] += 1
                winner = event.votes.get(event.winner, 0)
                self.agree += winner
                self.disagree += votes - winner
                self.by_step.add(event.step, "decided")
                self.by_step.add(event.step, "samples", event.samples)
                self.by_step.add(event.step, "votes", votes)
                self.by_time.add(t, "decided")
                for candidate, tokens in step.ballots:
                    self.by_tokens.add(tokens, "judged")
                    self.by_tokens.add(tokens, "against", float(candidate != event.winner))
                step.ballots = []
                self._flush(step)
                if not self.top.admits(_hardness(step)):
                    # Decided, and easier than the hardest kept so far: its events are not
                    # listed, and an open step holds them no longer (bounded memory).
                    step.events = None
            case SampleFailed():
                retried = event.retryable and event.attempt < self.max_attempts
                self.by_time.add(t, "retries" if retried else "failures")
                self.final_failures += not retried
            case SchedulerWaited():
                self.by_time.add(t, "waits")
                self.by_time.add(t, "waited_s", event.waited_s)
            case BreakerChanged():
                self.breakers_total += 1
                if len(self.breakers) < BREAKER_CHANGES:
                    self.breakers.append((t, event.model, event.state, event.failures))
            case KChanged():
                self.k_changes.append((event.step, event.k))
            case StepAbandoned():
                # A misspeculated start: its votes, samples and red flags are not the step's.
                assert step is not None
                step.restart(event.branch + 1)
            case _:
                pass

    def _calibration(self, summary: RunSummary) -> ModelCalibration | None:
        if not self.calibrating:
            return None
        judged = self.judge is not None
        return ModelCalibration(
            model=summary.models[0] if summary.models else "",
            run_id=summary.run_id,
            status=summary.status,
            reason=summary.reason,
            n=summary.received,
            valid=summary.votes if judged else 0,
            correct=self.correct if judged else 0,
            requested=summary.samples,
            failures=self.final_failures,
            red_flags=dict(summary.red_flags),
            input_tokens=summary.input_tokens,
            output_tokens=summary.output_tokens,
            cost_usd=summary.cost_usd,
            latency_s=self.latency_total,
        )

    def result(self) -> ReportData:
        if self.run_id is None:
            raise ConfigError("events", "no events to report on")
        self.open.close_all()
        rounds = max(self.needed, default=0)
        undecided = [self.steps_started]
        for r in range(1, rounds + 1):
            undecided.append(undecided[-1] - self.needed[r])
        hard = tuple(
            HardStep(
                step=h.step,
                votes=h.votes,
                samples=h.samples,
                red_flags=h.red_flags,
                tally=h.tally,
                decided=h.decided,
                events=tuple(h.events or ()),
                events_total=h.events_total,
            )
            # A calibration's steps are single samples of unrelated states: none is hard.
            for h in ([] if self.calibrating else self.top.best())
        )
        summary = self.fold.summary()
        rows = self.cost_over_time.rows()
        return ReportData(
            summary=summary,
            steps_started=self.steps_started,
            votes_to_decide=self.decided,
            undecided=tuple(undecided),
            hardest=hard,
            red_flags_by_step={s: dict(c) for s, c in sorted(self.flags.items())},
            cost_over_time=tuple((t, cost) for t, cost, _ in rows),
            tokens_over_time=tuple((t, int(tokens)) for t, _, tokens in rows),
            latencies=tuple(latency for (latency,) in self.latencies.rows()),
            k_changes=tuple(self.k_changes),
            red_flags_step_width=self.flag_width,
            votes_histogram=dict(sorted(self.needed.items())),
            by_step=self.by_step.result(("received", "red_flags", "decided", "samples", "votes")),
            by_time=self.by_time.result(
                ("decided", "received", "retries", "failures", "waits", "waited_s")
            ),
            by_tokens=self.by_tokens.result(("responses", "red_flags", "judged", "against")),
            breaker_changes=tuple(self.breakers),
            breaker_changes_total=self.breakers_total,
            started_by_k=dict(sorted(self.started_by_k.items())),
            agree=self.agree,
            disagree=self.disagree,
            max_tokens=self.max_tokens,
            last_seq=self.last_seq,
            started_at=self.started_at,
            calibration=self._calibration(summary),
            calibration_error=self.judge_error if self.calibrating else "",
        )


def report_data(
    events: Iterable[AnyEvent],
    *,
    hardest: int = HARDEST,
    points: int = POINTS,
    allow_plugins: Collection[str] = (),
) -> ReportData:
    """Fold one run's events, in seq order, into the numbers its report plots.

    The events are consumed one at a time (pass a generator, or use :func:`report_data_async`
    over a log's reader) and memory stays bounded: the convergence curve and the votes
    histogram are counts by round; the hardest steps come from a heap of ``hardest`` (with at
    most :data:`HARD_STEP_EVENTS` events each); the cost and latency series keep every
    response up to ``points`` of them, then an even sample of at most ``points`` (the last
    response always included); the series over steps, time and tokens are binned, to a width
    that doubles as needed; red flags are kept by step up to :data:`FLAG_BINS` flagged steps,
    then in bins of a power-of-two width. Only :attr:`ReportData.votes_to_decide` grows with
    the run, at 4 bytes a step.

    A calibration run's answers are judged against its task's oracle, the task rebuilt from
    the log (a plugin only if ``allow_plugins`` trusts it, see :func:`replay.task_for`).

    Raises :class:`maker.ConfigError` for events of several runs or none.
    """
    fold = _ReportFold(hardest, points, allow_plugins)
    for event in events:
        fold.add(event)
    return fold.result()


async def report_data_async(
    events: AsyncIterable[AnyEvent],
    *,
    hardest: int = HARDEST,
    points: int = POINTS,
    allow_plugins: Collection[str] = (),
) -> ReportData:
    """:func:`report_data` over an async iterable, such as :meth:`events.EventLog.read`."""
    fold = _ReportFold(hardest, points, allow_plugins)
    async for event in events:
        fold.add(event)
    return fold.result()
