"""A run's report: the paper's convergence figure and the run's other vital signs, from its log.

:func:`report_data` folds one run's events into the numbers behind every plot, with no plotting
library involved; :func:`write_report` draws them as PNGs with matplotlib (the ``report`` extra)
and writes an ``index.html`` beside them that references only those files, so the directory opens
in any browser, offline.

The plots:

- undecided steps after each voting round, on a log scale (the paper's Fig. 8): after the first
  k rounds the count falls exponentially round by round;
- votes needed per step, as a histogram, with the hardest steps listed in the page;
- red flags over the steps, by reason;
- the cumulative cost over the run's time;
- the distribution of the models' latency.
"""

from __future__ import annotations

import html
import itertools
import json
import os
from array import array
from collections import Counter
from collections.abc import AsyncIterable, Iterable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from events import (
    AnyEvent,
    KChanged,
    RedFlagged,
    RunStarted,
    SampleReceived,
    SampleRequested,
    StepAbandoned,
    StepDecided,
    StepStarted,
    VoteCounted,
    open_output,
)
from maker.core import CalibrationRecord, ConfigError
from maker.core._serialise import fields_json

from ._fold import Fold, OpenSteps, RunSummary, TopSteps

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

HARDEST = 10
"""How many of the hardest steps the page lists."""

_RED_FLAG_BINS = 100


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

    @property
    def candidates(self) -> int:
        """How many distinct answers got a vote."""
        return len(self.tally)

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible builtins: the fields and ``candidates``."""
        return fields_json(self, derived={"candidates": self.candidates})


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


class _Sampled:
    """A series thinned to at most ``points`` entries: every entry until then, then every
    2nd, 4th, ... (the stride doubles whenever the buffer fills), plus always the last entry.
    An even, deterministic sample of the run in O(points) memory."""

    def __init__(self, points: int) -> None:
        self._points = max(2, points)
        self._xs = array("d")
        self._ys = array("d")
        self._stride = 1
        self._seen = 0
        self._last: tuple[float, float] | None = None

    def add(self, x: float, y: float = 0.0) -> None:
        if self._seen % self._stride == 0:
            self._xs.append(x)
            self._ys.append(y)
            if len(self._xs) > self._points:
                self._xs, self._ys = self._xs[::2], self._ys[::2]
                self._stride *= 2
            self._last = None
        else:
            self._last = (x, y)
        self._seen += 1

    def pairs(self) -> tuple[tuple[float, float], ...]:
        out = tuple(zip(self._xs, self._ys, strict=True))
        return out + ((self._last,) if self._last is not None else ())

    def xs(self) -> tuple[float, ...]:
        return tuple(self._xs) + ((self._last[0],) if self._last is not None else ())


@dataclass(frozen=True, kw_only=True)
class ReportData:
    """The numbers behind every plot of a run's report, folded from its events alone.

    Memory does not grow with the run but for :attr:`votes_to_decide` (4 bytes a step): the
    response series are sampled down to at most ``points`` entries and the red flags binned
    to at most :data:`FLAG_BINS` bins (see :func:`report_data`).

    On a pipelined run the per-step figures (votes to decide, the hardest steps, red flags by
    step) are of each step's decided start (or its latest, if undecided): a misspeculated
    start's samples were drawn for another state. They count in the summary's totals, with
    its ``misspeculated_samples``, ``misspeculated_steps`` and ``hedged_samples``.
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
    red_flags_step_width: int = 1
    """How many steps each key of :attr:`red_flags_by_step` covers."""
    votes_histogram: dict[int, int] = field(default_factory=dict)
    """Votes -> how many decided steps needed that many."""

    _NOT_IN_JSON: ClassVar[tuple[str, ...]] = (
        "undecided",
        "cost_over_time",
        "red_flags_step_width",
        "votes_histogram",
    )
    """Fields :meth:`to_json` leaves out: the series behind the plots, given in the JSON by
    what they add up to (``convergence``, ``cost_usd``), and what only the plots need."""

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

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible builtins: the fields (steps as string keys, in step order; the
        number of latencies), then ``convergence`` and the run's ``cost_usd``."""
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
            },
            derived={
                "convergence": [list(pair) for pair in self.convergence],
                "cost_usd": self.cost_over_time[-1][1] if self.cost_over_time else 0.0,
            },
        )


