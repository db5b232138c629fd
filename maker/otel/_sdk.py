"""The OpenTelemetry SDK's side of maker's telemetry: providers, exporters, export of a log.

:mod:`maker.otel._otel` builds spans and metrics on the OpenTelemetry API alone, as a library
should; this module is what an application needs to send them somewhere, and it imports the SDK
(``pip install 'maker[otel]'``). Its providers give :class:`~maker.otel.TraceSink` deterministic
ids (:class:`DeterministicIdGenerator`), so a live trace and a log's export are the same tree.
"""

from __future__ import annotations

import base64
import math
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from typing import IO, Any, Final

import anyio.from_thread
import anyio.to_thread
import msgspec
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import StatusCode

from events import AnyEvent, open_output, open_run

from ..core._errors import ConfigError
from ._otel import (
    _ACCOUNTS,
    _METRIC_ACCOUNTS,
    FLUSH_EVERY,
    QUEUE_SIZE,
    IdPrimer,
    _Account,
    _check_protocol,
    _env_exporter,
    _MetricAccount,
    export_run,
)

_json = msgspec.json.Encoder()

_READ_BATCH: Final = 4096
"""Events a log's export reads from the loop at a time (its memory, whatever the run's length)."""

_OTLP_MISSING: Final = (
    "the otlp exporter needs opentelemetry-exporter-otlp-proto-http: pip install 'maker[otlp]'"
)


