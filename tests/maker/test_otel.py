"""OpenTelemetry: the live span tree of a run, its export from the log, exporters and metrics."""

from __future__ import annotations

import base64
import json
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from click.testing import CliRunner
from google.protobuf import json_format  # type: ignore[import-untyped]
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from events import (
    AnyEvent,
    RedFlagged,
    RunFinished,
    RunResumed,
    RunStarted,
    SampleCancelled,
    SampleFailed,
    SampleReceived,
    SampleRequested,
    StateChanged,
    StepAbandoned,
    StepDecided,
    StepStarted,
    VoteCounted,
)
from maker import (
    ClientError,
    ConfigError,
    Engine,
    MakerError,
    Policy,
    Recording,
    RunResult,
    SampleRequest,
    SimConfig,
    SimulatedModel,
)
from maker.apps._telemetry import otel_sink_for
from maker.apps.cli._otel_cli import export_otel_command
from maker.otel._otel import (
    STEP_SPAN,
    TraceSink,
    content_digest,
    export_run,
    provider_losses,
    span_id_for,
    trace_id_for,
)
from maker.otel._sdk import (
    DeterministicIdGenerator,
    configure_from_env,
    export_log,
    tracer_provider_for,
)
from maker.tasks import Hanoi

from ..otel._receiver import otlp_receiver
from ._fakes import Count, Reply, ScriptedClient, correct, read_events

pytestmark = pytest.mark.anyio

NOISY = SimConfig(p=0.9, malformed_rate=0.05, overlong_rate=0.05)
OTLP_MODULE = "opentelemetry.exporter.otlp.proto.http.trace_exporter"


def ns(ts: float) -> int:
    return int(ts * 1_000_000_000)


