"""The report's page and files: ``index.html``, each plot as PNG, SVG and the JSON drawn, the
whole data as ``report.json``, and the events of each hardest step as ``step-N.jsonl``.

The page references only files beside it (no script, nothing fetched from elsewhere), so the
directory opens in any browser, offline.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

from events import AnyEvent, encode, open_output
from maker.core import ConfigError

from ._plots import Plot, new_figure, plots_for
from ._report import HARDEST, ReportData, report_data


def report_files(data: ReportData) -> list[str]:
    """The files :func:`write_report` writes for ``data``, relative to its directory, the page
    first."""
    names = ["index.html", "report.json"]
    for plot in plots_for(data):
        names += [f"{plot.name}.png", f"{plot.name}.svg", f"{plot.name}.json"]
    names += [_step_file(h.step) for h in data.hardest]
    return names


def _step_file(step: int) -> str:
    return f"step-{step}.jsonl"


def write_plots(
    data: ReportData,
    out_dir: str | os.PathLike[str],
    *,
    logs: Iterable[str | os.PathLike[str]] = (),
) -> list[Path]:
    """Draw every plot of ``data`` into ``out_dir`` as ``NAME.png`` and ``NAME.svg``, with the
    data drawn as ``NAME.json``; returns their paths, in page order.

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
    """Write ``index.html``, its plots (PNG, SVG and JSON), ``report.json`` and the hardest
    steps' events for one run into ``out_dir``; return the page (see :func:`report_files`).

    ``events`` are the run's events (folded by :func:`report_data`), or the data already folded
    (by :func:`report_data_async` from a log, say; ``hardest`` then does not apply).

    The files are written as in :func:`write_plots`, the page last (so it is never there
    without its plots); none may be one of ``logs`` nor any other maker log.

    Needs matplotlib (``pip install 'maker[report]'``); without it raises
    :class:`maker.ConfigError` saying so, before writing anything.
    """
    new_figure()  # fail on a missing matplotlib before touching the directory
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
    import matplotlib

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with ExitStack() as files:

        def opened(name: str, mode: str = "w") -> IO[Any]:
            written.append(out / name)
            if mode == "wb":
                return files.enter_context(open_output(out / name, logs=logs, mode="wb"))
            return files.enter_context(open_output(out / name, logs=logs))

        html_file = opened("index.html") if page else None
        written.clear()
        whole = opened("report.json") if page else None
        steps = [(h, opened(_step_file(h.step))) for h in data.hardest] if page else []
        plots: list[tuple[Plot, IO[Any], IO[Any], IO[Any]]] = [
            (
                plot,
                opened(f"{plot.name}.png", "wb"),
                opened(f"{plot.name}.svg"),
                opened(f"{plot.name}.json"),
            )
            for plot in plots_for(data)
        ]
        # Without a salt matplotlib names the SVG's clip paths at random: the same data would
        # give a different file at each report.
        with matplotlib.rc_context({"svg.hashsalt": "maker", "svg.fonttype": "path"}):
            for plot, png, svg, data_file in plots:
                shown = plot.data(data)
                json.dump(shown, data_file, indent=1, allow_nan=False)
                data_file.write("\n")
                figure = plot.render(shown)
                figure.savefig(png, format="png")
                figure.savefig(svg, format="svg", metadata={"Date": None})
        for hard, step_file in steps:
            for event in hard.events:
                step_file.write(encode(event).decode() + "\n")
        if whole is not None:
            json.dump(data.to_json(), whole, allow_nan=False)
            whole.write("\n")
        if html_file is not None:
            html_file.write(render_html(data))
    return written


# -- the page --------------------------------------------------------------------------------


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _row(*cells: object, head: bool = False) -> str:
    tag = "th" if head else "td"
    return "<tr>" + "".join(f"<{tag}>{_esc(c)}</{tag}>" for c in cells) + "</tr>"