class DeterministicIdGenerator(IdPrimer, IdGenerator):
    """An id generator that hands out the ids it was primed with, and random ids otherwise.

    :class:`~maker.otel.TraceSink` primes it before each span it starts (with
    :func:`~maker.otel._otel.trace_id_for` and :func:`~maker.otel._otel.span_id_for`), so spans
    built from the same events get the same ids. Priming is per thread, so other code creating
    spans on other threads through the same provider is unaffected. Give it to your own provider
    to get deterministic ids there: ``TracerProvider(id_generator=DeterministicIdGenerator())``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._random = RandomIdGenerator()

    def generate_trace_id(self) -> int:
        primed = self.primed_trace_id()
        return self._random.generate_trace_id() if primed is None else primed

    def generate_span_id(self) -> int:
        primed = self.primed_span_id()
        return self._random.generate_span_id() if primed is None else primed


class _Counting(SpanProcessor):
    def __init__(self, account: _Account) -> None:
        self._account = account

    def on_end(self, span: ReadableSpan) -> None:
        # Only sampled spans reach an exporter; count what the exporter should see.
        if span.context is not None and span.context.trace_flags.sampled:
            self._account.ended += 1


class _CountingExporter(SpanExporter):
    def __init__(
        self, inner: SpanExporter, account: _Account, close: Callable[[], None] | None
    ) -> None:
        self._inner = inner
        self._account = account
        self._close = close

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception:
            self._account.failed += len(spans)
            raise
        if result is SpanExportResult.SUCCESS:
            self._account.exported += len(spans)
        else:
            self._account.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()
        if self._close is not None:
            self._close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


def _any_value(value: Any) -> dict[str, Any]:
    kind = type(value)
    # Exact types first: attribute values are nearly always plain str, int or float.
    if kind is str:
        return {"stringValue": value}
    if kind is int:
        return {"intValue": str(value)}
    if kind is float:
        if math.isfinite(value):
            return {"doubleValue": value}
        # JSON has no NaN or infinities; protobuf's JSON mapping spells them as strings.
        return {
            "doubleValue": "NaN"
            if math.isnan(value)
            else ("Infinity" if value > 0 else "-Infinity")
        }
    if kind is bool:
        return {"boolValue": value}
    if isinstance(value, bool):
        return {"boolValue": bool(value)}
    if isinstance(value, int):
        return {"intValue": str(int(value))}
    if isinstance(value, float):
        return _any_value(float(value))
    if isinstance(value, str):
        return {"stringValue": str(value)}
    if isinstance(value, bytes):
        return {"bytesValue": base64.b64encode(value).decode()}
    if isinstance(value, Mapping):
        return {"kvlistValue": {"values": _key_values(value)}}
    if isinstance(value, Sequence):
        return {"arrayValue": {"values": [_any_value(v) for v in value]}}
    return {}


def _key_values(attrs: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if not attrs:
        return []
    return [{"key": key, "value": _any_value(value)} for key, value in attrs.items()]


_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200


def _flags(context: trace.SpanContext | None) -> int:
    # As the SDK's protobuf encoder sets them (SpanFlags in trace.proto).
    return _HAS_IS_REMOTE | (_IS_REMOTE if context is not None and context.is_remote else 0)


def _span_json(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    assert context is not None
    out: dict[str, Any] = {
        "traceId": f"{context.trace_id:032x}",
        "spanId": f"{context.span_id:016x}",
    }
    if context.trace_state:
        out["traceState"] = ",".join(f"{k}={v}" for k, v in context.trace_state.items())
    if span.parent is not None:
        out["parentSpanId"] = f"{span.parent.span_id:016x}"
    out["flags"] = _flags(span.parent)
    out["name"] = span.name
    # OTLP's SpanKind counts from UNSPECIFIED = 0; the SDK's from INTERNAL = 0.
    out["kind"] = span.kind.value + 1
    out["startTimeUnixNano"] = str(span.start_time or 0)
    out["endTimeUnixNano"] = str(span.end_time or 0)
    out["attributes"] = _key_values(span.attributes)
    if span.dropped_attributes:
        out["droppedAttributesCount"] = span.dropped_attributes
    if span.events:
        out["events"] = [
            {
                "timeUnixNano": str(event.timestamp),
                "name": event.name,
                "attributes": _key_values(event.attributes),
            }
            for event in span.events
        ]
    if span.links:
        out["links"] = [
            {
                "traceId": f"{link.context.trace_id:032x}",
                "spanId": f"{link.context.span_id:016x}",
                "attributes": _key_values(link.attributes),
                "flags": _flags(link.context),
            }
            for link in span.links
        ]
    status: dict[str, Any] = {}
    if span.status.status_code is not StatusCode.UNSET:
        status["code"] = span.status.status_code.value  # UNSET 0, OK 1, ERROR 2, as in OTLP
    if span.status.description:
        status["message"] = span.status.description
    out["status"] = status
    return out


def spans_to_otlp_json(spans: Iterable[ReadableSpan]) -> dict[str, Any]:
    """One OTLP ``ExportTraceServiceRequest`` in the OTLP/HTTP JSON encoding.

    ``resourceSpans`` → ``scopeSpans`` → ``spans``, grouped by resource and instrumentation
    scope; trace and span ids as lowercase hex, times as decimal strings of nanoseconds,
    64-bit integers as strings, kinds and status codes as enum numbers (the encoding the
    OpenTelemetry Collector's file exporter writes and its receivers read).
    """
    grouped: dict[Resource, dict[Any, list[dict[str, Any]]]] = {}
    for span in spans:
        by_scope = grouped.setdefault(span.resource, {})
        by_scope.setdefault(span.instrumentation_scope, []).append(_span_json(span))
    resource_spans = []
    for resource, by_scope in grouped.items():
        scope_spans = []
        for scope, encoded in by_scope.items():
            entry: dict[str, Any] = {"scope": {}, "spans": encoded}
            if scope is not None:
                entry["scope"] = {"name": scope.name}
                if scope.version:
                    entry["scope"]["version"] = scope.version
                if scope.schema_url:
                    entry["schemaUrl"] = scope.schema_url
            scope_spans.append(entry)
        block: dict[str, Any] = {
            "resource": {"attributes": _key_values(resource.attributes)},
            "scopeSpans": scope_spans,
        }
        if resource.schema_url:
            block["schemaUrl"] = resource.schema_url
        resource_spans.append(block)
    return {"resourceSpans": resource_spans}


class OtlpJsonSpanExporter(SpanExporter):
    """Writes spans as OTLP JSON, one ``ExportTraceServiceRequest`` per line (JSON Lines).

    The format of the OpenTelemetry Collector's file exporter (``format: json``), which its
    ``otlpjsonfile`` receiver reads back. Give a ``path``, or an open text ``stream`` (not
    closed at shutdown).

    ``path`` is written with :func:`events.open_output`: the spans go to a private temporary
    file (0600) that replaces any file at ``path`` at shutdown, whole. So a process that dies
    mid-run leaves no half file, and a file already there untouched; a path that is one of
    ``logs`` (the logs being written or read), a companion file of one, or any maker log is
    refused with :class:`events.OutputIsLogError` (here and again at shutdown), and a path that
    cannot be written raises :class:`OSError`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        stream: IO[str] | None = None,
        logs: Iterable[str | os.PathLike[str]] = (),
    ) -> None:
        if (path is None) == (stream is None):
            raise ConfigError("path", "give a path or a stream, not both and not neither")
        self._output: ExitStack | None = None
        self._out: IO[str]
        if path is not None:
            # Entered now, committed (renamed into place) at shutdown.
            output = ExitStack()
            self._out = output.enter_context(open_output(path, logs=logs))
            self._output = output
        else:
            assert stream is not None
            self._out = stream
        self._lock = threading.Lock()
        self._closed = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not spans:
            return SpanExportResult.SUCCESS
        line = _json.encode(spans_to_otlp_json(spans)).decode()
        with self._lock:
            if self._closed:
                return SpanExportResult.FAILURE
            self._out.write(line + "\n")
            self._out.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._output is not None:
                self._output.close()  # flushes, syncs and renames the file into place
            else:
                self._out.flush()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        with self._lock:
            if not self._closed:
                self._out.flush()
        return True


