"""The report's plots: the data behind each one (plain JSON, no plotting library), and its
drawing with matplotlib (the ``report`` extra).

Each plot is a :class:`Plot`: a name (its files are ``NAME.png``, ``NAME.svg`` and
``NAME.json``), a caption, the function that picks its data out of a :class:`ReportData`, and
the one that draws that data, and only that data: what the JSON says is what the picture shows.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from maker.core import ConfigError

from ._report import Binned, ReportData

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PLOT_BINS = 64
"""The most bins a plot over the steps or over time draws: finer bins hold too few responses
for a share (or a rate) to mean much."""

LATENCY_BINS = 40
"""Bins of the latency histogram (on a log axis)."""

_GREY = "0.55"
_PREDICTED = "tab:orange"


def new_figure(width: float = 7.0, height: float = 3.6) -> Figure:
    """A figure on the Agg canvas, without pyplot: no global state, no display needed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ConfigError("report", "plots need matplotlib: pip install 'maker[report]'") from exc
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _ratio(top: Sequence[float], bottom: Sequence[float]) -> list[float | None]:
    return [t / b if b else None for t, b in zip(top, bottom, strict=True)]


def _binned(binned: Binned, *names: str) -> dict[str, Any]:
    out: dict[str, Any] = {"width": binned.width, "start": binned.starts()}
    for name in names:
        out[name] = list(binned.get(name))
    return out


# -- the data of each plot -------------------------------------------------------------------


def convergence_json(data: ReportData) -> dict[str, Any]:
    """Undecided steps after each round r = 0..R, and the prediction at the run's p and k."""
    prediction = data.prediction
    return {
        "rounds": list(range(len(data.undecided))),
        "undecided": list(data.undecided),
        "steps": data.steps_started,
        "ks": data.ks,
        "p": None if prediction is None else prediction.p,
        "predicted": None if prediction is None else list(prediction.undecided),
    }


def votes_json(data: ReportData) -> dict[str, Any]:
    """Decided steps by the votes they needed, and how many the prediction expects."""
    prediction = data.prediction
    predicted = None
    if prediction is not None:
        # Expected steps deciding at round r: what leaves the undecided curve there.
        curve = prediction.undecided
        predicted = [curve[r - 1] - curve[r] for r in range(1, len(curve))]
    return {
        "votes": list(data.votes_histogram),
        "steps": list(data.votes_histogram.values()),
        "predicted_rounds": None if predicted is None else list(range(1, len(predicted) + 1)),
        "predicted": predicted,
    }


def samples_json(data: ReportData) -> dict[str, Any]:
    """Samples and valid votes per decided step over the steps, against Eq 16 and Eq 16 / v."""
    by = data.by_step.coarsened(PLOT_BINS)
    decided = by.get("decided")
    prediction = data.prediction
    summary = data.summary
    out = _binned(by, "decided", "samples", "votes")
    out.update(
        samples_per_step=_ratio(by.get("samples"), decided),
        votes_per_step=_ratio(by.get("votes"), decided),
        mean_samples=summary.mean_samples_per_step,
        mean_votes=sum(by.get("votes")) / sum(decided) if sum(decided) else None,
        eq16_votes=None if prediction is None else prediction.votes_per_step,
        eq16_samples=None if prediction is None else prediction.samples_per_step,
        v=data.v_estimate,
    )
    return out


def red_flags_json(data: ReportData) -> dict[str, Any]:
    """The share of responses red-flagged over the steps, in all and by reason."""
    by = data.by_step.coarsened(PLOT_BINS)
    received = by.get("received")
    out = _binned(by, "received", "red_flags")
    out["rate"] = _ratio(by.get("red_flags"), received)
    reasons = sorted(n.partition(":")[2] for n in by.series if n.startswith("red_flags:"))
    out["by_reason"] = {r: list(by.get(f"red_flags:{r}")) for r in reasons}
    return out


def tokens_json(data: ReportData) -> dict[str, Any]:
    """By output tokens: responses, the share red-flagged, and the share of judged valid votes
    that went against the winner (a calibration's: against the oracle)."""
    by = data.by_tokens
    out = _binned(by, "responses", "red_flags", "judged", "against")
    out.update(
        red_flag_rate=_ratio(by.get("red_flags"), by.get("responses")),
        against_rate=_ratio(by.get("against"), by.get("judged")),
        max_tokens=data.max_tokens,
        reference="oracle" if data.is_calibration else "winner",
    )
    return out


