"""The ``maker`` command line, built on the library API.

Every error a user can cause ends as one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import anyio
import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from events import (
    Event,
    EventLogError,
    RedFlagged,
    RunStarted,
    StateChanged,
    StepAbandoned,
    StepDecided,
    WriterKind,
    encode,
    open_output,
    open_run,
    redact_url,
)

from ...clients import close_client
from ...core._client import Client
from ...core._errors import ConfigError, MakerError
from ...core._formulas import k_min, p_run
from ...core._policy import Policy
from ...core._pricing import PriceTable
from ...core._task import Task
from ...core._version import __version__
from ...engine._engine import Engine
from ...engine._results import RunResult, VerifyResult
from ...engine._scheduler import Limits, Scheduler
from ...tasks import make_task
from .._options import (
    allow_plugin_option,
    build_task,
    concurrency_option,
    log_option,
    log_run_arguments,
    matcher_option,
    prices_option,
    rate_limit_options,
    stacked,
    task_argument,
    task_options,
)
from .._settings import RunSettings, UsageProblem, make_model_client, model_options, run_options
from ._table import cost_text, counts_text, echo_table

EXIT_FAILED = 1
EXIT_USAGE = 2


_err = Console(stderr=True, highlight=False)
_out = Console(highlight=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="maker")
def app() -> None:
    """Run long sequential tasks with language models at near-zero error (MAKER)."""


_live_run_options = stacked(
    # A run at full speed spends a third of its main thread on the log; in a process of its own
    # the encoding, hashing and SQLite take another core. Starting it costs about a quarter of a
    # second.
    click.option(
        "--log-writer",
        "log_writer",
        type=click.Choice(["process", "thread"]),
        default="process",
        show_default=True,
        help="Where the log's writer runs: a process of its own, or a thread of this one.",
    ),
    click.option("--json", "as_json", is_flag=True, help="Print one JSON object at the end."),
    click.option(
        "--otel",
        metavar="EXPORTER",
        help="Trace the run live and export its metrics: console, otlp or json:FILE (spans only)"
        " (default: the OTEL_* variables).",
    ),
    # Only on a terminal unless asked: piped to a file or a CI log, the bar is noise, and a
    # failure's one line of stderr must stay one line.
    click.option(
        "--progress/--no-progress",
        default=None,
        help="Show the live progress bar.  [default: when stderr is a terminal]",
    ),
)
"""``--log-writer``, ``--json``, ``--otel`` and ``--progress``: how a command that runs the
engine here (``maker run``, ``maker resume``) writes its log and reports."""


@app.command()
@task_argument
@log_option("Event log to append the run to: a SQLite file, or a postgresql:// URL.")
@task_options
@model_options
@concurrency_option
@rate_limit_options
@prices_option
@run_options
@_live_run_options
def run(
    task: str | None,
    log: Path,
    disks: int | None,
    steps: int | None,
    digits: int | None,
    task_seed: int | None,
    task_ref: str | None,
    params_json: str | None,
    task_file: Path | None,
    model: str,
    base_url: str | None,
    preset: str | None,
    p: float | None,
    latency_ms: float | None,
    concurrency: int | None,
    rpm: int | None,
    tpm: int | None,
    timeout: float,
    prices: Path | None,
    k: int | None,
    target: float | None,
    adaptive: bool,
    prior_p: float,
    k_max: int,
    speculative: int,
    pipeline: int | None,
    hedge: float | None,
    hedge_min_s: float | None,
    matcher: str | None,
    max_samples: int,
    seed: int,
    otel: str | None,
    log_writer: WriterKind,
    as_json: bool,
    progress: bool | None,
) -> None:
    """Run a task, voting every step, with every event logged.

    TASK is a built-in task (its options: --disks, --steps, ...); --task REF --params JSON
    runs any task, one's own included (package.module:factory); --task-file FILE runs a TOML
    task file.
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
    client, model_p = make_model_client(model, base_url, preset, p, latency_ms, timeout)
    settings = RunSettings(
        k=k,
        target=target,
        adaptive=adaptive,
        prior_p=prior_p,
        k_max=k_max,
        speculative=speculative,
        pipeline=pipeline,
        hedge=hedge,
        hedge_min_s=hedge_min_s,
        max_samples=max_samples,
        seed=seed,
        matcher=matcher,
    )
    policy = settings.policy(the_task, client, model_p, model)
    budget = the_task.max_steps()
    adapt = policy.adaptive
    scheduler = Scheduler(Limits(concurrency=concurrency, rpm=rpm, tpm=tpm, timeout_s=timeout))
    price_table = PriceTable.load(prices) if prices is not None else PriceTable()
    from .._telemetry import otel_sink_for, otel_sink_from_env

    # Set up before the run, so a bad exporter or a missing package is one line, not a lost run.
    traced = otel_sink_for(otel, logs=(log,)) if otel is not None else otel_sink_from_env()
    sinks: list[Callable[[Event], None]] = []
    # The bar also notes the run's id for the message after a Ctrl-C: one sink per event, not
    # two, whether it draws or not.
    progress_sink = _ProgressSink(
        the_task.max_steps(), policy.k, enabled=_show_progress(progress) and not as_json
    )
    if traced:
        sinks.append(traced[0])
    try:
        result = anyio.run(
            _run,
            the_task,
            _EngineArgs(client, scheduler, price_table, log_writer),
            policy,
            seed,
            log,
            progress_sink,
            sinks,
        )
    except KeyboardInterrupt:
        _interrupted(log, progress_sink.run_id)
    finally:
        if traced:
            traced[1]()  # ends open spans and flushes; warns if any span was lost
    if as_json:
        out = result.to_json()
        out.update(task=the_task.name, task_params=the_task.params(), model=client.model)
        out["log"] = redact_url(str(log))
        if target is not None and budget is not None and model_p is not None and not adapt:
            out["target"] = target
            out["p_run_at_k"] = p_run(model_p, policy.k, budget)
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        _print_result(result, log, [client.model], price_table)
    if not result.ok:
        raise SystemExit(EXIT_FAILED)