POINTS = 4096
"""How many entries a report keeps of each response series."""

FLAG_BINS = 1024
"""How many steps (or bins of steps) a report keeps red flags for; the plot draws 100 bins."""


@dataclass(slots=True)
class _OpenStep:
    """A step's figures while it is voted on: of its latest start only (a pipelined run may
    abandon a start and begin the step again, as the next branch)."""

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

    def restart(self, branch: int) -> None:
        self.branch, self.votes, self.samples, self.red_flags = branch, 0, 0, 0
        self.tally, self.flags = {}, []


class _ReportFold:
    """The fold behind :func:`report_data`: one event at a time, in bounded memory."""

    def __init__(self, hardest: int, points: int) -> None:
        self.fold = Fold(per_step=False)
        self.points = max(2, points)
        self.run_id: str | None = None
        self.started_at = 0.0
        self.steps_started = 0
        self.decided = StepVotes()
        self.needed: Counter[int] = Counter()
        self.top: TopSteps[_OpenStep] = TopSteps(hardest, lambda h: (h.votes, h.samples, -h.step))
        self.open: OpenSteps[_OpenStep] = OpenSteps(_OpenStep, self._close)
        self.flags: dict[int, Counter[str]] = {}
        self.flag_width = 1
        self.cost = 0.0
        self.cost_over_time = _Sampled(self.points)
        self.latencies = _Sampled(self.points)
        self.k_changes: list[tuple[int, int]] = []

    def _close(self, step: _OpenStep) -> None:
        self._flush(step)
        if step.started:
            self.steps_started += 1
            self.top.add(step)

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

    def add(self, event: AnyEvent) -> None:
        if self.run_id is None:
            self.run_id = event.run_id
            self.started_at = event.ts
        elif event.run_id != self.run_id:
            raise ConfigError("events", "a report covers one run; got 2 or more runs")
        self.fold.add(event)
        match event:
            case RunStarted():
                self.started_at = event.ts
            case StepStarted():
                step = self.open.get(event.step)
                if step.branch != event.branch:
                    step.restart(event.branch)
                step.started = True
            case SampleRequested():
                self.open.get(event.step).samples += 1
            case SampleReceived():
                self.cost += event.cost_usd
                self.cost_over_time.add(event.ts - self.started_at, self.cost)
                self.latencies.add(event.latency_s)
            case RedFlagged():
                step = self.open.get(event.step)
                step.red_flags += 1
                step.flags.append(event.reason)
            case VoteCounted():
                step = self.open.get(event.step)
                step.votes += 1
                step.tally = dict(event.tally)
            case StepDecided():
                step = self.open.get(event.step)
                step.decided = True
                step.tally = dict(event.votes)
                self.decided.set(event.step, step.votes)
                self.needed[step.votes] += 1
                self._flush(step)
            case KChanged():
                self.k_changes.append((event.step, event.k))
            case StepAbandoned():
                # A misspeculated start: its votes, samples and red flags are not the step's.
                self.open.get(event.step).restart(event.branch + 1)
            case _:
                pass

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
            )
            for h in self.top.best()
        )
        return ReportData(
            summary=self.fold.summary(),
            steps_started=self.steps_started,
            votes_to_decide=self.decided,
            undecided=tuple(undecided),
            hardest=hard,
            red_flags_by_step={s: dict(c) for s, c in sorted(self.flags.items())},
            cost_over_time=self.cost_over_time.pairs(),
            latencies=self.latencies.xs(),
            k_changes=tuple(self.k_changes),
            red_flags_step_width=self.flag_width,
            votes_histogram=dict(sorted(self.needed.items())),
        )


def report_data(
    events: Iterable[AnyEvent], *, hardest: int = HARDEST, points: int = POINTS
) -> ReportData:
    """Fold one run's events, in seq order, into the numbers its report plots.

    The events are consumed one at a time (pass a generator, or use :func:`report_data_async`
    over a log's reader) and memory stays bounded: the convergence curve and the votes
    histogram are counts by round; the hardest steps come from a heap of ``hardest``; the cost
    and latency series keep every response up to ``points`` of them, then an even sample of at
    most ``points`` (the last response always included); red flags are kept by step up to
    :data:`FLAG_BINS` flagged steps, then in bins of a power-of-two width. Only
    :attr:`ReportData.votes_to_decide` grows with the run, at 4 bytes a step.

    Raises :class:`maker.ConfigError` for events of several runs or none.
    """
    fold = _ReportFold(hardest, points)
    for event in events:
        fold.add(event)
    return fold.result()


