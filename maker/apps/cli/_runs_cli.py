"""``maker runs FILE``: the runs of a log, one line each, from their first and last events only.

A listing must not fold a million-step run: each line comes from the run's ``run_started``, its
``run_finished`` when that is its last event, and its last seq, which the log keeps as the run's
head. So it shows what those hold (status, steps, samples, red flags, cost, wall time); the
cost of a run that has not ended, or that ended in a log written before ``run_finished`` kept
it, is unknown here (``-``): only a fold of every sample gives it (``maker show``). A run
without an end is ``running``
while a process holds it (the log's run lock names the process) and ``interrupted`` otherwise:
``maker resume`` continues it.

A ``postgresql://`` URL lists the runs of its log and of its run queue (``maker submit``): a
queued run is ``queued`` (not in the log yet, or put back), a claimed one ``running`` with its
owner (the worker's id) and the age of its lease (seconds since its last renewal), one no worker
could run as queued ``refused``; a run that left the queue has its status from the log.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import anyio
import click
import msgspec

from events import EventLog, RunInfo, is_database_url, open_log, redact_url
from events._locks import holder

from ...core._pricing import PriceTable
from .._options import LogTarget
from ._table import cost_text, echo_table

_PARAMS_CHARS = 40
"""A listing's task column shows at most this much of the parameters (a prompt task's are its
prompts)."""


_EMPTY_LINE = (
    "run_id", "task", "task_params", "models", "started", "events", "status", "pid", "owner",
    "lease_s", "steps", "samples", "red_flags", "wall_s", "cost_usd", "reason",
)  # fmt: skip
"""The keys of a listing's line, in order."""


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
        "owner": None,
        "lease_s": None,
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
    elif is_database_url(path):
        out.update(status="interrupted")  # the queue says more, if it holds the run
    else:
        pid = holder(path, info.run_id)
        out.update(status="running" if pid is not None else "interrupted", pid=pid)
    return out


async def _lines(path: Path | str) -> list[dict[str, Any]]:
    if is_database_url(path):
        return await _database_lines(str(path))
    async with EventLog(path, mode="r") as log:
        return [run_line(str(path), info) for info in await log.runs()]


async def _database_lines(url: str) -> list[dict[str, Any]]:
    """The log's runs and the queue's, one line per run: a queued run not in the log yet has
    only what the queue knows of it."""
    from events import NotALogError

    from ..worker import RunQueue
    from ..worker._queue import missing

    # The queue first, then the log: a run that leaves the queue between the two readings is
    # finished in the log; the other way round, it would show as interrupted.
    async with RunQueue(url, create=False) as queue:
        claims = await queue.claims() if queue.exists else []
    infos: list[RunInfo] = []
    try:
        async with open_log(url, mode="r") as log:
            infos = await log.runs()
    except NotALogError:
        if not queue.exists:
            raise missing(url) from None
    by_run = {claim.run_id: claim for claim in claims}
    lines = [run_line(url, info) for info in infos]
    known = {line["run_id"] for line in lines}
    for claim in claims:
        if claim.run_id not in known:
            # Not started yet: only the queue knows of it.
            line = dict.fromkeys(_EMPTY_LINE)
            line.update(run_id=claim.run_id, task=claim.task, task_params=claim.task_params)
            line.update(models=[], started="")
            line.update(events=0, status="", reason="")
            lines.append(line)
    for line in lines:
        found = by_run.get(line["run_id"])
        if found is None:
            continue
        claim = found
        if claim.status == "picked":
            line.update(status="running", owner=claim.owner, lease_s=round(claim.renewed_s, 3))
        elif claim.status == "queued":
            line.update(status="queued")
        elif claim.status == "failed":
            line.update(status="refused")
    return lines


def _task_cell(line: dict[str, Any]) -> str:
    params = json.dumps(line["task_params"], sort_keys=True, separators=(",", ":"))
    if len(params) > _PARAMS_CHARS:
        params = params[: _PARAMS_CHARS - 1] + "…"
    return f"{line['task']} {params}"


def _status_cell(line: dict[str, Any]) -> str:
    if line["pid"] is not None:
        return f"running (pid {line['pid']})"
    if line["owner"] is not None:
        return f"running ({line['owner'][:8]}, lease {line['lease_s']:.1f}s)"
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
@click.argument("file", type=LogTarget())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per run, a list.")
def runs_command(file: Path | str, as_json: bool) -> None:
    """List the runs of a log: id, task, status, steps, samples, cost, events, start (UTC).

    FILE is a SQLite file or a postgresql:// URL; a database's queued and claimed runs are
    listed too, each claimed one with its worker and the age of its lease.
    """
    lines = anyio.run(_lines, file)
    if as_json:
        click.echo(json.dumps(lines))
        return
    if not lines:
        click.echo(f"{redact_url(str(file))}: no runs")
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
            line["started"][:19].replace("T", " ") or "-",
        )
        for line in lines
    ]
    header = (
        "run", "task", "model", "status", "steps", "samples", "cost", "events", "started (UTC)"
    )  # fmt: skip
    echo_table(rows, header)
