"""``maker export-otel``: a recorded run as OpenTelemetry spans.

Kept apart from ``_cli.py`` so the CLI only has to register the command; the live sinks of
``--otel`` are in :mod:`maker.apps._telemetry`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import click

from ...otel._otel import trace_id_for
from .._options import log_run_arguments
from .._telemetry import needs_sdk

if TYPE_CHECKING:
    pass


@click.command("export-otel")
@log_run_arguments
@click.option(
    "--exporter",
    type=click.Choice(["console", "otlp", "json"]),
    default="console",
    show_default=True,
    help="console: span JSON; otlp: OTLP/HTTP; json: OTLP JSON lines.",
)
@click.option(
    "--out",
    help=(
        "json: the file to write (required); console: a file instead of stdout; otlp: the "
        "endpoint URL (default: OTEL_EXPORTER_OTLP_* or http://localhost:4318/v1/traces)."
    ),
)
@click.option(
    "--capture-content",
    is_flag=True,
    help="Put prompts, responses and answers in spans (off by default).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Say what was exported as one JSON object on stdout."
)
def export_otel_command(
    file: Path,
    run_id: str | None,
    exporter: str,
    out: str | None,
    capture_content: bool,
    as_json: bool,
) -> None:
    """A recorded run as OpenTelemetry spans, with its recorded times and deterministic ids.

    Exporting the same run twice gives the same trace and span ids.
    """
    if exporter == "json" and out is None:
        raise click.UsageError("--exporter json needs --out PATH")
    if not file.exists():
        raise click.UsageError(f"no such log: {os.fspath(file)}")

    with needs_sdk():
        from ...otel import _sdk

    async def go() -> tuple[str, int]:
        return await _sdk._export_log(file, run_id, exporter, out, capture_content=capture_content)

    found, count = anyio.run(go)
    if as_json:
        summary = {
            "run_id": found,
            "trace_id": f"{trace_id_for(found):032x}",
            "spans": count,
            "exporter": exporter,
            "out": out,
        }
        # With the console exporter the spans themselves are on stdout: the summary goes last.
        click.echo(json.dumps(summary))
        return
    where = f" to {out}" if out is not None else ""
    click.echo(
        f"exported {count} spans of run {found} (trace {trace_id_for(found):032x}){where}",
        err=True,
    )