class _EngineArgs(NamedTuple):
    """What ``maker run`` builds its Engine from, besides the log: made from the options before
    the event loop starts, and handed to it as one argument."""

    client: Client
    scheduler: Scheduler
    prices: PriceTable
    log_writer: WriterKind


async def _run(
    task: Task[Any, Any],
    engine_args: _EngineArgs,
    policy: Policy,
    seed: int,
    log: Path,
    progress: _ProgressSink,
    sinks: list[Callable[[Event], None]],
) -> RunResult:
    try:
        with progress as sink:
            async with Engine(
                log=log,
                client=engine_args.client,
                scheduler=engine_args.scheduler,
                prices=engine_args.prices,
                log_writer=engine_args.log_writer,
            ) as engine:
                return await engine.run(task, policy=policy, seed=seed, sinks=[sink, *sinks])
    finally:
        await close_client(engine_args.client)


def _interrupted(log: Path, run_id: str | None) -> NoReturn:
    # The engine recorded run_finished "cancelled" and the log flushed before we got here.
    where = f" --run {run_id}" if run_id else ""
    target = redact_url(str(log))  # a database URL's password is never printed
    _err.print(
        f"maker: interrupted; the log is consistent; continue with: maker resume {target}{where}",
        markup=False,
        soft_wrap=True,
    )
    raise SystemExit(130)


def _show_progress(asked: bool | None) -> bool:
    """``--progress``/``--no-progress`` as given, else whether stderr is a terminal."""
    return _err.is_terminal if asked is None else asked


