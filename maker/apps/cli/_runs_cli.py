"""``maker runs FILE``: the runs of a log, one line each, from their first and last events only.

A listing must not fold a million-step run: each line comes from the run's ``run_started``, its
``run_finished`` when that is its last event, and its last seq, which the log keeps as the run's
head. So it shows what those hold (status, steps, samples, red flags, cost, wall time); the
cost of a run that has not ended, or that ended in a log written before ``run_finished`` kept
it, is unknown here (``-``): only a fold of every sample gives it (``maker show``). A run
without an end is ``running``
while a process holds it (the log's run lock names the process) and ``interrupted`` otherwise:
``maker resume`` continues it.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import anyio
import click
import msgspec

from events import EventLog, RunInfo
from events._locks import holder

from ...core._pricing import PriceTable
from ._table import cost_text, echo_table

_PARAMS_CHARS = 40
"""A listing's task column shows at most this much of the parameters (a prompt task's are its
prompts)."""


def run_line(path: str, info: RunInfo) -> dict[str, Any]:
    """What ``maker runs`` says of one run, as JSON."""
    started, finished = info.started, info.finished
    ended = finished is not None and finished.seq == info.last_seq
    out: dict[str, Any] = {
        "run_id": info.run_id,
        "task": started.task,
        "task_params": started.task_params,
        "models": list(started.models),
        "started": datetime.datetime.fromtimestamp(started.ts, datetime.UTC).isoformat(),
        "events": info.last_seq + 1,
        "status": "",
        "pid": None,
        "steps": None,
        "samples": None,
        "red_flags": None,
        "wall_s": None,
        "cost_usd": None,
        "reason": "",
    }
    if ended and finished is not None:
        out.update(
            status=finished.status,
            steps=finished.steps,
            samples=finished.samples,
            red_flags=finished.red_flags,
            wall_s=finished.wall_s,
            cost_usd=None if finished.cost_usd is msgspec.UNSET else finished.cost_usd,
            reason=finished.reason,
        )
    else:
        pid = holder(path, info.run_id)
        out.update(status="running" if pid is not None else "interrupted", pid=pid)
    return out


async def _lines(path: Path) -> list[dict[str, Any]]:
    async with EventLog(path, mode="r") as log:
        return [run_line(str(path), info) for info in await log.runs()]


def _task_cell(line: dict[str, Any]) -> str:
    params = json.dumps(line["task_params"], sort_keys=True, separators=(",", ":"))
    if len(params) > _PARAMS_CHARS:
        params = params[: _PARAMS_CHARS - 1] + "…"
    return f"{line['task']} {params}"


def _status_cell(line: dict[str, Any]) -> str:
    if line["pid"] is not None:
        return f"running (pid {line['pid']})"
    return str(line["status"])


def _number(value: object) -> str:
    return "-" if value is None else str(value)


def _cost_cell(line: dict[str, Any], prices: PriceTable) -> str:
    cost = line["cost_usd"]
    if cost is None:
        return "-"
    # "unknown" rather than $0.0000 when no model of the run has a price, as maker show says.
    return cost_text(cost, line["models"], prices).split(" (", 1)[0]


@click.command("runs")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per run, a list.")
def runs_command(file: Path, as_json: bool) -> None:
    """List the runs of a log: id, task, status, steps, samples, cost, events, start (UTC)."""
    lines = anyio.run(_lines, file)
    if as_json:
        click.echo(json.dumps(lines))
        return
    if not lines:
        click.echo(f"{file}: no runs")
        return
    prices = PriceTable()
    rows = [
        (
            line["run_id"],
            _task_cell(line),
            ",".join(line["models"]),
            _status_cell(line),
            _number(line["steps"]),
            _number(line["samples"]),
            _cost_cell(line, prices),
            str(line["events"]),
            line["started"][:19].replace("T", " "),
        )
        for line in lines
    ]
    header = (
        "run", "task", "model", "status", "steps", "samples", "cost", "events", "started (UTC)"
    )  # fmt: skip
    echo_table(rows, header)