def _resource() -> Resource:
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win; "maker" only replaces the SDK's
    # "unknown_service" placeholder.
    resource = Resource.create()
    name = str(resource.attributes.get(SERVICE_NAME, ""))
    if not name or name.startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "maker"}))
    return resource


def _otlp_class() -> type[SpanExporter]:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise ConfigError("exporter", _OTLP_MISSING) from exc
    return OTLPSpanExporter


def _otlp_endpoint(endpoint: str | None, path: str) -> str | None:
    """An endpoint given as a URL, with the signal's ``path`` added when it names only a host
    (as the exporters do with ``OTEL_EXPORTER_OTLP_ENDPOINT``); None leaves it to them."""
    if endpoint is None:
        return None
    if not endpoint.startswith(("http://", "https://")):
        raise ConfigError("out", f"an otlp endpoint is an http(s) URL, got {endpoint!r}")
    scheme, _, rest = endpoint.partition("://")
    if "/" not in rest.rstrip("/"):
        return f"{scheme}://{rest.rstrip('/')}{path}"
    return endpoint


def signal_endpoint(base: str, signal: str) -> str:
    """The URL of one signal (``traces``, ``metrics``) at the OTLP/HTTP endpoint ``base``, read as
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` is: the signal's path appended to it.

    >>> signal_endpoint("http://127.0.0.1:4318", "traces")
    'http://127.0.0.1:4318/v1/traces'
    >>> signal_endpoint("https://collector.example/otlp/", "metrics")
    'https://collector.example/otlp/v1/metrics'
    """
    if not base.startswith(("http://", "https://")) or not base.partition("://")[2].strip("/"):
        raise ConfigError("exporter", f"an otlp endpoint is an http(s) URL, got {base!r}")
    return f"{base.rstrip('/')}/v1/{signal}"


def _otlp_exporter(endpoint: str | None) -> SpanExporter:
    exporter_class = _otlp_class()
    # The exporter's own constructor reads the rest of OTEL_EXPORTER_OTLP_* (headers, timeout,
    # compression, certificates) and, without an endpoint, the endpoint variables.
    url = _otlp_endpoint(endpoint, "/v1/traces")
    exporter: SpanExporter = exporter_class(endpoint=url)  # type: ignore[call-arg]
    return exporter


def _parse_exporter(
    exporter: str, out: str | os.PathLike[str] | None
) -> tuple[str, str | os.PathLike[str] | None]:
    kind, sep, target = exporter.partition(":")
    if kind == "otlp" and sep:
        if out is not None:
            raise ConfigError("exporter", "give the otlp endpoint once: otlp:URL or an out URL")
        return "otlp", signal_endpoint(target, "traces")
    if kind == "json" and sep:
        if out is not None:
            raise ConfigError("exporter", "give the json file once: json:FILE or an out path")
        if not target:
            raise ConfigError("exporter", "json:FILE needs a file name")
        return "json", target
    if sep or kind not in ("console", "otlp", "json"):
        raise ConfigError(
            "exporter", f"unknown exporter {exporter!r}; use console, otlp, otlp:URL or json:FILE"
        )
    if kind == "json" and out is None:
        raise ConfigError("exporter", "json needs a file: json:FILE, or an out path")
    return kind, out