def latency_json(data: ReportData) -> dict[str, Any]:
    """A histogram of the latencies over log-spaced bins, and the quantiles."""
    positive = sorted(x for x in data.latencies if x > 0)
    edges: list[float] = []
    counts: list[int] = []
    if positive:
        low, high = positive[0], positive[-1]
        if high <= low:
            low, high = low / 1.5, high * 1.5
        ratio = (high / low) ** (1 / LATENCY_BINS)
        edges = [low * ratio**i for i in range(LATENCY_BINS + 1)]
        edges[-1] = high
        counts = [0] * LATENCY_BINS
        for x in positive:
            at = min(LATENCY_BINS - 1, int(math.log(x / low) / math.log(ratio)))
            counts[max(0, at)] += 1
    return {
        "responses": len(data.latencies),
        "zero": len(data.latencies) - len(positive),
        "edges": edges,
        "counts": counts,
        "quantiles": data.latency_quantiles,
    }


def throughput_json(data: ReportData) -> dict[str, Any]:
    """Steps decided per second, over the run."""
    by = data.by_time.coarsened(PLOT_BINS)
    out = _binned(by, "decided")
    out["steps_per_second"] = [n / by.width for n in by.get("decided")]
    return out


def incidents_json(data: ReportData) -> dict[str, Any]:
    """Retries, failures and scheduler waits over time, and the circuit-breaker changes."""
    out = _binned(data.by_time.coarsened(PLOT_BINS), "retries", "failures", "waits", "waited_s")
    out["breaker_changes"] = [
        {"t": t, "model": model, "state": state, "failures": failures}
        for t, model, state, failures in data.breaker_changes
    ]
    out["breaker_changes_total"] = data.breaker_changes_total
    return out


def cost_json(data: ReportData) -> dict[str, Any]:
    """Cumulative cost over time when any response had a price, else cumulative tokens."""
    priced = bool(data.cost_over_time) and data.cost_over_time[-1][1] > 0
    series = data.cost_over_time if priced else data.tokens_over_time
    return {
        "measure": "cost_usd" if priced else "tokens",
        "t": [t for t, _ in series],
        "value": [v for _, v in series],
    }


def flag_reasons_json(data: ReportData) -> dict[str, Any]:
    """Red flags by reason, and the responses they are a share of."""
    flags = dict(sorted(data.summary.red_flags.items()))
    return {"responses": data.summary.received, "red_flags": flags}


def overview_json(data: ReportData) -> dict[str, Any]:
    """The four panels of the overview, each as its own plot's data."""
    return {
        "convergence": convergence_json(data),
        "samples": samples_json(data),
        "throughput": throughput_json(data),
        "latency": latency_json(data),
    }