async def report_data_async(
    events: AsyncIterable[AnyEvent], *, hardest: int = HARDEST, points: int = POINTS
) -> ReportData:
    """:func:`report_data` over an async iterable, such as :meth:`events.EventLog.read`."""
    fold = _ReportFold(hardest, points)
    async for event in events:
        fold.add(event)
    return fold.result()


# -- drawing -------------------------------------------------------------------------------


def _new_figure() -> Figure:
    """A figure on the Agg canvas, without pyplot: no global state, no display needed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ConfigError("report", "plots need matplotlib: pip install 'maker[report]'") from exc
    figure = Figure(figsize=(7.0, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _integer_ticks(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _plot_convergence(ax: Axes, data: ReportData) -> None:
    ax.set_title("Undecided steps after each voting round")
    ax.set_xlabel("voting round (valid votes)")
    ax.set_ylabel("undecided steps")
    points = [(r, n) for r, n in data.convergence if n > 0]
    if not points:
        # No decided step (a calibration, or a run that failed at once), or every step decided
        # by round 1: a log scale has nothing positive to show.
        if isinstance(data.summary.recorded_policy, CalibrationRecord):
            _empty(ax, "a calibration decides no step")
        elif not data.votes_to_decide:
            _empty(ax, "no step was decided")
        else:
            _empty(ax, "every step was decided in round 1")
        return
    ax.plot([r for r, _ in points], [n for _, n in points], marker="o")
    ax.set_yscale("log")
    _integer_ticks(ax)
    # No step can decide before k votes: mark each margin the run used (several under
    # adaptive k).
    ks = sorted(set(data.ks))
    for k in ks:
        ax.axvline(k, color="0.6", linestyle="--", linewidth=1)
    if len(ks) <= 2:
        for k in ks:
            ax.annotate(f"k = {k}", (k, points[0][1]), xytext=(4, -12), textcoords="offset points")
    else:  # adaptive k: one label, so the marks do not overwrite each other
        label = f"k = {', '.join(str(k) for k in ks)} (adaptive)"
        ax.annotate(label, (0.99, 0.97), xycoords="axes fraction", ha="right", va="top")
    ax.grid(True, which="both", alpha=0.3)


def _plot_votes(ax: Axes, data: ReportData) -> None:
    ax.set_title("Votes needed per decided step")
    ax.set_xlabel("votes")
    ax.set_ylabel("steps")
    counts = data.votes_histogram or Counter(data.votes_to_decide.values())
    if not counts:
        _empty(ax, "no step was decided")
        return
    xs = sorted(counts)
    ax.bar(xs, [counts[x] for x in xs], width=0.8)
    ax.set_yscale("log")
    _integer_ticks(ax)
    ax.grid(True, axis="y", which="both", alpha=0.3)


def _plot_red_flags(ax: Axes, data: ReportData) -> None:
    ax.set_title("Red flags over the steps")
    ax.set_xlabel("step")
    ax.set_ylabel("red flags")
    if not data.red_flags_by_step:
        _empty(ax, "no red flags")
        return
    last = max(max(data.red_flags_by_step), data.summary.steps - 1, 0)
    width = max(1, -(-(last + 1) // _RED_FLAG_BINS))  # steps per bin, rounded up
    # Folded flags may come binned already: a plot bin holds whole folded bins.
    step_width = max(1, data.red_flags_step_width)
    width = -(-width // step_width) * step_width
    reasons = sorted({r for flags in data.red_flags_by_step.values() for r in flags})
    bins = (last // width) + 1
    starts = [b * width for b in range(bins)]
    bottom = [0] * bins
    for reason in reasons:
        heights = [0] * bins
        for step, flags in data.red_flags_by_step.items():
            heights[step // width] += flags.get(reason, 0)
        ax.bar(starts, heights, width=width, bottom=bottom, align="edge", label=reason)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.legend(loc="upper right", fontsize="small")
    if width > 1:
        ax.set_ylabel(f"red flags per {width} steps")


def _plot_cost(ax: Axes, data: ReportData) -> None:
    ax.set_title("Cumulative cost")
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("USD")
    if not data.cost_over_time:
        _empty(ax, "no response received")
        return
    ax.plot([t for t, _ in data.cost_over_time], [c for _, c in data.cost_over_time])
    if data.cost_over_time[-1][1] == 0:
        _empty(ax, "no response had a known price")
    ax.grid(True, alpha=0.3)


def _plot_latency(ax: Axes, data: ReportData) -> None:
    ax.set_title("Latency of the responses")
    ax.set_xlabel("seconds")
    ax.set_ylabel("responses")
    if not data.latencies:
        _empty(ax, "no response received")
        return
    ax.hist(data.latencies, bins=50)
    ax.grid(True, axis="y", alpha=0.3)


_PLOTS = (
    ("convergence.png", "Undecided steps after each voting round (log scale)", _plot_convergence),
    ("votes.png", "Votes needed per step", _plot_votes),
    ("red_flags.png", "Red flags over the steps", _plot_red_flags),
    ("cost.png", "Cumulative cost over time", _plot_cost),
    ("latency.png", "Latency distribution", _plot_latency),
)
"""(file, caption, drawer) of every plot, in page order."""


def write_plots(
    data: ReportData,
    out_dir: str | os.PathLike[str],
    *,
    logs: Iterable[str | os.PathLike[str]] = (),
) -> list[Path]:
    """Draw every plot of ``data`` as a PNG in ``out_dir``; returns their paths, in page order.

    The files are written with :func:`events.open_output`: each appears whole, mode 0600, and
    none does when drawing fails. None may be one of ``logs`` (the log the data came from) nor
    any other maker log: that raises :class:`events.OutputIsLogError` before any is written.
    """
    return _write(data, out_dir, tuple(logs), page=False)


def write_report(
    events: Iterable[AnyEvent] | ReportData,
    out_dir: str | os.PathLike[str],
    *,
    hardest: int = HARDEST,
    logs: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """Write ``index.html`` and its PNG plots for one run into ``out_dir``; return the page.

    ``events`` are the run's events (folded by :func:`report_data`), or the data already folded
    (by :func:`report_data_async` from a log, say; ``hardest`` then does not apply).

    The files are written as in :func:`write_plots`, the page last (so it is never there
    without its plots); none may be one of ``logs`` nor any other maker log.

    Needs matplotlib (``pip install 'maker[report]'``); without it raises
    :class:`maker.ConfigError` saying so, before writing anything.
    """
    _new_figure()  # fail on a missing matplotlib before touching the directory
    data = events if isinstance(events, ReportData) else report_data(events, hardest=hardest)
    _write(data, out_dir, tuple(logs), page=True)
    return Path(out_dir) / "index.html"


def _write(
    data: ReportData,
    out_dir: str | os.PathLike[str],
    logs: tuple[str | os.PathLike[str], ...],
    *,
    page: bool,
) -> list[Path]:
    """Write the plots (and the page): every file is opened, and so checked, before any is
    drawn; each is renamed into place when all are written, the page (opened first) last."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with ExitStack() as files:
        html_file = (
            files.enter_context(open_output(out / "index.html", logs=logs)) if page else None
        )
        plots = [
            (out / name, draw, files.enter_context(open_output(out / name, logs=logs, mode="wb")))
            for name, _caption, draw in _PLOTS
        ]
        for _path, draw, png in plots:
            figure = _new_figure()
            draw(figure.subplots(), data)
            figure.savefig(png, format="png")
        if html_file is not None:
            html_file.write(render_html(data))
    return [path for path, _draw, _png in plots]


