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
import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from events import (
    AnyEvent,
    KChanged,
    RedFlagged,
    RunStarted,
    SampleReceived,
    SampleRequested,
    StepDecided,
    StepStarted,
    VoteCounted,
)
from maker import ConfigError

from ._fold import RunSummary, summarize

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
    tally: dict[str, int]
    """The votes each candidate had when the step ended (canonical JSON answers)."""
    decided: bool

    @property
    def candidates(self) -> int:
        """How many distinct answers got a vote."""
        return len(self.tally)


@dataclass(frozen=True, kw_only=True)
class ReportData:
    """The numbers behind every plot of a run's report, folded from its events alone."""

    summary: RunSummary
    steps_started: int
    """Distinct steps the run began voting on."""
    votes_to_decide: dict[int, int]
    """Decided step -> the valid votes counted until its decision."""
    undecided: tuple[int, ...]
    """``undecided[r]``: steps not decided after r voting rounds (votes), r = 0, 1, ... R, where
    R is the most votes any step needed. ``undecided[0] == steps_started``; steps never decided
    stay counted to the end."""
    hardest: tuple[HardStep, ...]
    red_flags_by_step: dict[int, dict[str, int]]
    """Step -> red flags by reason, for the steps that had any."""
    cost_over_time: tuple[tuple[float, float], ...]
    """(seconds since the run started, cumulative USD) at each response received."""
    latencies: tuple[float, ...]
    """Seconds of every response received, in the order received."""
    k_changes: tuple[tuple[int, int], ...] = ()
    """(step, new k) of every change adaptive k made, in order."""

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
        """JSON-compatible builtins."""
        return {
            "summary": self.summary.to_json(),
            "steps_started": self.steps_started,
            "convergence": [list(pair) for pair in self.convergence],
            "votes_to_decide": {str(s): v for s, v in sorted(self.votes_to_decide.items())},
            "hardest": [
                {
                    "step": h.step,
                    "votes": h.votes,
                    "samples": h.samples,
                    "red_flags": h.red_flags,
                    "candidates": h.candidates,
                    "decided": h.decided,
                    "tally": dict(h.tally),
                }
                for h in self.hardest
            ],
            "red_flags_by_step": {
                str(s): dict(r) for s, r in sorted(self.red_flags_by_step.items())
            },
            "cost_usd": self.cost_over_time[-1][1] if self.cost_over_time else 0.0,
            "latencies": len(self.latencies),
            "k_changes": [list(change) for change in self.k_changes],
        }


def report_data(events: Iterable[AnyEvent], *, hardest: int = HARDEST) -> ReportData:
    """Fold one run's events, in seq order, into the numbers its report plots.

    Raises :class:`maker.ConfigError` for events of several runs or none.
    """
    events = list(events)
    if not events:
        raise ConfigError("events", "no events to report on")
    run_ids = {event.run_id for event in events}
    if len(run_ids) != 1:
        raise ConfigError("events", f"a report covers one run; got {len(run_ids)} runs")
    summary = summarize(events)
    started_at = events[0].ts
    steps: set[int] = set()
    votes: Counter[int] = Counter()
    samples: Counter[int] = Counter()
    flags: dict[int, Counter[str]] = {}
    tallies: dict[int, dict[str, int]] = {}
    decided: dict[int, int] = {}
    cost = 0.0
    cost_over_time: list[tuple[float, float]] = []
    latencies: list[float] = []
    k_changes: list[tuple[int, int]] = []
    for event in events:
        match event:
            case RunStarted():
                started_at = event.ts
            case StepStarted():
                steps.add(event.step)
            case SampleRequested():
                samples[event.step] += 1
            case SampleReceived():
                cost += event.cost_usd
                cost_over_time.append((event.ts - started_at, cost))
                latencies.append(event.latency_s)
            case RedFlagged():
                flags.setdefault(event.step, Counter())[event.reason] += 1
            case VoteCounted():
                votes[event.step] += 1
                tallies[event.step] = dict(event.tally)
            case StepDecided():
                decided[event.step] = votes[event.step]
                tallies[event.step] = dict(event.votes)
            case KChanged():
                k_changes.append((event.step, event.k))
            case _:
                pass
    rounds = max(decided.values(), default=0)
    needed = Counter(decided.values())
    undecided = [len(steps)]
    for r in range(1, rounds + 1):
        undecided.append(undecided[-1] - needed[r])
    ranked = sorted(steps, key=lambda s: (-votes[s], -samples[s], s))[: max(0, hardest)]
    hard = tuple(
        HardStep(
            step=s,
            votes=votes[s],
            samples=samples[s],
            red_flags=sum(flags.get(s, Counter()).values()),
            tally=tallies.get(s, {}),
            decided=s in decided,
        )
        for s in ranked
    )
    return ReportData(
        summary=summary,
        steps_started=len(steps),
        votes_to_decide=decided,
        undecided=tuple(undecided),
        hardest=hard,
        red_flags_by_step={s: dict(c) for s, c in sorted(flags.items())},
        cost_over_time=tuple(cost_over_time),
        latencies=tuple(latencies),
        k_changes=tuple(k_changes),
    )


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
        if data.summary.policy.get("mode") == "calibration":
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
    counts = Counter(data.votes_to_decide.values())
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


def write_plots(data: ReportData, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Draw every plot of ``data`` as a PNG in ``out_dir``; returns their paths, in page order."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, _caption, draw in _PLOTS:
        figure = _new_figure()
        draw(figure.subplots(), data)
        path = out / name
        figure.savefig(path, format="png")
        paths.append(path)
    return paths


def write_report(
    events: Iterable[AnyEvent], out_dir: str | os.PathLike[str], *, hardest: int = HARDEST
) -> Path:
    """Write ``index.html`` and its PNG plots for one run into ``out_dir``; return the page.

    Needs matplotlib (``pip install 'maker[report]'``); without it raises
    :class:`maker.ConfigError` saying so, before writing anything.
    """
    _new_figure()  # fail on a missing matplotlib before touching the directory
    data = report_data(events, hardest=hardest)
    out = Path(out_dir)
    write_plots(data, out)
    page = out / "index.html"
    page.write_text(render_html(data), encoding="utf-8")
    return page


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
    mode = s["policy"].get("mode")
    if mode:
        rows.append(("mode", mode))
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