def _figures(data: ReportData) -> list[tuple[str, str]]:
    s = data.summary.to_json()
    flags = ", ".join(f"{n} {r}" for r, n in sorted(s["red_flags_by_reason"].items())) or "none"
    failures = ", ".join(f"{n} {k}" for k, n in sorted(s["failures_by_kind"].items()))
    rows: list[tuple[str, object]] = [
        ("run", s["run_id"]),
        ("task", f"{s['task']} {json.dumps(s['task_params'], sort_keys=True)}"),
        ("model", ", ".join(s["models"])),
    ]
    if data.is_calibration:
        rows.append(("mode", "calibration"))
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
    ]
    prediction = data.prediction
    if prediction is not None:
        rows.append(
            (
                "expected (Eq 16)",
                f"{prediction.votes_per_step:.3f} votes and {prediction.samples_per_step:.3f} "
                f"samples (Eq 16 / v) per step at the measured p = {prediction.p:.5f}, "
                f"v = {prediction.v:.4f}",
            )
        )
    rows += [
        ("votes", s["votes"]),
        ("red flags", f"{s['red_flags']} ({flags})"),
        ("failures", str(s["failures"]) + (f" ({failures})" if failures else "")),
        ("tokens", f"{s['input_tokens']} in, {s['output_tokens']} out"),
        ("cost", f"${s['cost_usd']:.4f}" if s["cost_usd"] else "unknown (no price known)"),
    ]
    quantiles = data.latency_quantiles
    if quantiles:
        rows.append(("latency", ", ".join(f"{q} {v:.3g} s" for q, v in quantiles.items())))
    rows.append(("wall time", f"{s['wall_s']:.2f} s"))
    if s["wall_s"] > 0 and s["steps"]:
        rows.append(("throughput", f"{s['steps'] / s['wall_s']:.3g} steps/s"))
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
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 64em; color: #222;
       padding: 0 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.2em 0.8em; text-align: left;
         vertical-align: top; }