# -- the page ------------------------------------------------------------------------------


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _row(*cells: object, head: bool = False) -> str:
    tag = "th" if head else "td"
    return "<tr>" + "".join(f"<{tag}>{_esc(c)}</{tag}>" for c in cells) + "</tr>"


def _figures(data: ReportData) -> list[tuple[str, str]]:
    s = data.summary.to_json()
    flags = ", ".join(f"{n} {r}" for r, n in sorted(s["red_flags_by_reason"].items())) or "none"
    failures = ", ".join(f"{n} {k}" for k, n in sorted(s["failures_by_kind"].items()))
    rows = [
        ("run", s["run_id"]),
        ("task", f"{s['task']} {json.dumps(s['task_params'], sort_keys=True)}"),
        ("model", ", ".join(s["models"])),
    ]
    recorded = data.summary.recorded_policy
    if isinstance(recorded, CalibrationRecord):
        rows.append(("mode", recorded.mode))
    rows.append(("status", s["status"] + (f" ({s['reason']})" if s["reason"] else "")))
    if s["k"]:
        rows.append(("k", s["k"]))
    if data.k_changes:
        shown = ", ".join(f"{k} from step {step}" for step, k in data.k_changes[:10])
        more = f", and {len(data.k_changes) - 10} more" if len(data.k_changes) > 10 else ""
        rows.append(("k changes (adaptive)", shown + more))
    rows += [
        ("steps", f"{s['steps']} completed, {data.steps_started} started"),
        (
            "samples",
            f"{s['samples']} (per decided step: mean {s['samples_per_step_mean']:.3f}, "
            f"max {s['samples_per_step_max']})",
        ),
        ("votes", s["votes"]),
        ("red flags", f"{s['red_flags']} ({flags})"),
        ("failures", str(s["failures"]) + (f" ({failures})" if failures else "")),
        ("tokens", f"{s['input_tokens']} in, {s['output_tokens']} out"),
        ("cost", f"${s['cost_usd']:.4f}"),
        ("wall time", f"{s['wall_s']:.2f} s"),
    ]
    if s["misspeculated_steps"]:
        rows.append(
            (
                "misspeculated",
                f"{s['misspeculated_samples']} samples of {s['misspeculated_steps']} "
                "abandoned starts",
            )
        )
    if s["hedged_samples"]:
        rows.append(("hedged", f"{s['hedged_samples']} samples"))
    if s["cancelled_samples"]:
        reasons = s["cancelled_by_reason"]
        text = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
        rows.append(("cancelled", f"{s['cancelled_samples']} ({text})"))
    if s["resumed"]:
        rows.append(("resumed", f"{s['resumed']} time(s)"))
    return [(name, str(value)) for name, value in rows]


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.2em 0.8em; text-align: left;
         vertical-align: top; }
