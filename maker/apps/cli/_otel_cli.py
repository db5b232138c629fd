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
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

from ...core._errors import ConfigError
from ...otel._otel import (
    TraceSink,
    _export_log,
    configure_from_env,
    metric_losses,
    metrics_from_env,
    provider_losses,
    trace_id_for,
    tracer_provider_for,
)
from .._options import log_run_arguments

OTEL_SPECS = "console, otlp or json:FILE"


def _closer(
    sink: TraceSink, provider: TracerProvider | None, meters: MeterProvider | None
) -> Callable[[], None]:
    def close() -> None:
        sink.close()
        if provider is not None:
            provider.shutdown()  # flushes the batch queue, then stops the exporter
            losses = provider_losses(provider)
            if losses is not None and losses.lost:
                # The run's own outcome stands; say what the trace is missing, in one line.
                click.echo(
                    f"maker: warning: otel: {losses.lost} of {losses.ended} spans were not"
                    f" exported ({losses.failed} rejected by the exporter)",
                    err=True,
                )
        if meters is not None:
            meters.shutdown()  # collects every metric once more and exports it
            failed = metric_losses(meters)
            if failed is not None and failed.failed:
                click.echo(
                    f"maker: warning: otel: {failed.failed} of {failed.exports} metric exports"
                    " failed",
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
    interruption: it ends spans left open, flushes and shuts the exporters down, and prints a
    one-line warning on stderr if spans or metrics were lost. Raises :class:`maker.ConfigError`
    for a bad spec or a missing OTLP package.

    Metrics go where ``OTEL_METRICS_EXPORTER`` says (otlp, console or none); when it is unset,
    ``console`` and ``otlp`` send them the way the spans go (OTLP to
    ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` + ``/v1/metrics``),
    and ``json:FILE``, which has no metrics format, leaves them to the endpoint variables as a
    run without ``--otel`` does (:func:`maker.otel._otel.metrics_from_env`).

    The json FILE is renamed into place, whole and 0600, by that call (a process killed before
    leaves none); it may be none of ``logs`` (the run's log) nor any other maker log, which
    raises :class:`events.OutputIsLogError` before the run starts.
    """
    kind, sep, target = spec.partition(":")
    if kind not in ("console", "otlp", "json") or (sep and kind != "json"):
        raise ConfigError("otel", f"unknown exporter {spec!r}; use {OTEL_SPECS}")
    if kind == "json" and not (sep and target):
        raise ConfigError("otel", "json needs a file: --otel json:FILE")
    # Metrics first: a bad metrics setting then fails before a json FILE is begun.
    meters = metrics_from_env(default=None if kind == "json" else kind)
    try:
        if kind == "console":
            provider = tracer_provider_for("console", stream=sys.stderr)
        elif kind == "otlp":
            provider = tracer_provider_for("otlp")
        else:
            provider = tracer_provider_for("json", target, logs=logs)
    except BaseException:
        if meters is not None:
            meters.shutdown()
        raise
    sink = TraceSink(provider, meters, capture_content=capture_content)
    return sink, _closer(sink, provider, meters)


def otel_sink_from_env() -> tuple[TraceSink, Callable[[], None]] | None:
    """The live trace sink the standard ``OTEL_*`` variables ask for, or None.

    For ``maker run`` without ``--otel`` and the other commands that call models; see
    :func:`maker.otel._otel.configure_from_env` (spans) and
    :func:`maker.otel._otel.metrics_from_env` (metrics) for the variables honoured. Either
    signal may be asked for alone.
    """
    meters = metrics_from_env()
    try:
        provider = configure_from_env()
    except BaseException:
        if meters is not None:
            meters.shutdown()
        raise
    if provider is None and meters is None:
        return None
    # Metrics alone: the spans are built against no-op tracers, which record nothing.
    tracers = provider if provider is not None else trace.NoOpTracerProvider()
    sink = TraceSink(tracers, meters)
    return sink, _closer(sink, provider, meters)


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