td.answer { font-family: ui-monospace, monospace; font-size: 0.85em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0 2em; }
figcaption { color: #555; }
img { max-width: 100%; }
"""


_CALIBRATION_HEAD = (
    "model",
    "p",
    "95% interval",
    "v",
    "responses",
    "valid",
    "correct",
    "red flags",
    "cost per call",
    "tokens per call",
    "latency per call",
)


def _calibration_cells(data: ReportData) -> list[str]:
    cal = data.calibration
    assert cal is not None
    low, high = cal.interval
    flags = ", ".join(f"{n} {r}" for r, n in sorted(cal.red_flags.items())) or "none"
    latency = cal.mean_latency_s
    return [
        _esc(cal.model),
        "unknown" if cal.p is None else f"{cal.p:.4f}",
        f"{low:.4f} to {high:.4f}" if cal.p is not None else "",
        "unknown" if cal.v is None else f"{cal.v:.4f}",
        str(cal.n),
        str(cal.valid),
        str(cal.correct),
        _esc(flags),
        f"${cal.cost_per_call:.6f}" if cal.cost_usd else "unknown (no price known)",
        f"{cal.mean_input_tokens:.0f} in, {cal.mean_output_tokens:.0f} out",
        "" if latency is None else f"{latency:.3g} s",
    ]


def _calibration_table(data: ReportData) -> list[str]:
    if data.calibration is None:
        return []
    cells = "".join(f"<td>{c}</td>" for c in _calibration_cells(data))
    parts = ["<h2>Calibration</h2>", "<table>", _row(*_CALIBRATION_HEAD, head=True)]
    parts += [f"<tr>{cells}</tr>", "</table>"]
    if data.calibration_error:
        parts.append(f"<p>The answers could not be judged: {_esc(data.calibration_error)}</p>")
    return parts


def write_calibration_report(
    models: Sequence[ReportData],
    out_dir: str | os.PathLike[str],
    *,
    logs: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """The page of a calibration of several models (one calibration run each): ``index.html``
    with a row per model (p with its interval, v, red flags, cost and tokens per call), each
    linking to the model's own report, written by :func:`write_report` into ``out_dir/RUN_ID``.
    Returns the page.

    Raises :class:`maker.ConfigError` when a run is not a calibration, before writing anything.
    """
    for data in models:
        if data.calibration is None:
            raise ConfigError("runs", f"run {data.summary.run_id} is not a calibration run")
    new_figure()
    out = Path(out_dir)
    logs = tuple(logs)
    for data in models:
        write_report(data, out / data.summary.run_id, logs=logs)
    first = models[0].summary if models else None
    task = "" if first is None else f"{first.task} {json.dumps(first.task_params, sort_keys=True)}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>maker calibration</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Calibration</h1>",
        f"<p>{_esc(task)}: {len(models)} model(s), each one run of the log.</p>",
        "<table>",
        _row(*_CALIBRATION_HEAD, "run", head=True),
    ]
    for data in models:
        run = _esc(data.summary.run_id)
        cells = "".join(f"<td>{c}</td>" for c in _calibration_cells(data))
        parts.append(f'<tr>{cells}<td><a href="{run}/index.html">{run}</a></td></tr>')
    parts += ["</table>", "</body></html>"]
    with open_output(out / "index.html", logs=logs) as page:
        page.write("\n".join(parts) + "\n")
    return out / "index.html"


def _figure(plot: Plot) -> str:
    name = _esc(plot.name)
    return (
        f'<figure id="{name}"><img src="{name}.png" alt="{_esc(plot.caption)}">'
        f"<figcaption>{_esc(plot.caption)} "
        f'(<a href="{name}.svg">SVG</a>, <a href="{name}.json">data</a>)</figcaption></figure>'
    )


def render_html(data: ReportData) -> str:
    """The report page for ``data``; it references the files :func:`write_report` writes."""
    title = "Calibration" if data.is_calibration else "Run"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>maker {title.lower()} {_esc(data.summary.run_id)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{title} {_esc(data.summary.run_id)}</h1>",
        "<table>",
        *(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in _figures(data)),
        "</table>",
        *_calibration_table(data),
        '<p>All the numbers: <a href="report.json">report.json</a>.</p>',
    ]
    for plot in plots_for(data):
        parts.append(_figure(plot))
        if plot.name == "convergence" and data.convergence:
            parts += _convergence_table(data)
        if plot.name == "votes" and data.hardest:
            parts += _hardest_table(data)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _convergence_table(data: ReportData) -> list[str]:
    prediction = data.prediction
    head = ("round", "undecided", "share", *(("predicted",) if prediction else ()))
    parts = ["<table>", _row(*head, head=True)]
    total = data.undecided[0] or 1
    for r, n in data.convergence:
        cells: list[object] = [r, n, f"{n / total:.2e}"]
        if prediction is not None:
            cells.append(f"{prediction.undecided[r]:.2f}" if r < len(prediction.undecided) else "")
        parts.append(_row(*cells))
    parts.append("</table>")
    return parts


def _hardest_table(data: ReportData) -> list[str]:
    parts = [
        "<h2>Hardest steps</h2>",
        "<table>",
        _row("step", "votes", "samples", "red flags", "decided", "tally", "events", head=True),
    ]
    for h in data.hardest:
        tally = "<br>".join(
            f"{_esc(n)} &times; {_esc(answer)}"
            for answer, n in sorted(h.tally.items(), key=lambda item: -item[1])
        )
        cut = f" (first {len(h.events)})" if len(h.events) < h.events_total else ""
        parts.append(
            "<tr>"
            + "".join(
                f"<td>{_esc(c)}</td>" for c in (h.step, h.votes, h.samples, h.red_flags, h.decided)
            )
            + f'<td class="answer">{tally}</td>'
            + f'<td><a href="{_esc(_step_file(h.step))}">{h.events_total} events</a>'
            + f"{_esc(cut)}</td></tr>"
        )
    parts.append("</table>")
    return parts