td.answer { font-family: ui-monospace, monospace; font-size: 0.85em; }
figure { margin: 1em 0 2em; }
figcaption { color: #555; }
img { max-width: 100%; }
"""


def render_html(data: ReportData) -> str:
    """The report page for ``data``; it references the PNGs :func:`write_plots` writes."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>maker run {_esc(data.summary.run_id)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Run {_esc(data.summary.run_id)}</h1>",
        "<table>",
        *(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in _figures(data)),
        "</table>",
    ]
    for name, caption, _draw in _PLOTS:
        parts.append(
            f'<figure><img src="{_esc(name)}" alt="{_esc(caption)}">'
            f"<figcaption>{_esc(caption)}</figcaption></figure>"
        )
        if name == "convergence.png" and data.convergence:
            parts += ["<table>", _row("round", "undecided", "share", head=True)]
            total = data.undecided[0] or 1
            for r, n in data.convergence:
                parts.append(_row(r, n, f"{n / total:.2e}"))
            parts.append("</table>")
        if name == "votes.png" and data.hardest:
            parts += [
                "<h2>Hardest steps</h2>",
                "<table>",
                _row("step", "votes", "samples", "red flags", "decided", "tally", head=True),
            ]
            for h in data.hardest:
                tally = "<br>".join(
                    f"{_esc(n)} &times; {_esc(answer)}"
                    for answer, n in sorted(h.tally.items(), key=lambda item: -item[1])
                )
                parts.append(
                    "<tr>"
                    + "".join(
                        f"<td>{_esc(c)}</td>"
                        for c in (h.step, h.votes, h.samples, h.red_flags, h.decided)
                    )
                    + f'<td class="answer">{tally}</td></tr>'
                )
            parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