def tracer_provider_for(
    exporter: str,
    out: str | os.PathLike[str] | None = None,
    *,
    stream: IO[str] | None = None,
    resource: Resource | None = None,
    logs: Iterable[str | os.PathLike[str]] = (),
) -> TracerProvider:
    """A tracer provider with deterministic ids and a batch processor that does not lose spans.

    ``exporter`` is ``"console"`` (spans as JSON to ``out``, ``stream``, or stdout),
    ``"otlp:URL"`` (OTLP/HTTP protobuf to the endpoint URL, read as
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` is: ``/v1/traces`` is appended), ``"otlp"``
    (OTLP/HTTP protobuf to ``out`` if given, an http(s) URL, else to
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` + ``/v1/traces``,
    else ``http://localhost:4318/v1/traces``; headers, timeout, compression and certificates come
    from the standard ``OTEL_EXPORTER_OTLP_*`` variables) or ``"json:FILE"`` / ``"json"`` with
    ``out`` (OTLP JSON lines, see :class:`OtlpJsonSpanExporter`). The otlp exporter needs
    ``pip install 'maker[otlp]'``; without it this raises :class:`maker.ConfigError`.

    A file (json's, or console's ``out``) is written with :func:`events.open_output`: it appears
    whole, mode 0600, when the provider shuts down, and a process that dies before leaves none.
    It may not be one of ``logs`` (pass the logs the traced run writes or reads) nor any other
    maker log: that raises :class:`events.OutputIsLogError`; a file that cannot be written
    raises :class:`maker.ConfigError`.

    The queue holds :data:`QUEUE_SIZE` spans; :class:`TraceSink` flushes synchronously when
    the backlog passes half of it, and :func:`provider_losses` tells, after a flush, how many
    ended spans the exporter never accepted. Shut the provider down when done (that flushes).
    """
    kind, target = _parse_exporter(exporter, out)
    close: Callable[[], None] | None = None
    inner: SpanExporter
    if kind == "otlp":
        inner = _otlp_exporter(None if target is None else os.fspath(target))
    elif kind == "json":
        assert target is not None
        try:
            inner = OtlpJsonSpanExporter(target, logs=logs)
        except OSError as exc:
            raise ConfigError("out", f"cannot write {os.fspath(target)}: {exc.strerror}") from exc
    else:
        if target is not None:
            output = ExitStack()
            try:
                handle = output.enter_context(open_output(target, logs=logs))
            except OSError as exc:
                raise ConfigError(
                    "out", f"cannot write {os.fspath(target)}: {exc.strerror}"
                ) from exc
            inner = ConsoleSpanExporter(out=handle)
            close = output.close  # renames the file into place
        else:
            inner = ConsoleSpanExporter(out=stream if stream is not None else sys.stdout)
    return _provider(inner, close, resource)


