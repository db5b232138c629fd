"""Command-line logic of replay/: the ``verify`` command, and the re-vote behind ``maker replay``.

Each command's logic is a plain function returning the exit code, so the ``maker`` CLI can expose
it under another name or inside another command. Errors are raised, never printed: the CLI's
entry point turns ``click.UsageError``, :class:`events.EventLogError` and :class:`maker.MakerError`
into one line on stderr.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Sequence
from typing import Any

import anyio
import click

from events import open_run, verify_log
from maker.core import MakerError, PolicyRecord, recorded_policy

from ._replayer import task_for
from ._revote import UNCHANGED, RevoteReport, revote_async

EXIT_OK = 0
EXIT_BROKEN = 1

_LISTED = 20  # step lists longer than this are cut in the text output


def verify_command_impl(file: str | os.PathLike[str], as_json: bool) -> int:
    """Check every run in ``file``; print one line per run. Returns 1 if any run is broken."""
    report = verify_log(file)
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        if report.problem:
            click.echo(f"{report.path}: {report.problem}")
        for run in report.runs:
            click.echo(run.line())
        if not report.runs and not report.problem:
            click.echo(f"{report.path}: no runs")
    return EXIT_OK if report.ok else EXIT_BROKEN


def revote_command_impl(
    file: str | os.PathLike[str],
    run_id: str | None,
    k: int | None,
    rule: str | None,
    red_flag_tokens: int | None,
    as_json: bool,
    allow_plugins: Collection[str] = (),
    *,
    matcher: str | None = None,
) -> int:
    """Re-vote one run of ``file`` offline and print what would have changed. Returns 0.

    ``None`` keeps the recorded setting (k, rule, the red-flag token threshold, the matcher's
    spec). The run is
    checked for integrity first; a broken log raises :class:`BrokenLogError`. A run of a task
    plugin is re-voted only when ``allow_plugins`` trusts it (see :func:`replay.task_for`).
    """
    if k is not None and k < 1:
        raise click.UsageError(f"--k must be at least 1, got {k}")
    if rule is not None and rule not in ("ahead", "first"):
        raise click.UsageError(f"--rule must be 'ahead' or 'first', got {rule!r}")
    if red_flag_tokens is not None and red_flag_tokens < 1:
        raise click.UsageError(f"--red-flag-tokens must be at least 1, got {red_flag_tokens}")
    report = anyio.run(
        _revote, os.fspath(file), run_id, k, rule, red_flag_tokens, tuple(allow_plugins), matcher
    )
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        for line in describe(report):
            click.echo(line)
    return EXIT_OK


async def _revote(
    path: str,
    run_id: str | None,
    k: int | None,
    rule: str | None,
    red_flag_tokens: int | None,
    allow_plugins: Collection[str],
    matcher: str | None,
) -> RevoteReport:
    """Re-vote the run as it is read from the log: memory holds one step's responses."""
    # Refuse a damaged run before reading it: its samples could not be trusted.
    async with open_run(path, run_id, check=True) as run:
        started = run.info.started
        task = task_for(started, allow_plugins=allow_plugins)
        recorded = recorded_policy(started.policy)
        if not isinstance(recorded, PolicyRecord):
            raise MakerError(f"run {started.run_id} is a calibration: it voted nothing to re-vote")
        return await revote_async(
            run.events,
            task,
            k=recorded.k if k is None else k,
            rule=UNCHANGED if rule is None else ("first" if rule == "first" else "ahead"),
            max_output_tokens=UNCHANGED if red_flag_tokens is None else red_flag_tokens,
            matcher=UNCHANGED if matcher is None else matcher,
            keep_steps=False,
        )


def _steps(steps: Sequence[int]) -> str:
    shown = ", ".join(str(s) for s in steps[:_LISTED])
    more = f", … ({len(steps) - _LISTED} more)" if len(steps) > _LISTED else ""
    return f"{len(steps)} ({shown}{more})" if steps else "none"


def _flags(rules: dict[str, Any]) -> str:
    limit = rules.get("max_output_tokens")
    parts = [f"over {limit} output tokens" if limit is not None else "no token limit"]
    if rules.get("flag_truncated", True):
        parts.append("truncated")
    return ", ".join(parts)


def describe(report: RevoteReport) -> list[str]:
    """The report as the lines ``maker replay --k`` prints."""
    changes = [
        f"k={report.k}"
        + (f" (recorded {report.recorded_k})" if report.k != report.recorded_k else "")
    ]
    changes.append(
        f"rule {report.rule}"
        + (f" (recorded {report.recorded_rule})" if report.rule != report.recorded_rule else "")
    )
    new_flags, old_flags = _flags(report.red_flags), _flags(report.recorded_red_flags)
    changes.append(
        f"red flags: {new_flags}" + (f" (recorded: {old_flags})" if new_flags != old_flags else "")
    )
    if report.matcher != report.recorded_matcher or report.matcher != "exact":
        changes.append(
            f"matcher {report.matcher}"
            + (
                f" (recorded {report.recorded_matcher})"
                if report.matcher != report.recorded_matcher
                else ""
            )
        )
    lines = [
        f"run {report.run_id}: re-voted {report.revoted} decided steps offline, "
        + "; ".join(changes),
        f"  decide differently: {_steps(report.changed_steps_)}",
        f"  need more samples than recorded: {_steps(report.short_steps_)}",
        f"  samples: {report.needed_samples} needed by the {report.decided_steps} steps that "
        f"decide, {report.samples_saved} saved of {report.recorded_samples} recorded",
    ]
    lines += [f"  note: {note}" for note in report.notes]
    return lines


@click.command("verify")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def verify_command(file: str, as_json: bool) -> None:
    """Check every run's hash chain, seqs and head; name the first bad seq of a broken run."""
    code = verify_command_impl(file, as_json)
    if code:
        raise SystemExit(code)
