"""The OpenTelemetry parts of the command line: ``maker export-otel`` and ``maker run --otel``.

Kept apart from ``_cli.py`` so the CLI only has to register the command and wire the sink.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import anyio
import click
from opentelemetry.sdk.trace import TracerProvider

from ...core._errors import ConfigError
from ...otel._otel import (
    TraceSink,
    _export_log,
    configure_from_env,
    provider_losses,
    trace_id_for,
    tracer_provider_for,
)
from .._options import log_run_arguments

OTEL_SPECS = "console, otlp or json:FILE"


def _closer(sink: TraceSink, provider: TracerProvider) -> Callable[[], None]:
    def close() -> None:
        sink.close()
        provider.shutdown()  # flushes the batch queue, then stops the exporter
        losses = provider_losses(provider)
        if losses is not None and losses.lost:
            # The run's own outcome stands; say what the trace is missing, in one line.
            click.echo(
                f"maker: warning: otel: {losses.lost} of {losses.ended} spans were not exported"
                f" ({losses.failed} rejected by the exporter)",
                err=True,
            )

    return close


def otel_sink_for(
    spec: str,
    *,
    capture_content: bool = False,
    logs: Iterable[str | os.PathLike[str]] = (),
) -> tuple[TraceSink, Callable[[], None]]:
    """The live trace sink for ``maker run --otel SPEC``, and the call that finishes it.

    ``spec`` is ``console`` (spans as JSON on stderr, so stdout stays free for ``--json``),
    ``otlp`` (OTLP/HTTP to the endpoint in ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
    ``OTEL_EXPORTER_OTLP_ENDPOINT``, default ``http://localhost:4318``) or ``json:FILE`` (OTLP
    JSON lines). Call the returned function once the run is over, also after a failure or an
    interruption: it ends spans left open, flushes and shuts the exporter down, and prints a
    one-line warning on stderr if spans were lost. Raises :class:`maker.ConfigError` for a bad
    spec or a missing OTLP package.

    The json FILE is renamed into place, whole and 0600, by that call (a process killed before
    leaves none); it may be none of ``logs`` (the run's log) nor any other maker log, which
    raises :class:`events.OutputIsLogError` before the run starts.
    """
    kind, sep, target = spec.partition(":")
    if kind == "console" and not sep:
        provider = tracer_provider_for("console", stream=sys.stderr)
    elif kind == "otlp" and not sep:
        provider = tracer_provider_for("otlp")
    elif kind == "json" and sep and target:
        provider = tracer_provider_for("json", target, logs=logs)
    elif kind == "json":
        raise ConfigError("otel", "json needs a file: --otel json:FILE")
    else:
        raise ConfigError("otel", f"unknown exporter {spec!r}; use {OTEL_SPECS}")
    sink = TraceSink(provider, capture_content=capture_content)
    return sink, _closer(sink, provider)


def otel_sink_from_env() -> tuple[TraceSink, Callable[[], None]] | None:
    """The live trace sink the standard ``OTEL_*`` variables ask for, or None.

    For ``maker run`` without ``--otel``; see :func:`maker.otel._otel.configure_from_env` for the
    variables honoured.
    """
    provider = configure_from_env()
    if provider is None:
        return None
    sink = TraceSink(provider)
    return sink, _closer(sink, provider)


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

    async def go() -> tuple[str, int]:
        return await _export_log(file, run_id, exporter, out, capture_content=capture_content)

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