def _provider(
    inner: SpanExporter, close: Callable[[], None] | None, resource: Resource | None
) -> TracerProvider:
    """The provider of :func:`tracer_provider_for` around its exporter (``close`` is called
    after the exporter's shutdown)."""
    provider = TracerProvider(
        resource=resource if resource is not None else _resource(),
        id_generator=DeterministicIdGenerator(),
    )
    account = _Account(provider, QUEUE_SIZE // 2)
    _ACCOUNTS[provider] = account
    provider.add_span_processor(_Counting(account))
    provider.add_span_processor(
        BatchSpanProcessor(
            _CountingExporter(inner, account, close),
            max_queue_size=QUEUE_SIZE,
            max_export_batch_size=FLUSH_EVERY,
        )
    )
    return provider


async def export_log(
    path: str | os.PathLike[str],
    run_id: str | None = None,
    exporter: str = "console",
    out: str | os.PathLike[str] | None = None,
    *,
    capture_content: bool = False,
) -> int:
    """Export one run of a log (the only run when ``run_id`` is None) as spans; return how many.

    ``exporter`` and ``out`` are as in :func:`tracer_provider_for`. Spans are built and exported
    on a worker thread, so the event loop stays free (an OTLP receiver may share it). A file
    ``out`` appears whole (mode 0600) once every span is in it, and not at all when the export
    fails; it may not be the log at ``path`` nor any other log
    (:class:`events.OutputIsLogError`, raised before the log is read).
    """
    _, count = await _export_log(path, run_id, exporter, out, capture_content=capture_content)
    return count


async def _export_log(
    path: str | os.PathLike[str],
    run_id: str | None,
    exporter: str,
    out: str | os.PathLike[str] | None,
    *,
    capture_content: bool = False,
) -> tuple[str, int]:
    """:func:`export_log`, also returning the run id it exported."""
    # A bad exporter fails before the log is read (and before an output file is created).
    kind, target = _parse_exporter(exporter, out)
    if kind == "otlp":
        _otlp_class()
    with ExitStack() as output:
        stream: IO[str] | None = None
        if kind != "otlp" and target is not None:
            # The file appears whole when the export succeeds, and not at all when it fails;
            # it may not be the log read (nor any log): that is refused before reading.
            try:
                stream = output.enter_context(open_output(target, logs=(path,)))
            except OSError as exc:
                raise ConfigError(
                    "out", f"cannot write {os.fspath(target)}: {exc.strerror}"
                ) from exc
        if stream is None:
            provider = tracer_provider_for(exporter, out)
        elif kind == "json":
            provider = _provider(OtlpJsonSpanExporter(stream=stream), None, None)
        else:
            provider = _provider(ConsoleSpanExporter(out=stream), None, None)
        try:
            async with open_run(path, run_id) as run:
                info = run.info
                reading = aiter(run.events)

                async def next_batch() -> list[AnyEvent]:
                    batch: list[AnyEvent] = []
                    async for event in reading:
                        batch.append(event)
                        if len(batch) >= _READ_BATCH:
                            break
                    return batch

                def streamed() -> Iterator[AnyEvent]:
                    # The worker thread pulls the run from the loop a batch at a time: a
                    # run of any length is exported in bounded memory.
                    while batch := anyio.from_thread.run(next_batch):
                        yield from batch

                count = await anyio.to_thread.run_sync(
                    lambda: export_run(streamed(), provider, capture_content=capture_content)
                )
        finally:
            await anyio.to_thread.run_sync(provider.shutdown)
    return info.run_id, count


def configure_from_env(environ: Mapping[str, str] | None = None) -> TracerProvider | None:
    """A tracer provider from the standard ``OTEL_*`` variables, or None when they ask for none.

    Honoured: ``OTEL_SDK_DISABLED=true`` (none); ``OTEL_TRACES_EXPORTER`` = ``otlp`` (or
    ``otlp_proto_http``), ``console`` or ``none`` (only the first of a list); when it is unset,
    ``otlp`` if ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` is
    set, else none; ``OTEL_EXPORTER_OTLP_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``
    must be ``http/protobuf`` (the exporter maker ships). The exporter itself reads the
    endpoint, headers, timeout, compression and certificate variables; the provider reads
    ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_TRACES_SAMPLER`` (+``_ARG``);
    the batch processor ``OTEL_BSP_SCHEDULE_DELAY``. The queue size is maker's own.
    ``environ`` (default ``os.environ``) decides whether and what to export; the exporter and
    the SDK read their own settings from ``os.environ``. Metrics: :func:`metrics_from_env`.
    """
    kind = _env_exporter(os.environ if environ is None else environ, "TRACES")
    if kind is None:
        return None
    return tracer_provider_for(kind, stream=sys.stderr if kind == "console" else None)


# ---------------------------------------------------------------------------------------------
# Metrics providers


class _CountingMetricExporter(MetricExporter):
    """Passes exports to ``inner`` and counts the ones it failed, for :func:`metric_losses`."""

    def __init__(self, inner: MetricExporter, account: _MetricAccount) -> None:
        # The reader asks its exporter for these: the inner exporter's (OTLP's follow
        # OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE) must reach it through the wrapper.
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self._inner = inner
        self._account = account

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        self._account.exports += 1
        try:
            result = self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception:
            self._account.failed += 1
            raise
        if result is not MetricExportResult.SUCCESS:
            self._account.failed += 1
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)