# -- drawing ---------------------------------------------------------------------------------


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _integer_ticks(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _note(ax: Axes, text: str) -> None:
    """A caption inside the axes, top right, over a white box: it never crosses a line."""
    ax.text(
        0.99,
        0.97,
        text,
        ha="right",
        va="top",
        transform=ax.transAxes,
        fontsize="small",
        bbox={"facecolor": "white", "edgecolor": "0.8", "alpha": 0.9},
    )


def _symlog(ax: Axes) -> None:
    # Logarithmic from 1 up, linear below: a count falling to zero is drawn, not dropped.
    ax.set_yscale("symlog", linthresh=1.0, linscale=0.5)
    ax.set_ylim(bottom=0)


def draw_convergence(ax: Axes, json: dict[str, Any]) -> None:
    ax.set_title("Undecided steps after each voting round")
    ax.set_xlabel("voting round (valid votes)")
    ax.set_ylabel("undecided steps")
    rounds, undecided = json["rounds"], json["undecided"]
    if len(rounds) <= 1:
        _empty(ax, "no step was decided")
        return
    ax.plot(rounds, undecided, marker="o", markersize=3, label="measured")
    if json["predicted"] is not None:
        predicted = json["predicted"]
        ax.plot(
            range(len(predicted)),
            predicted,
            color=_PREDICTED,
            linestyle="--",
            label=f"predicted (p = {json['p']:.4f}, one rival)",
        )
    _symlog(ax)
    _integer_ticks(ax)
    ks = sorted(set(json["ks"]))
    for k in ks:
        ax.axvline(k, color=_GREY, linestyle=":", linewidth=1)
    label = ", ".join(str(k) for k in ks)
    ax.legend(loc="upper right", fontsize="small", title=f"k = {label}" if ks else None)
    ax.grid(True, which="both", alpha=0.3)


def draw_votes(ax: Axes, json: dict[str, Any]) -> None:
    ax.set_title("Votes needed per decided step")
    ax.set_xlabel("votes")
    ax.set_ylabel("steps")
    if not json["votes"]:
        _empty(ax, "no step was decided")
        return
    ax.bar(json["votes"], json["steps"], width=0.8, label="measured")
    if json["predicted"] is not None:
        shown = [(r, n) for r, n in zip(json["predicted_rounds"], json["predicted"], strict=True)]
        shown = [(r, n) for r, n in shown if n >= 0.01]
        ax.plot(
            [r for r, _ in shown],
            [n for _, n in shown],
            color=_PREDICTED,
            marker="o",
            markersize=3,
            linestyle="none",
            label="predicted",
        )
    _symlog(ax)
    _integer_ticks(ax)
    ax.legend(loc="upper right", fontsize="small")
    ax.grid(True, axis="y", which="both", alpha=0.3)


def _steps(ax: Axes, json: dict[str, Any], values: Sequence[float | None], **style: Any) -> None:
    """A series over step bins, drawn as steps, gaps where a bin has no value."""
    width = json["width"]
    xs = [s + width / 2 for s in json["start"]]
    ys = [math.nan if v is None else v for v in values]
    ax.plot(xs, ys, drawstyle="steps-mid", **style)


def draw_samples(ax: Axes, json: dict[str, Any]) -> None:
    ax.set_title("Samples per decided step, against Eq 16")
    ax.set_xlabel("step")
    ax.set_ylabel("per decided step")
    if not any(json["decided"]):
        _empty(ax, "no step was decided")
        return
    _steps(ax, json, json["samples_per_step"], label="samples")
    _steps(ax, json, json["votes_per_step"], label="valid votes", alpha=0.8)
    if json["eq16_samples"] is not None:
        ax.axhline(
            json["eq16_samples"],
            color=_PREDICTED,
            linestyle="--",
            label=f"Eq 16 / v = {json['eq16_samples']:.2f}",
        )
        ax.axhline(
            json["eq16_votes"],
            color=_PREDICTED,
            linestyle=":",
            label=f"Eq 16 = {json['eq16_votes']:.2f}",
        )
    # Room above the curves for the legend.
    highest = max(
        (v for v in (*json["samples_per_step"], json["eq16_samples"] or 0) if v is not None),
        default=1.0,
    )
    ax.set_ylim(0, 1.45 * highest)
    ax.legend(loc="upper right", fontsize="small", ncols=2)
    ax.grid(True, alpha=0.3)


def draw_red_flags(ax: Axes, json: dict[str, Any]) -> None:
    ax.set_title("Red-flagged share of the responses, over the steps")
    ax.set_xlabel("step")
    ax.set_ylabel("share red-flagged")
    if not any(json["received"]):
        _empty(ax, "no response received")
        return
    if not any(json["red_flags"]):
        _empty(ax, f"no red flags in {int(sum(json['received']))} responses")
        return
    width = json["width"]
    bottom = [0.0] * len(json["start"])
    for reason, counts in json["by_reason"].items():
        shares = [c / r if r else 0.0 for c, r in zip(counts, json["received"], strict=True)]
        ax.bar(json["start"], shares, width=width, bottom=bottom, align="edge", label=reason)
        bottom = [b + s for b, s in zip(bottom, shares, strict=True)]
    total = sum(json["red_flags"]) / sum(json["received"])
    ax.axhline(total, color=_GREY, linestyle="--", linewidth=1, label=f"overall {total:.2%}")
    ax.yaxis.set_major_formatter(_percent())
    ax.legend(loc="upper right", fontsize="small")
    if width > 1:
        ax.set_xlabel(f"step (bins of {width:g})")


def _percent() -> Any:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0)


