"""The workflow commands: ``maker calibrate``, ``maker plan`` and ``maker report``.

The paper's critical path as three commands: measure p per model, choose the model and k for a
target, then (after ``maker run``) watch how the run converged. The ``maker`` CLI registers
them; errors are raised (``click.UsageError``, :class:`maker.ConfigError`), never printed, so the
entry point turns each into one line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import click

from events import redact_url

from ...clients import close_client
from ...clients._sim import PRESETS, SimulatedModel, sim_config
from ...core._client import Client
from ...core._plan import ModelEstimate, Plan, estimates_from_calibration, plan
from ...core._policy import Policy
from ...core._pricing import PriceTable
from ...engine._calibrate import CalibrationReport, calibrate
from ...engine._scheduler import Limits, Scheduler
from .._options import (
    build_task,
    hedge_from,
    hedge_option,
    log_option,
    log_run_arguments,
    pipeline_option,
    prices_option,
    rate_limit_options,
    task_argument,
    task_options,
)
from ._table import counts_text, echo_table

EXIT_FAILED = 1


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# -- calibrate -----------------------------------------------------------------------------


def _clients(
    models: tuple[str, ...],
    base_url: str | None,
    preset: str | None,
    p: float | None,
    timeout: float,
) -> list[Client]:
    if len(set(models)) != len(models):
        raise click.UsageError("each --model may be given once")
    if "sim" not in models:
        given = [name for name, v in (("--p", p), ("--preset", preset)) if v is not None]
        if given:
            raise click.UsageError(f"{', '.join(given)} applies only to the simulated model (sim)")
    if base_url is not None and all(m == "sim" for m in models):
        raise click.UsageError("--base-url does not apply to the simulated model")
    clients: list[Client] = []
    for model in models:
        if model == "sim":
            clients.append(SimulatedModel(sim_config(preset, p=p)))
        else:
            from ...clients import make_client

            clients.append(make_client(model, base_url=base_url, timeout=timeout))
    return clients


def _print_calibration(report: CalibrationReport, log: Path, prices: PriceTable) -> None:
    click.echo(
        f"calibrated {report.task} {json.dumps(report.task_params, sort_keys=True)} on "
        f"{report.samples} random steps (seed {report.seed}), one sample each"
    )
    header = ("model", "status", "n", "v", "p", "95% interval", "red flags", "tokens in/out")
    rows = []
    for m in report.models:
        flags = counts_text(m.red_flags) or "none"
        cost = f"${m.cost_per_call:.6f}" if prices.known(m.model) else "unknown price"
        rows.append(
            (
                m.model,
                m.status,
                str(m.n),
                _fmt(m.v, ".4f"),
                _fmt(m.p, ".4f"),
                f"[{m.p_low:.4f}, {m.p_high:.4f}]",
                flags,
                f"{m.mean_input_tokens:.0f}/{m.mean_output_tokens:.0f}",
                cost,
            )
        )
    echo_table(rows, (*header, "cost/call"))
    for m in report.models:
        if m.reason:
            click.echo(f"{m.model}: {m.reason}")
    click.echo(f"log: {redact_url(str(log))}")


@click.command("calibrate")
@task_argument
@task_options
@click.option(
    "--model",
    "models",
    multiple=True,
    required=True,
    help="A model to calibrate (repeatable): sim, openai:NAME, anthropic:NAME or ollama:NAME.",
)
@click.option(
    "--samples", type=click.IntRange(1), required=True, help="Random steps to query each model on."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the step draw.")
@log_option("SQLite event log to append the calibration runs to (one run per model).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for maker plan).")
@click.option(
    "--base-url",
    help="Server root for the provider models: http://HOST:PORT/v1 for openai, http://HOST:PORT "
    "for anthropic and ollama.",
)
@click.option(
    "--p", "p", type=click.FloatRange(0.0, 1.0), help="sim: P(a valid answer is correct)."
)
@click.option("--preset", type=click.Choice(sorted(PRESETS)), help="sim: preset (default paper).")
@click.option(
    "--temperature",
    type=click.FloatRange(0.0, 2.0),
    default=0.1,
    show_default=True,
    help="Sampling temperature (the run temperature of every vote after a step's first).",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Samples in flight per model.",
)
@rate_limit_options
@prices_option
def calibrate_command(
    task: str | None,
    disks: int | None,
    steps: int | None,
    digits: int | None,
    task_seed: int | None,
    task_ref: str | None,
    params_json: str | None,
    task_file: Path | None,
    models: tuple[str, ...],
    samples: int,
    seed: int,
    log: Path,
    as_json: bool,
    base_url: str | None,
    p: float | None,
    preset: str | None,
    temperature: float,
    concurrency: int,
    rpm: int | None,
    tpm: int | None,
    timeout: float,
    prices: Path | None,
) -> None:
    """Measure each model's p (with a 95% interval), v, tokens and cost on random steps.

    Every model answers the same randomly drawn steps of the task's known solution, once each;
    each answer is judged against the oracle. Every sample is an event in the log, one run per
    model.
    """
    the_task = build_task(
        task,
        disks=disks,
        steps=steps,
        digits=digits,
        task_seed=task_seed,
        task_ref=task_ref,
        params_json=params_json,
        task_file=task_file,
    )
    clients = _clients(models, base_url, preset, p, timeout)
    price_table = PriceTable.load(prices) if prices is not None else PriceTable()
    scheduler = Scheduler(Limits(concurrency=concurrency, rpm=rpm, tpm=tpm, timeout_s=timeout))
    policy = Policy(temperature=temperature)
    from .._telemetry import otel_sink_from_env

    # The standard OTEL_* variables trace the calibration runs and export their metrics.
    traced = otel_sink_from_env()

    async def go() -> CalibrationReport:
        try:
            return await calibrate(
                the_task,
                clients,
                samples=samples,
                seed=seed,
                log=log,
                policy=policy,
                scheduler=scheduler,
                prices=price_table,
                in_flight=concurrency,
                sinks=[traced[0]] if traced else (),
            )
        finally:
            for client in clients:
                await close_client(client)

    try:
        report = anyio.run(go)
    finally:
        if traced:
            traced[1]()  # ends open spans, flushes spans and metrics, also on Ctrl-C
    if as_json:
        out = report.to_json()
        out["log"] = redact_url(str(log))
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        _print_calibration(report, log, price_table)
    if not report.ok:
        raise SystemExit(EXIT_FAILED)


# -- plan ----------------------------------------------------------------------------------


def _print_plan(result: Plan) -> None:
    overlap = f"; pipeline {result.pipeline}" if result.pipeline else ""
    if result.hedge is not None:
        overlap += f"; hedge at the {result.hedge.quantile:g} quantile"
    click.echo(
        f"plan for {result.steps} steps at target {result.target} "
        f"(k_min from the lower 95% bound of p; concurrency {result.concurrency}{overlap})"
    )
    header = ("model", "p", "p_low", "v", "cost/call", "k_min", "P(success)", "samples/step")
    rows = []
    for m in result.models:
        est = m.estimate
        rows.append(
            (
                m.model,
                f"{est.p:.4f}",
                f"{est.p_low:.4f}",
                f"{est.v:.4f}",
                f"${est.cost_per_call:.6f}",
                _fmt(m.k_min, "d"),
                _fmt(m.p_run, ".4f"),
                _fmt(m.expected_samples_per_step, ".3f"),
                _fmt(m.expected_samples, ",.0f"),
                "-" if m.expected_cost_usd is None else f"${m.expected_cost_usd:,.2f}",
                "-" if m.expected_wall_s is None else _duration(m.expected_wall_s),
            )
        )
    echo_table(rows, (*header, "samples", "cost", "wall time"))
    for m in result.models:
        if m.note:
            click.echo(f"{m.model}: {m.note}")
        extra = [
            f"{value:.3f} {what}"
            for value, what in (
                (m.misspeculation_samples_per_step, "misspeculated"),
                (m.hedge_samples_per_step, "hedged"),
            )
            if value
        ]
        if extra:
            click.echo(
                f"{m.model}: samples/step above, plus {' and '.join(extra)} per step, "
                "in samples and cost"
            )
    if result.recommended is None:
        click.echo("recommended: none (no model's voting converges)")
    else:
        best = result.model(result.recommended)
        click.echo(f"recommended: {best.model} with k = {best.k_min}")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


@click.command("plan")
@task_argument
@task_options
@click.option(
    "--target",
    type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
    required=True,
    help="Wanted probability that the whole run succeeds.",
)
@click.option(
    "--from-calibration",
    "calibration",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The JSON that 'maker calibrate --json' printed.",
)
@click.option("--p", "p", type=click.FloatRange(0.0, 1.0), help="Per-step success rate p.")
@click.option(
    "--v",
    "v",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    help="Share of samples not red-flagged (with --p; default 1).",
)
@click.option(
    "--cost-per-call",
    type=click.FloatRange(0.0),
    help="USD per sample (with --p; default 0).",
)
@click.option("--model", "model", default="model", show_default=True, help="Name for --p.")
@click.option(
    "--concurrency",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Samples in flight at once.",
)
@click.option(
    "--latency-s",
    type=click.FloatRange(0.0),
    help="Seconds per call (default: the calibrated mean latency, when there is one).",
)
@pipeline_option
@hedge_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def plan_command(
    task: str | None,
    disks: int | None,
    steps: int | None,
    digits: int | None,
    task_seed: int | None,
    task_ref: str | None,
    params_json: str | None,
    task_file: Path | None,
    target: float,
    calibration: Path | None,
    p: float | None,
    v: float | None,
    cost_per_call: float | None,
    model: str,
    concurrency: int,
    latency_s: float | None,
    pipeline: int,
    hedge: float,
    as_json: bool,
) -> None:
    """Choose the model and k for a target: k_min, P(success), expected samples, cost, time.

    With --pipeline and --hedge (the run's; their defaults are maker run's), the samples that
    misspeculation and hedges add are counted in the samples and the cost.
    """
    the_task = build_task(
        task,
        disks=disks,
        steps=steps,
        digits=digits,
        task_seed=task_seed,
        task_ref=task_ref,
        params_json=params_json,
        task_file=task_file,
    )
    budget = the_task.max_steps()
    if budget is None:  # a task of one's own may have no known length
        raise click.UsageError(f"the {the_task.name} task has no known number of steps")
    if (calibration is None) == (p is None):
        raise click.UsageError("give --from-calibration FILE, or --p (with --v, --cost-per-call)")
    estimates: list[ModelEstimate]
    if calibration is not None:
        extra = [
            name
            for name, value in (("--v", v), ("--cost-per-call", cost_per_call))
            if value is not None
        ]
        if extra:
            raise click.UsageError(f"{', '.join(extra)} goes with --p, not --from-calibration")
        estimates = estimates_from_calibration(calibration)
        # Readable JSON with a models list by now: estimates_from_calibration checked it.
        calibrated_on = json.loads(calibration.read_text(encoding="utf-8")).get("task")
        if calibrated_on is not None and calibrated_on != the_task.name:
            raise click.UsageError(
                f"{calibration} calibrated the {calibrated_on} task, not {the_task.name}: "
                "p does not carry over between tasks"
            )
    else:
        assert p is not None
        estimates = [
            ModelEstimate(
                model=model,
                p=p,
                v=1.0 if v is None else v,
                cost_per_call=0.0 if cost_per_call is None else cost_per_call,
            )
        ]
    result = plan(
        estimates,
        steps=budget,
        target=target,
        concurrency=concurrency,
        latency_s=latency_s,
        pipeline=pipeline,
        hedge=hedge_from(hedge),
    )
    if as_json:
        out = result.to_json()
        out.update(task=the_task.name, task_params=the_task.params())
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        _print_plan(result)


# -- report --------------------------------------------------------------------------------


@click.command("report")
@log_run_arguments
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory to write index.html, its plots (PNG, SVG and their data as JSON) and"
    " report.json into.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the page, its files and the run's figures."
)
def report_command(file: Path, run_id: str | None, out: Path, as_json: bool) -> None:
    """Write an HTML report of a run: convergence against its prediction, samples per step
    against Eq 16 / v, red flags over steps and output tokens, latency, retries and waits,
    throughput, cost, the hardest steps. A calibration run gets its own page; without --run, a
    log of one calibration's runs gets a page with a row per model, each linking to its own."""
    # replay/ builds on maker's public API; importing it here, not at the top, keeps the
    # layers acyclic.
    from events import open_log, open_run
    from replay import ReportData, report_data_async, report_files, write_report
    from replay._page import write_calibration_report
    from replay._plots import new_figure

    from ...engine import is_calibration

    async def load(run: str | None) -> ReportData:
        # A damaged run is refused before it is read: its figures could not be trusted. Folded
        # as it is read, in bounded memory (see replay.report_data).
        async with open_run(file, run, check=True) as opened:
            return await report_data_async(opened.events)

    async def calibration_runs() -> list[str]:
        """The runs of a log holding several runs, all of them calibrations; else none."""
        async with open_log(file, mode="r") as log:
            runs = await log.runs()
        if len(runs) > 1 and all(is_calibration(info.started) for info in runs):
            return [info.run_id for info in runs]
        return []

    new_figure()  # a missing matplotlib is said before the whole log is read
    models = anyio.run(calibration_runs) if run_id is None else []
    if models:
        datas = [anyio.run(load, model) for model in models]
        page = write_calibration_report(datas, out, logs=(file,))
        if as_json:
            reports = [data.to_json() for data in datas]
            click.echo(json.dumps({"page": str(page), "models": reports}))
            return
        click.echo(str(page))
        return
    data = anyio.run(load, run_id)
    page = write_report(data, out, logs=(file,))
    if as_json:
        files = [str(out / name) for name in report_files(data)]
        click.echo(json.dumps({"page": str(page), "files": files, "report": data.to_json()}))
        return
    click.echo(str(page))


WORKFLOW_COMMANDS: dict[str, click.Command] = {
    "calibrate": calibrate_command,
    "plan": plan_command,
    "report": report_command,
}
"""The commands by the name the ``maker`` CLI registers them under."""
