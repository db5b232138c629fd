"""Live telemetry for the programs that run the engine: ``maker run``, ``resume`` and
``calibrate``, ``maker serve`` and ``maker mcp``.

A sink from here is set up before the first run, so that a bad exporter, a bad ``OTEL_*``
variable or a missing package is one line and not a lost run; the call it comes with ends open
spans, flushes, and warns in one line if anything was lost. The OpenTelemetry SDK is an extra:
it is imported only when something is to be exported.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click
from opentelemetry import trace

from ..core._errors import ConfigError
from ..otel import SDK_MISSING
from ..otel._otel import TraceSink, _env_exporter, metric_losses, provider_losses

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

OTEL_SPECS = "console, otlp, otlp:URL or json:FILE"


@contextmanager
def needs_sdk() -> Iterator[None]:
    # The SDK is an extra: a command that must export says what to install, in one line.
    try:
        yield
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.startswith("opentelemetry.sdk"):
            raise ConfigError("otel", SDK_MISSING) from exc
        raise


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
    ``OTEL_EXPORTER_OTLP_ENDPOINT``, default ``http://localhost:4318``), ``otlp:URL`` (to the
    endpoint URL, read as ``OTEL_EXPORTER_OTLP_ENDPOINT`` is, for both signals) or
    ``json:FILE`` (OTLP JSON lines). Call the returned function once the run is over, also
    after a failure or an interruption: it ends spans left open, flushes and shuts the exporters
    down, and prints a one-line warning on stderr if spans or metrics were lost. Raises
    :class:`maker.ConfigError` for a bad spec or a missing OTLP package.

    Metrics go where ``OTEL_METRICS_EXPORTER`` says (otlp, console or none); when it is unset,
    ``console`` and ``otlp`` send them the way the spans go (OTLP to ``otlp:URL``'s URL, or to
    ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` + ``/v1/metrics``),
    and ``json:FILE``, which has no metrics format, leaves them to the endpoint variables as a
    run without ``--otel`` does (:func:`maker.otel._sdk.metrics_from_env`).

    The json FILE is renamed into place, whole and 0600, by that call (a process killed before
    leaves none); it may be none of ``logs`` (the run's log) nor any other maker log, which
    raises :class:`events.OutputIsLogError` before the run starts.
    """
    kind, sep, target = spec.partition(":")
    if kind not in ("console", "otlp", "json") or (sep and kind == "console"):
        raise ConfigError("otel", f"unknown exporter {spec!r}; use {OTEL_SPECS}")
    if sep and not target:
        raise ConfigError(
            "otel",
            f"{kind} needs " + ("a URL: otlp:URL" if kind == "otlp" else "a file: json:FILE"),
        )
    if kind == "json" and not sep:
        raise ConfigError("otel", "json needs a file: json:FILE")
    with needs_sdk():
        from ..otel import _sdk

    # Metrics first: a bad metrics setting then fails before a json FILE is begun.
    meters = _sdk.metrics_from_env(
        default=None if kind == "json" else kind, endpoint=target if kind == "otlp" else None
    )
    try:
        if kind == "console":
            provider = _sdk.tracer_provider_for("console", stream=sys.stderr)
        elif kind == "otlp":
            provider = _sdk.tracer_provider_for(spec)
        else:
            provider = _sdk.tracer_provider_for("json", target, logs=logs)
    except BaseException:
        if meters is not None:
            meters.shutdown()
        raise
    sink = TraceSink(provider, meters, capture_content=capture_content)
    return sink, _closer(sink, provider, meters)


def otel_sink_from_env() -> tuple[TraceSink, Callable[[], None]] | None:
    """The live trace sink the standard ``OTEL_*`` variables ask for, or None.

    For ``maker run`` without ``--otel`` and the other commands that call models; see
    :func:`maker.otel._sdk.configure_from_env` (spans) and
    :func:`maker.otel._sdk.metrics_from_env` (metrics) for the variables honoured. Either
    signal may be asked for alone.
    """
    if _env_exporter(os.environ, "TRACES") is None and _env_exporter(os.environ, "METRICS") is None:
        return None  # decided without the SDK: a run that exports nothing does not need it
    with needs_sdk():
        from ..otel import _sdk

    meters = _sdk.metrics_from_env()
    try:
        provider = _sdk.configure_from_env()
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


__all__ = ["OTEL_SPECS", "needs_sdk", "otel_sink_for", "otel_sink_from_env"]