def memory_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(id_generator=DeterministicIdGenerator(), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@dataclass
class Traced:
    result: RunResult
    events: list[AnyEvent]
    spans: tuple[ReadableSpan, ...]


async def traced_run(
    path: Path,
    *,
    client: Any = None,
    task: Any = None,
    policy: Policy | None = None,
    capture_content: bool = False,
    meter_provider: MeterProvider | None = None,
) -> Traced:
    provider, exporter = memory_provider()
    sink = TraceSink(provider, meter_provider, capture_content=capture_content)
    async with Engine(log=path, client=client or SimulatedModel(NOISY)) as engine:
        result = await engine.run(
            task if task is not None else Hanoi(4),
            policy=policy or Policy(k=3, speculative=1),
            seed=0,
            sinks=[sink],
        )
    events = await read_events(path, result.run_id)
    return Traced(result, events, exporter.get_finished_spans())


Shape = tuple[Any, ...]


def shape(span: ReadableSpan) -> Shape:
    """Everything a span says, in comparable form."""
    context = span.get_span_context()
    assert context is not None
    return (
        context.trace_id,
        context.span_id,
        span.parent.span_id if span.parent is not None else None,
        span.name,
        span.kind,
        span.start_time,
        span.end_time,
        dict(span.attributes or {}),
        [(e.name, dict(e.attributes or {}), e.timestamp) for e in span.events],
        (span.status.status_code, span.status.description),
        [
            (link.context.trace_id, link.context.span_id, dict(link.attributes or {}))
            for link in span.links
        ],
    )


def tree(spans: Sequence[ReadableSpan]) -> dict[int, Shape]:
    out = {}
    for span in spans:
        context = span.get_span_context()
        assert context is not None
        out[context.span_id] = shape(span)
    assert len(out) == len(spans), "span ids repeat"
    return out


def span_id(span: ReadableSpan) -> int:
    context = span.get_span_context()
    assert context is not None
    return context.span_id


def by_sample(spans: Sequence[ReadableSpan]) -> dict[str, ReadableSpan]:
    found = {}
    for span in spans:
        if span.kind is SpanKind.CLIENT:
            assert span.attributes is not None
            found[str(span.attributes["maker.sample_id"])] = span
    return found


# -- the live tree -------------------------------------------------------------------------------


async def test_a_live_run_gives_one_trace_of_run_step_and_sample_spans(tmp_path: Path) -> None:
    run = await traced_run(tmp_path / "log.db")
    result, events, spans = run.result, run.events, run.spans
    assert result.ok
    assert result.red_flags > 0
    assert result.cancelled_samples > 0
    run_id = result.run_id

    assert len(spans) == 1 + result.steps + result.samples
    assert {s.get_span_context().trace_id for s in spans} == {trace_id_for(run_id)}  # type: ignore[union-attr]

    started = events[0]
    finished = events[-1]
    assert isinstance(started, RunStarted)
    assert isinstance(finished, RunFinished)
    roots = [s for s in spans if s.parent is None]
    assert len(roots) == 1
    root = roots[0]
    assert (root.name, root.kind) == ("maker.run hanoi", SpanKind.INTERNAL)
    assert span_id(root) == span_id_for(run_id, started.seq)
    assert (root.start_time, root.end_time) == (ns(started.ts), ns(finished.ts))
    assert root.attributes is not None
    assert root.attributes["maker.k"] == 3
    assert root.attributes["maker.status"] == "succeeded"
    assert root.attributes["maker.steps"] == result.steps
    assert root.status.status_code is StatusCode.UNSET

    steps = {
        int((s.attributes or {})["maker.step"]): s  # type: ignore[arg-type]
        for s in spans
        if s.name == "maker.step"
    }
    assert sorted(steps) == list(range(result.steps))
    step_started = {e.step: e for e in events if isinstance(e, StepStarted)}
    state_changed = {e.step: e for e in events if isinstance(e, StateChanged)}
    decided = {e.step: e for e in events if isinstance(e, StepDecided)}
    for number, step in steps.items():
        assert step.kind is SpanKind.INTERNAL
        assert step.parent is not None
        assert step.parent.span_id == span_id(root)
        assert span_id(step) == span_id_for(run_id, step_started[number].seq)
        assert step.start_time == ns(step_started[number].ts)
        assert step.end_time == ns(state_changed[number].ts)
        assert step.attributes is not None
        assert step.attributes["maker.step"] == number
        # Answers are content: digests unless content is captured (see the content tests).
        assert step.attributes["maker.winner"] == content_digest(decided[number].winner)
        assert json.loads(str(step.attributes["maker.votes"])) == {
            content_digest(answer): n for answer, n in decided[number].votes.items()
        }
        assert step.attributes["maker.samples"] == decided[number].samples
        votes = [*sorted(decided[number].votes.values(), reverse=True), 0]
        assert step.attributes["maker.lead"] == votes[0] - votes[1] == 3
        assert root.start_time <= step.start_time <= step.end_time <= root.end_time  # type: ignore[operator]

    samples = by_sample(spans)
    requested = {e.sample_id: e for e in events if isinstance(e, SampleRequested)}
    assert sorted(samples) == sorted(requested)
    received = {e.sample_id: e for e in events if isinstance(e, SampleReceived)}
    voted = {e.sample_id: e for e in events if isinstance(e, VoteCounted)}
    flagged = {e.sample_id: e for e in events if isinstance(e, RedFlagged)}
    cancelled = {e.sample_id: e for e in events if isinstance(e, SampleCancelled)}
    assert flagged
    assert cancelled
    for sample_id, span in samples.items():
        request = requested[sample_id]
        attrs = span.attributes
        assert attrs is not None
        assert (span.name, span.kind) == ("chat sim", SpanKind.CLIENT)
        assert span_id(span) == span_id_for(run_id, request.seq)
        step = steps[request.step]
        assert span.parent is not None
        assert span.parent.span_id == span_id(step)
        assert attrs["gen_ai.operation.name"] == "chat"
        assert attrs["gen_ai.provider.name"] == "maker.sim"
        assert attrs["gen_ai.request.model"] == "sim"
        assert attrs["gen_ai.request.temperature"] == request.temperature
        assert attrs["gen_ai.request.max_tokens"] == 1000
        assert "maker.step" not in attrs  # its parent's, and its id's prefix
        assert span.start_time == ns(request.ts)
        assert step.start_time <= span.start_time <= span.end_time <= step.end_time  # type: ignore[operator]
        names = [e.name for e in span.events]
        if sample_id in received:
            answer = received[sample_id]
            assert span.end_time == ns(answer.ts)
            assert attrs["gen_ai.usage.input_tokens"] == answer.input_tokens
            assert attrs["gen_ai.usage.output_tokens"] == answer.output_tokens
            assert attrs["gen_ai.response.finish_reasons"] == (answer.finish_reason,)
        if sample_id in voted:
            assert attrs["maker.candidate"] == content_digest(voted[sample_id].candidate)
        if sample_id in flagged:
            assert attrs["maker.red_flag.reason"] == flagged[sample_id].reason
            assert names == ["maker.red_flag"]
            assert span.events[0].attributes == {"maker.red_flag.reason": flagged[sample_id].reason}
        if sample_id in cancelled:
            assert span.end_time == ns(cancelled[sample_id].ts)
            assert attrs["maker.cancelled"] == "decided"
            assert names == ["maker.cancelled"]
        assert span.status.status_code is StatusCode.UNSET


async def test_exporting_the_log_gives_the_live_tree_exactly_and_the_same_ids_twice(
    tmp_path: Path,
) -> None:
    run = await traced_run(tmp_path / "log.db")
    live = tree(run.spans)

    provider, exporter = memory_provider()
    assert export_run(run.events, provider) == len(run.spans)
    assert tree(exporter.get_finished_spans()) == live

    again, exporter_again = memory_provider()
    export_run(run.events, again)
    assert tree(exporter_again.get_finished_spans()) == live

    # The async path, through the log file and a real exporter, gives the same count.
    out = tmp_path / "spans.jsonl"
    assert await export_log(tmp_path / "log.db", None, "json", out) == len(run.spans)


async def test_a_run_span_is_a_root_unless_a_parent_context_is_given(tmp_path: Path) -> None:
    provider, exporter = memory_provider()
    tracer = provider.get_tracer("caller")
    with tracer.start_as_current_span("caller's request") as outer:
        async with Engine(log=tmp_path / "a.db", client=SimulatedModel(preset="ideal")) as engine:
            await engine.run(Hanoi(2), policy=Policy(k=1), sinks=[TraceSink(provider)])
            parent = trace.set_span_in_context(outer, Context())
            sink = TraceSink(provider, parent_context=parent)
            await engine.run(Hanoi(2), policy=Policy(k=1), sinks=[sink])
    runs = [s for s in exporter.get_finished_spans() if s.name == "maker.run hanoi"]
    assert runs[0].parent is None
    assert runs[1].parent is not None
    assert runs[1].parent.span_id == outer.get_span_context().span_id
    assert runs[1].get_span_context().trace_id == outer.get_span_context().trace_id  # type: ignore[union-attr]


# -- failures, content, resumption ---------------------------------------------------------------


async def test_retries_are_span_events_and_a_final_failure_is_an_error_with_its_type(
    tmp_path: Path,
) -> None:
    def flaky(request: SampleRequest, attempt: int) -> Reply:
        if request.sample_id == "0:1" and attempt < 3:
            return ClientError("busy", kind="rate_limited", retryable=True, retry_after=0.0)
        return correct(request, attempt)

    run = await traced_run(
        tmp_path / "ok.db", client=ScriptedClient(flaky), task=Count(1), policy=Policy(k=2)
    )
    assert run.result.ok
    assert run.result.failures == 2
    sample = by_sample(run.spans)["0:1"]
    retries = [e for e in sample.events if e.name == "maker.retry"]
    assert [(e.attributes or {}).get("maker.attempt") for e in retries] == [1, 2]
    assert all((e.attributes or {}).get("error.type") == "rate_limited" for e in retries)
    failed = [e for e in run.events if isinstance(e, SampleFailed)]
    assert [e.timestamp for e in retries] == [ns(f.ts) for f in failed]
    assert sample.attributes is not None
    assert sample.attributes["maker.attempts"] == 2
    assert "error.type" not in sample.attributes  # it succeeded in the end
    assert sample.status.status_code is StatusCode.UNSET
    assert sample.attributes["gen_ai.provider.name"] == "maker.fake"

    def broken(request: SampleRequest, attempt: int) -> Reply:
        if request.sample_id == "0:1":
            return ClientError("invalid api key", kind="auth", retryable=False)
        return correct(request, attempt)

    run = await traced_run(
        tmp_path / "failed.db", client=ScriptedClient(broken), task=Count(1), policy=Policy(k=2)
    )
    assert run.result.status == "failed"
    sample = by_sample(run.spans)["0:1"]
    assert sample.attributes is not None
    assert sample.attributes["error.type"] == "auth"
    assert sample.status.status_code is StatusCode.ERROR
    assert sample.status.description == "auth: invalid api key"
    root = next(s for s in run.spans if s.parent is None)
    assert root.status.status_code is StatusCode.ERROR
    assert root.status.description == run.result.reason
    step = next(s for s in run.spans if (s.attributes or {}).get("maker.step") == 0)
    assert step.status.status_code is StatusCode.ERROR
    provider, exporter = memory_provider()
    export_run(run.events, provider)
    assert tree(exporter.get_finished_spans()) == tree(run.spans)


def texts_in(spans: Sequence[ReadableSpan]) -> list[str]:
    """Every string value in every attribute and event attribute of the spans."""
    found: list[str] = []

    def add(values: Any) -> None:
        for value in (values or {}).values():
            items = value if isinstance(value, tuple | list) else (value,)
            found.extend(str(item) for item in items)

    for span in spans:
        add(span.attributes)
        for event in span.events:
            add(event.attributes)
        add(span.resource.attributes)
    return found


async def test_no_prompt_or_response_text_in_any_span_unless_content_capture_is_on(
    tmp_path: Path,
) -> None:
    run = await traced_run(tmp_path / "plain.db")
    responses = [e.text for e in run.events if isinstance(e, SampleReceived)]
    task = Hanoi(4)
    prompt = task.prompt(task.initial_state())
    markers = ["move = [", "next_state = [", "Following the procedure", "Previous move:"]
    secrets = [*responses, prompt.system, prompt.user, *markers]
    provider, exporter = memory_provider()
    export_run(run.events, provider)
    for spans in (run.spans, exporter.get_finished_spans()):
        values = texts_in(spans)
        assert values, "no attributes at all"
        leaks = [v for v in values for s in secrets if s in v]
        assert leaks == []

    captured = await traced_run(tmp_path / "captured.db", capture_content=True)
    samples = by_sample(captured.spans)
    for event in captured.events:
        if isinstance(event, SampleReceived):
            attrs = samples[event.sample_id].attributes
            assert attrs is not None
            messages = json.loads(str(attrs["gen_ai.output.messages"]))
            assert messages[0]["role"] == "assistant"
            assert messages[0]["parts"] == [{"type": "text", "content": event.text}]
    values = texts_in(captured.spans)
    assert not [v for v in values for s in (prompt.system, prompt.user) if s in v]


async def test_a_cancelled_then_resumed_run_is_one_trace_with_a_linked_second_root(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log.db"
    first, first_spans = memory_provider()
    client = ScriptedClient(hold={"2:0", "2:1"})
    async with Engine(log=path, client=client) as engine, anyio.create_task_group() as tg:

        async def go() -> None:
            await engine.run(
                Count(4), policy=Policy(k=2), seed=1, run_id="r1", sinks=[TraceSink(first)]
            )

        tg.start_soon(go)
        await client.all_held.wait()
        tg.cancel_scope.cancel()
    second, second_spans = memory_provider()
    async with Engine(log=path, client=ScriptedClient()) as engine:
        recording = Recording(await read_events(path, "r1"))
        result = await engine.resume(Count(4), recording, sinks=[TraceSink(second)])
    assert result.ok
    events = await read_events(path, "r1")
    resumed = next(e for e in events if isinstance(e, RunResumed))

    provider, exporter = memory_provider()
    count = export_run(events, provider)
    exported = exporter.get_finished_spans()
    assert count == len(exported)
    whole = tree(exported)
    assert {s[0] for s in whole.values()} == {trace_id_for("r1")}
    roots = [s for s in exported if s.parent is None]
    assert [span_id(r) for r in roots] == [span_id_for("r1", 0), span_id_for("r1", resumed.seq)]
    assert roots[1].attributes is not None
    assert roots[1].attributes["maker.resumed"] is True
    assert [link.context.span_id for link in roots[1].links] == [span_id(roots[0])]
    assert roots[0].attributes is not None
    assert roots[0].attributes["maker.status"] == "cancelled"
    # The cut step and its samples appear in both parts, each under its own run span.
    step2 = [
        s for s in exported if s.name == "maker.step" and (s.attributes or {})["maker.step"] == 2
    ]
    assert [s.parent.span_id for s in step2 if s.parent] == [span_id(r) for r in roots]
    samples = [s for s in exported if (s.attributes or {}).get("maker.sample_id") == "2:0"]
    assert len(samples) == 2
    assert (samples[0].attributes or {})["maker.cancelled"] == "run_cancelled"
    assert {s.parent.span_id for s in samples if s.parent} == {span_id(s) for s in step2}
    assert {s.name for s in exported if s.kind is SpanKind.INTERNAL} == {
        "maker.run count",
        "maker.step",
    }
    steps = {(s.attributes or {})["maker.step"] for s in exported if s.name == "maker.step"}
    assert steps == set(range(4))
    # Every span lies within its parent.
    for span in exported:
        if span.parent is not None:
            parent = whole[span.parent.span_id]
            assert parent[5] <= span.start_time <= span.end_time <= parent[6]  # type: ignore[operator]

    # The live trace of the first part is the export's first part, exactly.
    live_first = tree(first_spans.get_finished_spans())
    assert live_first
    assert all(whole[key] == value for key, value in live_first.items())
    # A live sink on the resumption sees the prefix again: the same spans with the same ids,
    # except the part it could not see end (the run span, the cut step and its samples).
    live_second = tree(second_spans.get_finished_spans())
    cut = {span_id(roots[0]), span_id(step2[0])} | {
        span_id(s)
        for s in exported
        if (s.attributes or {}).get("maker.cancelled") == "run_cancelled"
    }
    assert set(live_second) == set(whole)
    assert {k for k, v in live_second.items() if whole[k] != v} == cut
    export_again, exporter_again = memory_provider()
    export_run(events, export_again)
    assert tree(exporter_again.get_finished_spans()) == whole


# -- exporters -----------------------------------------------------------------------------------


async def test_spans_sent_over_otlp_http_all_arrive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = await traced_run(tmp_path / "log.db")
    expected = {span_id(s) for s in run.spans}
    async with otlp_receiver() as receiver:
        # The exporter blocks its thread; the receiver lives on this loop.
        provider = tracer_provider_for("otlp", f"{receiver.url}/v1/traces")
        count = await anyio.to_thread.run_sync(export_run, run.events, provider)
        await anyio.to_thread.run_sync(provider.shutdown)
        assert count == len(expected)
        assert {int.from_bytes(s.span_id, "big") for s in receiver.spans} == expected
        assert len(receiver.spans) == len(expected)
        assert {s.trace_id for s in receiver.spans} == {
            trace_id_for(run.result.run_id).to_bytes(16, "big")
        }
        clients = [s for s in receiver.spans if s.kind == PbSpan.SpanKind.SPAN_KIND_CLIENT]
        assert len(clients) == run.result.samples

        # The standard variables alone are enough.
        received = len(receiver.spans)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
        from_env = configure_from_env()
        assert from_env is not None
        await anyio.to_thread.run_sync(export_run, run.events, from_env)
        await anyio.to_thread.run_sync(from_env.shutdown)
        assert len(receiver.spans) - received == len(expected)

        # A collector that refuses them: the shortfall is an error, not silence.
        receiver.status = 400
        refused = tracer_provider_for("otlp", receiver.url)  # the /v1/traces path is added
        with pytest.raises(MakerError, match=rf"{len(expected)} of {len(expected)} spans"):
            await anyio.to_thread.run_sync(export_run, run.events, refused)
        await anyio.to_thread.run_sync(refused.shutdown)
        losses = provider_losses(refused)
        assert losses is not None
        assert losses.lost == len(expected)


def hex_to_base64(data: Any) -> Any:
    """OTLP JSON's hex ids turned into protobuf JSON's base64, for ``json_format.Parse``."""
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            if key in ("traceId", "spanId", "parentSpanId") and isinstance(value, str):
                out[key] = base64.b64encode(bytes.fromhex(value)).decode()
            else:
                out[key] = hex_to_base64(value)
        return out
    if isinstance(data, list):
        return [hex_to_base64(v) for v in data]
    return data


async def test_the_json_exporter_writes_otlp_json_lines_the_protobuf_encoder_agrees_with(
    tmp_path: Path,
) -> None:
    run = await traced_run(
        tmp_path / "log.db",
        client=ScriptedClient(
            lambda r, a: (
                ClientError("x", kind="timeout", retryable=True) if a == 1 else correct(r, a)
            )
        ),
        task=Count(3),
        policy=Policy(k=2, speculative=1),
    )
    out = tmp_path / "spans.jsonl"
    provider = tracer_provider_for(f"json:{out}")
    count = export_run(run.events, provider)
    provider.shutdown()
    lines = out.read_text().splitlines()
    assert lines
    assert count == len(run.spans)
    parsed: list[PbSpan] = []
    for line in lines:
        data = json.loads(line)
        spans = [
            span
            for resource in data["resourceSpans"]
            for scope in resource["scopeSpans"]
            for span in scope["spans"]
        ]
        for span in spans:
            assert re.fullmatch(r"[0-9a-f]{32}", span["traceId"])
            assert re.fullmatch(r"[0-9a-f]{16}", span["spanId"])
            assert isinstance(span["startTimeUnixNano"], str)
            assert span["kind"] in (1, 3)
        assert data["resourceSpans"][0]["scopeSpans"][0]["scope"]["name"] == "maker"
        message = json_format.Parse(json.dumps(hex_to_base64(data)), ExportTraceServiceRequest())
        parsed.extend(s for r in message.resource_spans for s in r.scope_spans for s in s.spans)
    assert len(parsed) == count
    # Span for span, the same message the SDK's protobuf encoder (OTLP/HTTP's) builds.
    memory, exporter = memory_provider()
    export_run(run.events, memory)
    encoded = encode_spans(list(exporter.get_finished_spans()))
    expected = {
        s.span_id: s for r in encoded.resource_spans for c in r.scope_spans for s in c.spans
    }
    assert {s.span_id: s for s in parsed} == expected
    retried = [s for s in parsed if any(e.name == "maker.retry" for e in s.events)]
    assert retried


async def test_bulk_export_of_a_ten_disk_run_loses_no_span(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    async with Engine(log=path, client=SimulatedModel(preset="paper")) as engine:
        result = await engine.run(Hanoi(10), policy=Policy(k=3), seed=0)
    events = await read_events(path, result.run_id)
    expected = 1 + result.steps + result.samples
    assert expected > 4000

    # A batch queue far smaller than the run, and a worker that never wakes on its own:
    # only flushing chunk by chunk keeps every span.
    exporter = InMemorySpanExporter()
    provider = TracerProvider(id_generator=DeterministicIdGenerator(), shutdown_on_exit=False)
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter, max_queue_size=64, max_export_batch_size=32, schedule_delay_millis=600_000
        )
    )
    assert export_run(events, provider, flush_every=32) == expected
    assert len(tree(exporter.get_finished_spans())) == expected
    provider.shutdown()

    out = tmp_path / "bulk.jsonl"
    assert await export_log(path, result.run_id, "json", out) == expected
    spans = [
        span
        for line in out.read_text().splitlines()
        for resource in json.loads(line)["resourceSpans"]
        for scope in resource["scopeSpans"]
        for span in scope["spans"]
    ]
    assert len({s["spanId"] for s in spans}) == len(spans) == expected


# -- metrics, CLI, configuration -----------------------------------------------------------------


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            if scope.scope.name == "maker":
                for metric in scope.metrics:
                    found[f"{metric.name} {metric.unit}"] = list(metric.data.data_points)
    return found


async def test_metrics_count_samples_red_flags_failures_tokens_and_votes(tmp_path: Path) -> None:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    run = await traced_run(tmp_path / "log.db", meter_provider=meters)
    result = run.result
    points = metric_points(reader)
    assert sum(p.value for p in points["maker.samples {sample}"]) == result.samples
    flags = {
        p.attributes["maker.red_flag.reason"]: p.value for p in points["maker.red_flags {red_flag}"]
    }
    assert flags == result.red_flags_by_reason
    tokens = {p.attributes["gen_ai.token.type"]: p.value for p in points["maker.tokens {token}"]}
    assert tokens == {"input": result.input_tokens, "output": result.output_tokens}
    [votes] = points["maker.votes_per_step {vote}"]
    assert (votes.count, votes.sum) == (result.steps, result.votes)
    assert "maker.failures {failure}" not in points

    def flaky(request: SampleRequest, attempt: int) -> Reply:
        if attempt == 1 and request.sample_id.endswith(":0"):
            return ClientError("slow", kind="timeout", retryable=True)
        return correct(request, attempt)

    await traced_run(
        tmp_path / "flaky.db",
        client=ScriptedClient(flaky),
        task=Count(3),
        policy=Policy(k=1),
        meter_provider=meters,
    )
    points = metric_points(reader)
    failures = {p.attributes["error.type"]: p.value for p in points["maker.failures {failure}"]}
    assert failures == {"timeout": 3}
    meters.shutdown()


def test_export_otel_command_writes_json_and_reports_one_line(tmp_path: Path) -> None:
    path = tmp_path / "log.db"

    async def record() -> RunResult:
        async with Engine(log=path, client=SimulatedModel(preset="ideal")) as engine:
            return await engine.run(Hanoi(3), policy=Policy(k=2), run_id="cli-run")

    result = anyio.run(record)
    out = tmp_path / "spans.jsonl"
    runner = CliRunner()
    done = runner.invoke(export_otel_command, [str(path), "--exporter", "json", "--out", str(out)])
    assert done.exit_code == 0, done.output
    expected = 1 + result.steps + result.samples
    assert done.stderr.strip() == (
        f"exported {expected} spans of run cli-run (trace {trace_id_for('cli-run'):032x}) to {out}"
    )
    first = out.read_bytes()
    assert (
        runner.invoke(
            export_otel_command,
            [str(path), "--run", "cli", "--exporter", "json", "--out", str(out)],
        ).exit_code
        == 0
    )
    assert out.read_bytes() == first  # same ids, same times: the same file

    console = runner.invoke(export_otel_command, [str(path)])
    assert console.exit_code == 0
    assert console.stdout.count('"name": "chat sim"') == result.samples

    missing = runner.invoke(export_otel_command, [str(path), "--exporter", "json"])
    assert missing.exit_code == 2
    assert "--exporter json needs --out PATH" in missing.output


def test_a_missing_otlp_package_is_a_one_line_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, OTLP_MODULE, None)  # the import now fails
    with pytest.raises(ConfigError) as caught:
        tracer_provider_for("otlp")
    message = str(caught.value)
    assert "\n" not in message
    assert "pip install 'maker[otlp]'" in message
    with pytest.raises(ConfigError, match=r"maker\[otlp\]"):
        otel_sink_for("otlp")
    done = CliRunner().invoke(export_otel_command, [str(tmp_path / "any.db"), "--exporter", "otlp"])
    assert done.exit_code != 0
    touch = tmp_path / "log.db"
    touch.write_bytes(b"")
    done = CliRunner().invoke(export_otel_command, [str(touch), "--exporter", "otlp"])
    assert isinstance(done.exception, ConfigError)


