"""``maker export-otel``: a recorded run as OpenTelemetry spans.

Kept apart from ``_cli.py`` so the CLI only has to register the command; the live sinks of
``--otel`` are in :mod:`maker.apps._telemetry`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import anyio
import click

from events._targets import without_password

from ...otel._otel import trace_id_for
from .._options import log_run_arguments
from .._telemetry import needs_sdk


def _shown(spec: str) -> str:
    """An exporter spec for output, with a password in an endpoint URL masked."""
    kind, sep, url = spec.partition(":")
    return f"{kind}:{without_password(url)}" if kind == "otlp" and sep else spec


@click.command("export-otel")
@log_run_arguments
@click.option(
    "--exporter",
    metavar="EXPORTER",
    default="console",
    # Free text (otlp:URL), but the shell still completes the kinds.
    shell_complete=lambda _ctx, _param, incomplete: [
        kind for kind in ("console", "otlp", "json") if kind.startswith(incomplete)
    ],
    show_default=True,
    help="console (span JSON), otlp (OTLP/HTTP to the OTEL_EXPORTER_OTLP_* endpoint, default "
    "http://localhost:4318), otlp:URL (to the endpoint URL), or json (OTLP JSON lines; needs "
    "--out).",
)
@click.option(
    "--out",
    help="The file to write: json's (required), or console's instead of stdout.",
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
    if exporter.partition(":")[0] == "otlp" and out is not None:
        # One spelling for an endpoint, as in run --otel: --out is a file.
        raise click.UsageError("--out is a file; give an otlp endpoint as --exporter otlp:URL")
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
            "exporter": _shown(exporter),
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