class _ProgressSink:
    """A live progress bar fed by events: steps, samples per step, red flags, ETA."""

    def __init__(self, total: int | None, k: int, *, enabled: bool) -> None:
        self.enabled = enabled
        self.samples = 0
        self.steps = 0
        self.red_flags = 0
        self.k = k
        self.run_id: str | None = None
        """The run's id, once its run_started went by."""
        self._progress = Progress(
            TextColumn("[bold]steps"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[samples_per_step]:.2f} samples/step"),
            TextColumn("{task.fields[red_flags]} red flags"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=_err,
            disable=not enabled,
            transient=False,
        )
        self._task: TaskID = self._progress.add_task(
            "run", total=total, samples_per_step=0.0, red_flags=0
        )

    def __enter__(self) -> Callable[[Event], None]:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._update()
        self._progress.stop()

    def __call__(self, event: Event) -> None:
        # Called for every event of the run: most are none of these three, and an identity
        # test of the (final) event class is the cheapest way to say so.
        kind = type(event)
        if kind is StateChanged:
            self.steps += 1
            # Updating the bar every step costs more than the step itself on fast runs.
            if self.steps % 64 == 0 or self.steps == 1:
                self._update()
        elif kind is StepDecided or kind is StepAbandoned:
            # A pipelined run's abandoned starts drew samples too: the bar counts them all.
            self.samples += event.samples  # type: ignore[attr-defined]
        elif kind is RedFlagged:
            self.red_flags += 1
        elif kind is RunStarted:
            self.run_id = event.run_id

    def _update(self) -> None:
        self._progress.update(
            self._task,
            completed=self.steps,
            samples_per_step=self.samples / max(1, self.steps),
            red_flags=self.red_flags,
        )


def _print_result(
    result: RunResult, log: Path, models: Sequence[str] = (), prices: PriceTable | None = None
) -> None:
    per_step = result.samples / result.steps if result.steps else 0.0
    flags = counts_text(result.red_flags_by_reason) or "none"
    echo_table(
        [
            ("run", result.run_id),
            ("status", result.status + (f" ({result.reason})" if result.reason else "")),
            ("steps", str(result.steps)),
            ("k", str(result.k)),
            (
                "samples",
                f"{result.samples} ({per_step:.3f} per step, max {result.max_samples_in_step})",
            ),
            ("red flags", f"{result.red_flags} ({flags})"),
            *_overhead_rows(result),
            ("tokens", f"{result.input_tokens} in, {result.output_tokens} out"),
            ("cost", cost_text(result.cost_usd, models, prices or PriceTable())),
            ("wall time", f"{result.wall_s:.2f} s"),
            ("log", redact_url(str(log))),
        ]
    )


def _overhead_rows(result: RunResult) -> list[tuple[str, str]]:
    """The samples a run drew beyond its decisions' (cancelled, misspeculated, hedged), each
    only when there were any: a run without speculation, pipelining or hedging prints none."""
    rows = []
    if result.cancelled_samples:
        rows.append(("cancelled", f"{result.cancelled_samples} samples (any reason)"))
    if result.misspeculated_samples or result.misspeculated_steps:
        rows.append(
            (
                "misspeculated",
                f"{result.misspeculated_samples} samples in "
                f"{result.misspeculated_steps} abandoned step starts",
            )
        )
    if result.hedged_samples:
        rows.append(("hedged", f"{result.hedged_samples} samples"))
    return rows


@app.command()
@log_run_arguments
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--steps",
    "steps",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Also list the N steps that needed the most samples.",
)
def show(file: Path, run_id: str | None, as_json: bool, steps: int) -> None:
    """What happened in a run: status, steps, samples per step, red flags, wall time."""
    from replay import summarize_async

    async def load() -> Any:
        # Folded as it is read: a million-step run is never in memory, and the listed steps
        # come from a heap of N.
        async with open_run(file, run_id) as run:
            return await summarize_async(run.events, per_step=steps if steps else False)

    summary = anyio.run(load)
    hardest = sorted(summary.step_records, key=lambda r: (-r.samples, r.step))
    if as_json:
        out = summary.to_json()
        if steps:
            out["hardest_steps"] = [r.to_json() for r in hardest]
        sys.stdout.write(json.dumps(out) + "\n")
        return
    data = summary.to_json()
    flags = data["red_flags_by_reason"]
    text = counts_text(flags) or "none"
    kinds = counts_text(data["failures_by_kind"])
    rows = [
        ("run", data["run_id"]),
        ("task", f"{data['task']} {json.dumps(data['task_params'])}"),
        ("model", ", ".join(data["models"])),
        ("status", data["status"] + (f" ({data['reason']})" if data["reason"] else "")),
        ("steps", str(data["steps"])),
        ("k", str(data["k"])),
        (
            "samples",
            f"{data['samples']} (per step: mean {data['samples_per_step_mean']:.3f}, "
            f"max {data['samples_per_step_max']})",
        ),
        ("red flags", f"{data['red_flags']} ({text})"),
        ("failures", str(data["failures"]) + (f" ({kinds})" if kinds else "")),
        ("tokens", f"{data['input_tokens']} in, {data['output_tokens']} out"),
        ("cost", cost_text(data["cost_usd"], data["models"], PriceTable())),
    ]
    # The price of pipelining and hedging, when the run paid any: these samples are in the
    # samples above (and in the cost), but in no step's decision.
    if data["misspeculated_steps"]:
        rows.append(
            (
                "misspeculated",
                f"{data['misspeculated_samples']} samples of "
                f"{data['misspeculated_steps']} abandoned starts",
            )
        )
    if data["hedged_samples"]:
        rows.append(("hedged", f"{data['hedged_samples']} samples"))
    if data["cancelled_samples"]:
        cancelled = counts_text(data["cancelled_by_reason"])
        rows.append(("cancelled", f"{data['cancelled_samples']} ({cancelled})"))
    if data["resumed"]:
        rows.append(("resumed", f"{data['resumed']} time(s)"))
    rows.append(("wall time", f"{data['wall_s']:.2f} s"))
    echo_table(rows)
    if hardest:
        # A pipelined run's listed steps may have had starts abandoned before the one that
        # decided them: a column for those only when one has (the samples above are the
        # deciding start's; the abandoned ones' were drawn for another state).
        speculated = any(record.abandoned for record in hardest)
        table = []
        for record in hardest:
            row = [
                str(record.step),
                str(record.samples),
                str(record.red_flags),
                str(record.failures),
                ", ".join(str(n) for n in sorted(record.votes.values(), reverse=True)) or "-",
            ]
            if speculated:
                row.append(
                    f"{record.abandoned} ({record.abandoned_samples} samples)"
                    if record.abandoned
                    else "-"
                )
            table.append(tuple(row))
        headers = ("step", "samples", "red flags", "failures", "votes")
        echo_table(
            table,
            (*headers, "abandoned starts") if speculated else headers,
            title="steps that needed the most samples",
        )


