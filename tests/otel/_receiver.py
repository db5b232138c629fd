"""A real OTLP/HTTP receiver for tests: POST /v1/traces and /v1/metrics, protobuf bodies.

It listens on 127.0.0.1 on an ephemeral port and decodes what arrives with the
opentelemetry-proto classes (the ones the exporter encodes with), so a test reads what a
collector would have received, from this process's exporters or from a ``maker`` subprocess.
"""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric, ResourceMetrics, ScopeMetrics
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan


@dataclass
class Receiver:
    """What the receiver was sent; ``status`` is the one it answers with (200 keeps what came)."""

    url: str
    status: int = 200
    requests: int = 0
    spans: list[PbSpan] = field(default_factory=list)
    metric_requests: list[ExportMetricsServiceRequest] = field(default_factory=list)

    def metrics(self) -> Iterator[tuple[ResourceMetrics, ScopeMetrics, Metric]]:
        """Every metric received, with the resource and scope it came under."""
        for request in self.metric_requests:
            for resource in request.resource_metrics:
                for scope in resource.scope_metrics:
                    for metric in scope.metrics:
                        yield resource, scope, metric


def value(any_value: AnyValue) -> Any:
    """An attribute's value as Python."""
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return tuple(value(v) for v in any_value.array_value.values)
    return getattr(any_value, kind) if kind is not None else None


def attributes(pairs: Any) -> dict[str, Any]:
    """OTLP key-values (a span's, a data point's, a resource's) as a dict."""
    found: dict[str, Any] = {}
    pair: KeyValue
    for pair in pairs:
        found[pair.key] = value(pair.value)
    return found


def _body(request_body: bytes, encoding: str | None) -> bytes:
    return gzip.decompress(request_body) if encoding == "gzip" else request_body


@asynccontextmanager
async def otlp_receiver(status: int = 200) -> AsyncIterator[Receiver]:
    """An OTLP/HTTP endpoint on 127.0.0.1 that decodes protobuf bodies and keeps what came."""
    got = Receiver(url="", status=status)

    async def traces(request: web.Request) -> web.Response:
        body = _body(await request.read(), request.headers.get("Content-Encoding"))
        message = ExportTraceServiceRequest.FromString(body)
        got.requests += 1
        if got.status == 200:
            for resource in message.resource_spans:
                for scope in resource.scope_spans:
                    got.spans.extend(scope.spans)
        return web.Response(
            status=got.status,
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    async def metrics(request: web.Request) -> web.Response:
        body = _body(await request.read(), request.headers.get("Content-Encoding"))
        message = ExportMetricsServiceRequest.FromString(body)
        got.requests += 1
        if got.status == 200:
            got.metric_requests.append(message)
        return web.Response(
            status=got.status,
            body=ExportMetricsServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    app.router.add_post("/v1/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    got.url = f"http://{host}:{port}"
    try:
        yield got
    finally:
        await runner.cleanup()