async def test_otel_sink_for_traces_a_run_live_to_a_json_file(tmp_path: Path) -> None:
    out = tmp_path / "live.jsonl"
    sink, close = otel_sink_for(f"json:{out}")
    async with Engine(log=tmp_path / "log.db", client=SimulatedModel(preset="ideal")) as engine:
        result = await engine.run(Hanoi(3), policy=Policy(k=2), sinks=[sink])
    close()
    spans = [
        span
        for line in out.read_text().splitlines()
        for resource in json.loads(line)["resourceSpans"]
        for scope in resource["scopeSpans"]
        for span in scope["spans"]
    ]
    assert len(spans) == 1 + result.steps + result.samples
    assert {s["traceId"] for s in spans} == {f"{trace_id_for(result.run_id):032x}"}

    for bad in ("json", "jaeger", "console:x"):
        with pytest.raises(ConfigError) as caught:
            otel_sink_for(bad)
        assert str(caught.value).startswith("otel: ")


def test_configure_from_env_follows_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_SDK_DISABLED",
    ):
        monkeypatch.delenv(name, raising=False)
    assert configure_from_env() is None
    assert configure_from_env({"OTEL_TRACES_EXPORTER": "none"}) is None
    assert (
        configure_from_env({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"}) is None
    )
    console = configure_from_env({"OTEL_TRACES_EXPORTER": "console"})
    assert isinstance(console, TracerProvider)
    assert isinstance(console.id_generator, DeterministicIdGenerator)
    assert console.resource.attributes["service.name"] == "maker"
    console.shutdown()
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER"):
        configure_from_env({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ConfigError, match="http/protobuf"):
        configure_from_env(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            }
        )
    monkeypatch.setenv("OTEL_SERVICE_NAME", "planner")
    named = configure_from_env({"OTEL_TRACES_EXPORTER": "console"})
    assert named is not None
    assert named.resource.attributes["service.name"] == "planner"
    named.shutdown()


def test_ids_derive_from_the_run_id_and_seq_and_are_never_zero() -> None:
    assert trace_id_for("r") == int.from_bytes(
        __import__("hashlib").blake2b(b"r").digest()[:16], "big"
    )
    assert span_id_for("r", 7) == int.from_bytes(
        __import__("hashlib").blake2b(b"r:7").digest()[:8], "big"
    )
    ids = Counter(span_id_for("r", seq) for seq in range(10_000))
    assert max(ids.values()) == 1
    assert 0 not in ids
    generator = DeterministicIdGenerator()
    generator.prime(5, 6)
    assert (generator.generate_trace_id(), generator.generate_span_id()) == (5, 6)
    assert generator.generate_span_id() not in (0, 6)  # random once the primed id is used


# -- content ---------------------------------------------------------------------------------


def _everything(spans: Sequence[ReadableSpan], reader: InMemoryMetricReader) -> str:
    """Every span (names, attributes, events) and every metric point, as one text."""
    parts = []
    for span in spans:
        parts.append(span.name)
        parts.append(json.dumps(dict(span.attributes or {}), default=str))
        for event in span.events:
            parts.append(event.name + json.dumps(dict(event.attributes or {}), default=str))
    data = reader.get_metrics_data()
    if data is not None:
        parts.append(data.to_json())
    return "\n".join(parts)


@pytest.mark.parametrize("capture", [False, True])
async def test_a_prompt_tasks_content_reaches_telemetry_only_when_captured(
    tmp_path: Path, capture: bool
) -> None:
    from maker.tasks import PromptTask

    task = PromptTask(
        [{"system": "MARKER-SYSTEM-7f3a", "user": "Say the word. MARKER-USER-9c1d"}],
        pattern=r"word: (\w+)",
    )

    def answers(request: SampleRequest, attempt: int) -> str:
        return "the word: MARKERANSWER5e2b"

    reader = InMemoryMetricReader()
    run = await traced_run(
        tmp_path / "log.db",
        client=ScriptedClient(answers),
        task=task,
        policy=Policy(k=2),
        capture_content=capture,
        meter_provider=MeterProvider(metric_readers=[reader]),
    )
    assert run.result.ok
    live = _everything(run.spans, reader)
    provider, exporter = memory_provider()
    export_run(run.events, provider, capture_content=capture)
    exported = _everything(exporter.get_finished_spans(), InMemoryMetricReader())
    for text in (live, exported):
        for marker in ("MARKER-SYSTEM-7f3a", "MARKER-USER-9c1d", "MARKERANSWER5e2b"):
            assert (marker in text) is capture, marker
    step = next(s for s in run.spans if s.name == STEP_SPAN)
    winner = str((step.attributes or {})["maker.winner"])
    assert winner == ('"MARKERANSWER5e2b"' if capture else content_digest('"MARKERANSWER5e2b"'))


async def test_step_spans_share_one_name_and_hanoi_keeps_its_settings(tmp_path: Path) -> None:
    run = await traced_run(tmp_path / "log.db")
    names = {s.name for s in run.spans}
    assert names == {"maker.run hanoi", STEP_SPAN, "chat sim"}
    root = next(s for s in run.spans if s.parent is None)
    assert json.loads(str((root.attributes or {})["maker.task.params"])) == {"disks": 4}


async def test_the_genai_client_metrics_follow_the_conventions(tmp_path: Path) -> None:
    """gen_ai.client.operation.duration (s) and gen_ai.client.token.usage ({token}) with the
    conventions' attributes and bucket boundaries; maker's own counters carry the model."""
    from opentelemetry.sdk.metrics.export import HistogramDataPoint

    def flaky(request: SampleRequest, attempt: int) -> Reply:
        if attempt == 1 and request.sample_id.endswith(":0"):
            return ClientError("slow", kind="timeout", retryable=True)
        return correct(request, attempt)

    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    run = await traced_run(
        tmp_path / "log.db",
        client=ScriptedClient(flaky),
        task=Count(3),
        policy=Policy(k=1),
        meter_provider=meters,
    )
    result = run.result
    points = metric_points(reader)
    model = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "maker.fake",
        "gen_ai.request.model": "fake",
    }
    durations = points["gen_ai.client.operation.duration s"]
    assert all(isinstance(p, HistogramDataPoint) for p in durations)
    by_error = {p.attributes.get("error.type"): p for p in durations}
    assert set(by_error) == {None, "timeout"}
    assert dict(by_error[None].attributes) == model
    assert dict(by_error["timeout"].attributes) == {**model, "error.type": "timeout"}
    # One duration per attempt: every received sample, and each failed attempt.
    assert by_error[None].count == result.samples - result.cancelled_samples
    assert by_error["timeout"].count == 3
    assert list(by_error[None].explicit_bounds) == pytest.approx(
        [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]
    )
    usage = {
        p.attributes["gen_ai.token.type"]: p for p in points["gen_ai.client.token.usage {token}"]
    }
    assert {t: p.sum for t, p in usage.items()} == {
        "input": result.input_tokens,
        "output": result.output_tokens,
    }
    assert dict(usage["input"].attributes) == {**model, "gen_ai.token.type": "input"}
    assert list(usage["input"].explicit_bounds) == [4**i for i in range(14)]
    (samples,) = points["maker.samples {sample}"]
    assert dict(samples.attributes) == model
    meters.shutdown()


def test_the_server_of_a_metric_point_is_the_clients_base_url() -> None:
    from maker.otel._otel import _server

    assert _server({"base_url": "http://127.0.0.1:8765/v1"}) == (
        ("server.address", "127.0.0.1"),
        ("server.port", 8765),
    )
    assert _server({"base_url": "https://api.openai.com/v1"}) == (
        ("server.address", "api.openai.com"),
        ("server.port", 443),
    )
    assert _server({"preset": "paper"}) == ()


async def test_sample_spans_name_the_server_and_the_scope_its_conventions(tmp_path: Path) -> None:
    from maker.otel._otel import SCHEMA_URL

    class Served(ScriptedClient):
        def describe(self) -> dict[str, Any]:
            return {"kind": "scripted", "base_url": "http://127.0.0.1:8765/v1"}

    run = await traced_run(tmp_path / "log.db", client=Served(), task=Count(2), policy=Policy(k=1))
    samples = by_sample(run.spans)
    assert samples
    for span in samples.values():
        assert (span.attributes or {})["server.address"] == "127.0.0.1"
        assert (span.attributes or {})["server.port"] == 8765
    assert {s.instrumentation_scope.schema_url for s in run.spans} == {SCHEMA_URL}  # type: ignore[union-attr]
    # A client without a base URL (the simulated model, this scripted one) names no server.
    plain = await traced_run(
        tmp_path / "plain.db", client=ScriptedClient(), task=Count(2), policy=Policy(k=1)
    )
    assert plain.result.ok
    assert by_sample(plain.spans)
    assert all("server.address" not in (s.attributes or {}) for s in plain.spans)


async def test_every_metric_point_of_a_provider_model_names_its_provider(tmp_path: Path) -> None:
    def flaky(request: SampleRequest, attempt: int) -> Reply:
        if attempt == 1 and request.sample_id.endswith(":0"):
            return ClientError("slow", kind="timeout", retryable=True)
        return correct(request, attempt)

    class Provided(ScriptedClient):
        @property
        def model(self) -> str:
            return "openai:local-model"

    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    run = await traced_run(
        tmp_path / "log.db",
        client=Provided(flaky),
        task=Count(2),
        policy=Policy(k=1),
        meter_provider=meters,
    )
    assert run.result.ok
    for name, points in metric_points(reader).items():
        for point in points:
            if "gen_ai.request.model" in point.attributes:
                assert point.attributes["gen_ai.provider.name"] == "openai", name
                assert point.attributes["gen_ai.request.model"] == "local-model", name
    meters.shutdown()


def test_a_pipelined_hedged_run_has_a_span_per_start_of_a_step() -> None:
    from ..replay import _pipelined as P

    provider, exporter = memory_provider()
    reader = InMemoryMetricReader()
    events = P.pipelined_events()
    count = export_run(events, provider, meter_provider=MeterProvider(metric_readers=[reader]))
    spans = exporter.get_finished_spans()
    assert count == len(spans) == 1 + P.STEPS + P.MISSPECULATED_STEPS + P.SAMPLES
    steps = [s for s in spans if s.name == STEP_SPAN]
    by_id = {s.context.span_id: s for s in spans}

    def attrs(span: ReadableSpan) -> dict[str, Any]:
        return dict(span.attributes or {})

    starts: dict[tuple[int, int], ReadableSpan] = {}
    for span in steps:
        a = attrs(span)
        starts[(int(a["maker.step"]), int(a.get("maker.step.branch", 0)))] = span
    assert sorted(starts) == [(0, 0), (1, 0), (2, 0), (2, 1), (3, 0), (3, 1)]
    abandoned = {key for key, span in starts.items() if attrs(span).get("maker.step.abandoned")}
    assert abandoned == {(2, 0), (3, 0)}
    for key, span in starts.items():
        a = attrs(span)
        speculative = key in {(1, 0), (2, 0), (3, 0), (3, 1)}
        assert a.get("maker.step.speculative", False) is speculative, key
        if key in abandoned:
            assert a["maker.step.abandoned.reason"] == "misspeculated"
            assert "maker.winner" not in a
            # Ended at its step_abandoned, which says what the start had cost.
            [event] = [
                e for e in events if isinstance(e, StepAbandoned) and (e.step, e.branch) == key
            ]
            assert span.end_time == ns(event.ts)
            assert a["maker.samples"] == event.samples
        else:
            want = P.DECIDED[key[0]]
            assert key[1] == want["branch"]
            assert a["maker.samples"] == want["samples"]
            assert a["maker.red_flags"] == want["red_flags"]
            assert a["maker.winner"] == content_digest(want["winner"])
    # The pipeline's steps overlap: step 1's span begins before step 0's ends.
    assert starts[(1, 0)].start_time < starts[(0, 0)].end_time  # type: ignore[operator]
    # Every sample span is a child of the span of the start it was drawn for.
    samples = [s for s in spans if s.name == "chat sim"]
    assert len(samples) == P.SAMPLES
    for span in samples:
        a = attrs(span)
        assert span.parent is not None
        assert by_id[span.parent.span_id] is starts[P.START_OF[str(a["maker.sample_id"])]]
        assert a.get("maker.sample.hedge_of") == P.HEDGES.get(str(a["maker.sample_id"]))
    stragglers = {
        str(attrs(s)["maker.sample_id"])
        for s in samples
        if any(e.name == "maker.hedged" for e in s.events)
    }
    assert stragglers == set(P.HEDGES.values())
    cancelled = Counter(
        attrs(s)["maker.cancelled"] for s in samples if "maker.cancelled" in attrs(s)
    )
    assert cancelled == P.CANCELLED
    [root] = [s for s in spans if s.name == "maker.run count"]
    assert attrs(root)["maker.misspeculated_samples"] == P.MISSPECULATED_SAMPLES
    assert attrs(root)["maker.misspeculated_steps"] == P.MISSPECULATED_STEPS
    assert attrs(root)["maker.hedged_samples"] == P.HEDGED_SAMPLES
    points = metric_points(reader)
    assert sum(p.value for p in points["maker.samples {sample}"]) == P.SAMPLES
    misspeculated = points["maker.samples.misspeculated {sample}"]
    assert sum(p.value for p in misspeculated) == P.MISSPECULATED_SAMPLES
    assert sum(p.value for p in points["maker.samples.hedged {sample}"]) == P.HEDGED_SAMPLES
    [votes] = points["maker.votes_per_step {vote}"]
    assert votes.count == P.STEPS
    assert votes.sum == sum(d["valid_votes"] for d in P.DECIDED.values())


async def test_a_run_without_pipelining_has_no_start_attributes(tmp_path: Path) -> None:
    run = await traced_run(tmp_path / "log.db")
    for span in run.spans:
        a = dict(span.attributes or {})
        assert not {k for k in a if k.startswith(("maker.step.", "maker.hedge"))}
        assert "maker.sample.hedge_of" not in a
        assert "maker.misspeculated_samples" not in a