@app.command()
@log_run_arguments
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl"]),
    default="jsonl",
    show_default=True,
    help="Output format.",
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout."
)
def export(file: Path, run_id: str | None, fmt: str, out: Path | None) -> None:
    """Every event of a run, one JSON object per line, in seq order."""

    async def dump() -> None:
        # The file appears whole (0600) or not at all, and is never the log or any other log.
        with open_output(out, logs=(file,), mode="wb") as sink:
            async with open_run(file, run_id) as run:
                # One event at a time, in seq order: the run is never in memory.
                async for event in run.events:
                    sink.write(encode(event) + b"\n")

    anyio.run(dump)


@app.command()
@log_run_arguments
@_live_run_options
@allow_plugin_option
def resume(
    file: Path,
    run_id: str | None,
    log_writer: WriterKind,
    as_json: bool,
    otel: str | None,
    progress: bool | None,
    allow_plugins: tuple[str, ...],
) -> None:
    """Continue a crashed or cancelled run; a finished run is reported unchanged.

    Traced (``--otel`` or the OTEL_* variables), the recorded prefix's spans are sent again with
    the same ids, and only the new part's metrics are counted.
    """
    from replay import resume_run

    from .._telemetry import otel_sink_for, otel_sink_from_env

    async def go() -> tuple[RunResult, bool, list[str]]:
        # The run's start and end come from the log's run index; resume_run reads the recorded
        # prefix as it re-executes it, so the run is never loaded whole.
        async with open_run(file, run_id) as run:
            info = run.info
        finished = info.finished
        done = (
            finished is not None
            and finished.seq == info.last_seq
            and finished.status != "cancelled"
        )
        started = info.started
        # The task the log names; a plugin only if trusted (the log may be anyone's).
        task = make_task(started.task, started.task_params, allow_plugins=allow_plugins)
        budget = task.max_steps()
        with _ProgressSink(
            budget, 0, enabled=_show_progress(progress) and not as_json and not done
        ) as sink:
            sinks: list[Callable[[Event], None]] = [sink]
            if traced is not None and not done:
                sinks.append(traced[0])
            result = await resume_run(
                file, info.run_id, task=task, sinks=sinks, log_writer=log_writer
            )
            return result, done, list(started.models)

    # Set up before the run, so a bad exporter or a missing package is one line.
    traced = otel_sink_for(otel, logs=(file,)) if otel is not None else otel_sink_from_env()
    try:
        result, was_done, models = anyio.run(go)
    except KeyboardInterrupt:
        _interrupted(file, run_id)
    finally:
        if traced:
            traced[1]()  # ends open spans and flushes; warns if any span was lost
    if as_json:
        out = result.to_json()
        out["resumed"] = not was_done
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        if was_done:
            _err.print("the run had already finished; nothing was changed", highlight=False)
        # The run's models, so that a cost that is nothing for want of a price says unknown.
        _print_result(result, file, models)
    # A run that had already finished is reported, not redone: that is a success whatever its
    # status; a resumed run that then fails is not.
    if not was_done and not result.ok:
        raise SystemExit(EXIT_FAILED)