def draw_tokens(ax: Axes, json: dict[str, Any]) -> None:
    reference = json["reference"]
    ax.set_title("Red flags and wrong votes by output length")
    ax.set_xlabel("output tokens")
    ax.set_ylabel("share")
    if not any(json["responses"]):
        _empty(ax, "no response received")
        return
    _steps(ax, json, json["red_flag_rate"], label="red-flagged responses", color="tab:red")
    if any(json["judged"]):
        _steps(
            ax,
            json,
            json["against_rate"],
            label=f"valid votes against the {reference}",
            color="tab:purple",
        )
    if json["max_tokens"]:
        ax.axvline(json["max_tokens"], color=_GREY, linestyle=":", linewidth=1)
    ax.yaxis.set_major_formatter(_percent())
    ax.set_ylim(bottom=0)
    counts = ax.twinx()
    counts.bar(
        json["start"], json["responses"], width=json["width"], align="edge", color="0.85", zorder=0
    )
    counts.set_ylabel("responses", color="0.5")
    counts.tick_params(axis="y", colors="0.5")
    # The counts behind the shares: drawn under the lines, which stay on top.
    ax.set_zorder(counts.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.legend(loc="upper left", fontsize="small")


def draw_latency(ax: Axes, json: dict[str, Any]) -> None:
    ax.set_title("Latency of the responses")
    ax.set_xlabel("seconds (log scale)")
    ax.set_ylabel("responses")
    if not json["counts"]:
        text = "no response received" if not json["responses"] else "every latency was 0"
        _empty(ax, text)
        return
    edges = json["edges"]
    widths = [b - a for a, b in itertools.pairwise(edges)]
    ax.bar(edges[:-1], json["counts"], width=widths, align="edge")
    ax.set_xscale("log")
    for (name, value), style in zip(json["quantiles"].items(), ("-", "--", ":"), strict=True):
        ax.axvline(
            value, color="black", linestyle=style, linewidth=1, label=f"{name} {value:.3g} s"
        )
    ax.legend(loc="upper right", fontsize="small")
    ax.grid(True, axis="y", alpha=0.3)


def draw_throughput(ax: Axes, json: dict[str, Any]) -> None:
    ax.set_title("Steps decided per second")
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("steps / s")
    if not any(json["decided"]):
        _empty(ax, "no step was decided")
        return
    ax.bar(json["start"], json["steps_per_second"], width=json["width"], align="edge")
    mean = sum(json["decided"]) / (len(json["start"]) * json["width"])
    ax.axhline(mean, color=_GREY, linestyle="--", linewidth=1, label=f"mean {mean:.3g} steps/s")
    ax.legend(loc="upper right", fontsize="small")
    ax.grid(True, axis="y", alpha=0.3)


def draw_incidents(ax: Axes, json: dict[str, Any]) -> None:
    ax.set_title("Retries, failures, waits and breaker changes")
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("per bin")
    width = json["width"]
    shown = False
    for name, color in (("retries", "tab:orange"), ("failures", "tab:red"), ("waits", "tab:blue")):
        if any(json[name]):
            shown = True
            _steps(ax, json, json[name], label=f"{name} ({int(sum(json[name]))})", color=color)
    for i, change in enumerate(json["breaker_changes"]):
        shown = True
        label = "breaker changes" if i == 0 else None
        ax.axvline(change["t"], color="black", linestyle=":", linewidth=1, label=label)
        ax.annotate(
            change["state"],
            (change["t"], 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize="x-small",
        )
    if not shown:
        _empty(ax, "no retry, failure, wait or breaker change")
        return
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize="small")
    ax.set_ylabel(f"per {width:g} s")
    ax.grid(True, alpha=0.3)


def draw_cost(ax: Axes, json: dict[str, Any]) -> None:
    priced = json["measure"] == "cost_usd"
    ax.set_title("Cumulative cost" if priced else "Cumulative tokens (no price known)")
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("USD" if priced else "tokens (input + output)")
    if not json["t"]:
        _empty(ax, "no response received")
        return
    ax.plot(json["t"], json["value"])
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)