def _otlp_metric_exporter(endpoint: str | None) -> MetricExporter:
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    except ImportError as exc:
        raise ConfigError("exporter", _OTLP_MISSING) from exc
    # As for spans, the exporter reads the rest of OTEL_EXPORTER_OTLP_(METRICS_)* itself.
    return OTLPMetricExporter(endpoint=_otlp_endpoint(endpoint, "/v1/metrics"))


def meter_provider_for(
    exporter: str,
    out: str | None = None,
    *,
    stream: IO[str] | None = None,
    resource: Resource | None = None,
) -> SdkMeterProvider:
    """A meter provider that exports a run's metrics periodically and at shutdown.

    ``exporter`` is ``"console"`` (metrics as JSON to ``stream``, default stdout) or ``"otlp"``
    (OTLP/HTTP protobuf to ``out`` if given, an http(s) URL, else to
    ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` + ``/v1/metrics``,
    else ``http://localhost:4318/v1/metrics``; headers, timeout, compression, certificates
    and the temporality preference come from the standard ``OTEL_EXPORTER_OTLP_*`` variables;
    it needs ``pip install 'maker[otlp]'``). Metrics are exported every
    ``OTEL_METRIC_EXPORT_INTERVAL`` ms (60,000 by default) and once more, all of them, when the
    provider shuts down: shut it down when the run is over, also after a failure or an
    interruption. :func:`metric_losses` tells, after that, how many exports failed. The resource
    is as for spans (``service.name`` ``maker`` unless ``OTEL_SERVICE_NAME`` or
    ``OTEL_RESOURCE_ATTRIBUTES`` name one).
    """
    inner: MetricExporter
    if exporter == "otlp":
        inner = _otlp_metric_exporter(out)
    elif exporter == "console" and out is None:
        inner = ConsoleMetricExporter(out=stream if stream is not None else sys.stdout)
    else:
        raise ConfigError("exporter", f"unknown metrics exporter {exporter!r}; use console or otlp")
    account = _MetricAccount()
    reader = PeriodicExportingMetricReader(_CountingMetricExporter(inner, account))
    provider = SdkMeterProvider(
        metric_readers=[reader],
        resource=resource if resource is not None else _resource(),
        # Shut down by whoever runs the run (the CLI does, also on Ctrl-C), not at exit, when
        # the exporter's session may already be gone.
        shutdown_on_exit=False,
    )
    _METRIC_ACCOUNTS[provider] = account
    return provider


def metrics_from_env(
    environ: Mapping[str, str] | None = None,
    *,
    default: str | None = None,
    endpoint: str | None = None,
) -> SdkMeterProvider | None:
    """A meter provider from the standard ``OTEL_*`` variables, or None when they ask for none.

    Honoured: ``OTEL_SDK_DISABLED=true`` (none); ``OTEL_METRICS_EXPORTER`` = ``otlp`` (or
    ``otlp_proto_http``), ``console`` (on stderr) or ``none`` (only the first of a list); when
    it is unset, ``default`` if given (``maker run --otel otlp`` or ``console`` passes its own
    exporter), else ``otlp`` if ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` or
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, else none; the protocol variables must say
    ``http/protobuf``. See :func:`meter_provider_for` for what the exporter and reader read.
    ``endpoint`` (``maker run --otel otlp:URL``'s URL) is the OTLP endpoint to send them to,
    read as ``OTEL_EXPORTER_OTLP_ENDPOINT`` is, when they go over OTLP.
    """
    env = os.environ if environ is None else environ
    if default is not None and not env.get("OTEL_METRICS_EXPORTER", "").strip():
        kind: str | None = default
        if kind == "otlp":
            _check_protocol(env, "METRICS")
    else:
        kind = _env_exporter(env, "METRICS")
    if kind is None:
        return None
    url = signal_endpoint(endpoint, "metrics") if kind == "otlp" and endpoint else None
    return meter_provider_for(kind, url, stream=sys.stderr if kind == "console" else None)