@app.command()
@log_run_arguments
@click.option("--verify", "verify_", is_flag=True, help="Re-execute and compare with the log.")
@click.option("--k", "k", type=click.IntRange(1), help="Re-vote every step with this k, offline.")
@click.option(
    "--rule",
    type=click.Choice(["ahead", "first"]),
    default=None,
    help="Re-vote with this voting rule.",
)
@click.option(
    "--red-flag-tokens",
    type=click.IntRange(1),
    help="Re-vote with this output-token red-flag threshold.",
)
@matcher_option("Re-vote with this matcher (see maker run --help).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@allow_plugin_option
def replay(
    file: Path,
    run_id: str | None,
    verify_: bool,
    k: int | None,
    rule: str | None,
    red_flag_tokens: int | None,
    matcher: str | None,
    as_json: bool,
    allow_plugins: tuple[str, ...],
) -> None:
    """Re-execute a run from its log (--verify), or re-vote it offline (--k, --rule,
    --red-flag-tokens, --matcher)."""
    revoting = any(v is not None for v in (k, rule, red_flag_tokens, matcher))
    if verify_ == revoting:
        raise UsageProblem(
            "give --verify, or re-vote options (--k, --rule, --red-flag-tokens, --matcher)"
        )
    if revoting:
        from replay._commands import revote_command_impl

        code = revote_command_impl(
            file, run_id, k, rule, red_flag_tokens, as_json, allow_plugins, matcher=matcher
        )
        raise SystemExit(code)
    from replay import verify_run

    async def go() -> VerifyResult:
        return await verify_run(file, run_id, allow_plugins=allow_plugins)

    result = anyio.run(go)
    if as_json:
        sys.stdout.write(json.dumps(result.to_json()) + "\n")
    elif result.ok:
        _out.print(f"run {result.run_id}: {result.checked} events reproduced exactly")
    else:
        assert result.divergence is not None
        div = result.divergence
        _out.print(f"run {result.run_id}: {div}")
        _out.print(f"  expected: {json.dumps(div.expected)}", markup=False, soft_wrap=True)
        _out.print(f"  got:      {json.dumps(div.got)}", markup=False, soft_wrap=True)
    if not result.ok:
        raise SystemExit(EXIT_FAILED)


@app.command()
@click.option("--p", "p", type=float, required=True, help="Per-step success rate of valid samples.")
@click.option(
    "--target", type=float, required=True, help="Wanted probability that the whole run succeeds."
)
@click.option("--steps", type=int, required=True, help="Number of steps.")
@click.option("--json", "as_json", is_flag=True, help="Also print the success probability.")
def kmin(p: float, target: float, steps: int, as_json: bool) -> None:
    """The smallest k that reaches the target (the paper's Eq 14)."""
    k = k_min(p, target, steps)
    if as_json:
        out = {"k_min": k, "p": p, "target": target, "steps": steps, "p_run": p_run(p, k, steps)}
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        sys.stdout.write(f"{k}\n")


def _register_commands() -> None:
    # Registered here rather than imported at the top: replay/ builds on maker's public API.
    from replay._commands import verify_command

    from ..mcp._mcp import mcp_command
    from ..serve_sim._serve_sim import serve_sim_command
    from ..service._service import serve_command
    from ._copy_cli import copy_command
    from ._otel_cli import export_otel_command
    from ._runs_cli import runs_command
    from ._worker_cli import submit_command, worker_command
    from ._workflow_cli import WORKFLOW_COMMANDS

    app.add_command(serve_sim_command, "serve-sim")
    app.add_command(verify_command, "verify")
    app.add_command(serve_command, "serve")
    app.add_command(export_otel_command, "export-otel")
    app.add_command(mcp_command, "mcp")
    app.add_command(runs_command, "runs")
    app.add_command(submit_command, "submit")
    app.add_command(worker_command, "worker")
    app.add_command(copy_command, "copy")
    for name, command in WORKFLOW_COMMANDS.items():
        app.add_command(command, name)


_register_commands()


def _fail(message: str, code: int) -> NoReturn:
    _err.print(f"maker: error: {message}", markup=False, soft_wrap=True)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI, turning every expected error into one line."""
    try:
        code = app.main(args=argv, prog_name="maker", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except click.UsageError as exc:
        hint = f" (see 'maker {exc.ctx.info_name} --help')" if exc.ctx and exc.ctx.parent else ""
        _fail(exc.format_message().replace("\n", " ") + hint, EXIT_USAGE)
    except click.ClickException as exc:
        _fail(exc.format_message().replace("\n", " "), EXIT_USAGE)
    except (UsageProblem, ConfigError) as exc:
        _fail(str(exc), EXIT_USAGE)
    except (EventLogError, MakerError) as exc:
        _fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except OSError as exc:
        _fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "), EXIT_FAILED)
    except BaseExceptionGroup as group:
        # A log writer that fails mid-run (its process killed, the disk full) ends the log's
        # task group with its error: one line, like any other log error.
        failed = _log_errors(group)
        if failed is None:
            raise
        _fail(str(failed[0]), EXIT_FAILED)
    raise SystemExit(code if isinstance(code, int) else 0)


def _log_errors(group: BaseExceptionGroup[BaseException]) -> list[EventLogError] | None:
    """The log errors a group holds, or None if it holds anything else."""
    found: list[EventLogError] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            inner = _log_errors(exc)
            if inner is None:
                return None
            found += inner
        elif isinstance(exc, EventLogError):
            found.append(exc)
        else:
            return None
    return found or None