def draw_flag_reasons(ax: Axes, json: dict[str, Any]) -> None:
    ax.set_title("Red flags by reason")
    ax.set_ylabel("share of the responses")
    flags, responses = json["red_flags"], json["responses"]
    if not responses:
        _empty(ax, "no response received")
        return
    if not flags:
        _empty(ax, f"no red flags in {responses} responses")
        return
    ax.bar(list(flags), [n / responses for n in flags.values()])
    for i, n in enumerate(flags.values()):
        ax.annotate(str(n), (i, n / responses), ha="center", va="bottom", fontsize="small")
    ax.yaxis.set_major_formatter(_percent())


def draw_overview(figure: Figure, json: dict[str, Any]) -> None:
    grid = figure.subplots(2, 2)
    draw_convergence(grid[0][0], json["convergence"])
    draw_samples(grid[0][1], json["samples"])
    draw_throughput(grid[1][0], json["throughput"])
    draw_latency(grid[1][1], json["latency"])


@dataclass(frozen=True)
class Plot:
    """One plot of the report: its files' name, its caption, its data and its drawing."""

    name: str
    caption: str
    data: Callable[[ReportData], dict[str, Any]]
    draw: Callable[[Axes, dict[str, Any]], None] | None = None
    draw_figure: Callable[[Figure, dict[str, Any]], None] | None = None
    size: tuple[float, float] = (7.0, 3.6)

    def render(self, json: dict[str, Any]) -> Figure:
        figure = new_figure(*self.size)
        if self.draw_figure is not None:
            self.draw_figure(figure, json)
        else:
            assert self.draw is not None
            self.draw(figure.subplots(), json)
        return figure


_OVERVIEW = Plot(
    "overview",
    "The run at a glance",
    overview_json,
    draw_figure=draw_overview,
    size=(10.0, 6.4),
)

RUN_PLOTS: tuple[Plot, ...] = (
    _OVERVIEW,
    Plot(
        "convergence",
        "Undecided steps after each voting round (log scale down to 1, then linear to 0), "
        "beside the curve the run's own p and k predict",
        convergence_json,
        draw_convergence,
    ),
    Plot("votes", "Votes needed per decided step, and as predicted", votes_json, draw_votes),
    Plot(
        "samples",
        "Samples and valid votes per decided step over the run, against Eq 16 and Eq 16 / v",
        samples_json,
        draw_samples,
    ),
    Plot(
        "red_flags", "Share of the responses red-flagged, by reason", red_flags_json, draw_red_flags
    ),
    Plot(
        "tokens",
        "Red flags and votes against the step's winner by output tokens (the paper's length "
        "analysis); the bars are the responses in each bin",
        tokens_json,
        draw_tokens,
    ),
    Plot("latency", "Latency on a log axis, with p50, p95 and p99", latency_json, draw_latency),
    Plot("throughput", "Steps decided per second over time", throughput_json, draw_throughput),
    Plot(
        "incidents",
        "Retries, failures, scheduler waits and circuit-breaker changes over time",
        incidents_json,
        draw_incidents,
    ),
    Plot("cost", "Cumulative cost (tokens when no price is known)", cost_json, draw_cost),
)
"""The plots of a voting run's report, in page order."""

CALIBRATION_PLOTS: tuple[Plot, ...] = (
    Plot(
        "flag_reasons",
        "Red flags by reason, as a share of the responses",
        flag_reasons_json,
        draw_flag_reasons,
    ),
    Plot(
        "tokens",
        "Red flags and wrong answers (against the task's oracle) by output tokens",
        tokens_json,
        draw_tokens,
    ),
    Plot("latency", "Latency on a log axis, with p50, p95 and p99", latency_json, draw_latency),
    Plot(
        "incidents",
        "Retries, failures, scheduler waits and circuit-breaker changes over time",
        incidents_json,
        draw_incidents,
    ),
    Plot("cost", "Cumulative cost (tokens when no price is known)", cost_json, draw_cost),
)
"""The plots of a calibration run's page."""


def plots_for(data: ReportData) -> tuple[Plot, ...]:
    """The plots of ``data``'s page: a calibration's, or a voting run's."""
    return CALIBRATION_PLOTS if data.is_calibration else RUN_PLOTS
