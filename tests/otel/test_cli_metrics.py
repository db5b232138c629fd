"""The CLI exports metrics: ``maker run`` and ``maker calibrate`` as real subprocesses, sending
OTLP/HTTP to a real receiver on this machine, checked against the conventions and the log."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

from events import RunFinished, RunStarted, SampleFailed, SampleReceived, SampleRequested
from maker.apps.serve_sim._serve_sim import SimServerConfig, serve_sim
from maker.engine import sample_seed
from maker.otel._otel import SCHEMA_URL
from replay import load_events

from ._receiver import Receiver, attributes, otlp_receiver

pytestmark = pytest.mark.anyio

MAKER = [sys.executable, "-m", "maker"]

# Every variable that could send the child's telemetry elsewhere is cleared; each test sets its own.
_CLEARED = (
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    "OTEL_METRIC_EXPORT_INTERVAL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
)


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    env.update(extra)
    return env


async def maker(*args: str, env: Mapping[str, str]) -> tuple[int, str, str]:
    """``maker ARGS`` in a child process; the loop stays free for the receiver meanwhile."""
    with anyio.fail_after(240):
        done = await anyio.run_process([*MAKER, *args], env=env, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def by_name(receiver: Receiver) -> dict[str, list[Metric]]:
    found: dict[str, list[Metric]] = {}
    for _, _, metric in receiver.metrics():
        found.setdefault(metric.name, []).append(metric)
    return found


def points(metrics: Sequence[Metric]) -> list[tuple[dict[str, Any], Any]]:
    """The data points of one metric's exports, each with its attributes. A cumulative export
    repeats every point, so only the last export of each attribute set is kept."""
    last: dict[tuple[tuple[str, Any], ...], tuple[dict[str, Any], Any]] = {}
    for metric in metrics:
        kind = metric.WhichOneof("data")
        assert kind is not None
        for point in getattr(metric, kind).data_points:
            attrs = attributes(point.attributes)
            last[tuple(sorted(attrs.items()))] = (attrs, point)
    return list(last.values())


def chat_spans(receiver: Receiver) -> list[PbSpan]:
    return [s for s in receiver.spans if s.kind == PbSpan.SpanKind.SPAN_KIND_CLIENT]


GENAI_REQUIRED = {"gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model"}


async def test_maker_run_sends_the_genai_and_maker_metrics_and_the_trace_over_otlp(
    tmp_path: Path,
) -> None:
    log = tmp_path / "run.db"
    # The server's fault draws come from its seed in request order: with seed 11 the 1st, 3rd,
    # 11th and 14th requests get a 500 and the next one not before the 29th, so a 7-step run
    # sees four failed attempts and no sample fails for good.
    faults = SimServerConfig(sim="ideal", fault_rate=0.25, faults=("server_error",), seed=11)
    async with otlp_receiver() as receiver, serve_sim(faults) as server:
        code, out, err = await maker(
            "run", "hanoi", "--disks", "3", "--k", "2", "--seed", "5",
            "--model", "openai:sim-model", "--base-url", f"{server.base_url}/v1",
            "--log", str(log), "--otel", "otlp", "--json", "--no-progress",
            env=child_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OPENAI_API_KEY="sk-test"),
        )  # fmt: skip
    assert code == 0, err
    assert "warning" not in err
    result = json.loads(out)
    events = await load_events(log, result["run_id"])
    received = [e for e in events if isinstance(e, SampleReceived)]
    failed = [e for e in events if isinstance(e, SampleFailed)]
    assert failed, "the server was set to fail some requests"
    port = int(server.base_url.rsplit(":", 1)[1])
    model = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "sim-model",
        "server.address": "127.0.0.1",
        "server.port": port,
    }

    metrics = by_name(receiver)
    for resource, scope, _ in receiver.metrics():
        assert attributes(resource.resource.attributes)["service.name"] == "maker"
        assert (scope.scope.name, scope.schema_url) == ("maker", SCHEMA_URL)

    # gen_ai.client.operation.duration: seconds, a histogram, one point per attempt; the
    # failed attempts carry error.type (the kind the log records) and nothing else differs.
    duration = metrics["gen_ai.client.operation.duration"]
    assert {(m.unit, m.WhichOneof("data")) for m in duration} == {("s", "histogram")}
    by_error: Counter[str | None] = Counter()
    for attrs, point in points(duration):
        assert {k: v for k, v in attrs.items() if k != "error.type"} == model
        by_error[attrs.get("error.type")] += point.count
        assert point.sum > 0
    expected: Counter[str | None] = Counter(e.error_kind for e in failed)
    expected[None] = len(received)
    assert by_error == expected

    # gen_ai.client.token.usage: {token}, by gen_ai.token.type, summing the log's tokens.
    usage = metrics["gen_ai.client.token.usage"]
    assert {(m.unit, m.WhichOneof("data")) for m in usage} == {("{token}", "histogram")}
    sums = {}
    for attrs, point in points(usage):
        kind = attrs.pop("gen_ai.token.type")
        assert attrs == model
        assert point.count == len(received)
        sums[kind] = point.sum
    assert sums == {
        "input": sum(e.input_tokens for e in received),
        "output": sum(e.output_tokens for e in received),
    }

    # maker's own: the same model attributes, and the counts the log gives.
    samples = points(metrics["maker.samples"])
    assert [(attrs, point.as_int) for attrs, point in samples] == [
        (model, sum(isinstance(e, SampleRequested) for e in events))
    ]
    assert {m.unit for m in metrics["maker.samples"]} == {"{sample}"}
    failures = points(metrics["maker.failures"])
    assert {attrs["error.type"]: point.as_int for attrs, point in failures} == dict(
        Counter(e.error_kind for e in failed)
    )
    assert all({k: v for k, v in a.items() if k != "error.type"} == model for a, _ in failures)
    assert {m.unit for m in metrics["maker.tokens"]} == {"{token}"}
    [(_, votes)] = points(metrics["maker.votes_per_step"])
    assert votes.count == result["steps"]

    # The trace came too: every sample span says the seed it was sent with and the server, and
    # an answered one the provider's response id, as the log recorded it.
    spans = chat_spans(receiver)
    assert len(spans) == result["samples"]
    run_seed = next(e for e in events if isinstance(e, RunStarted)).seed
    response_ids = {e.sample_id: e.response_id for e in received}
    assert all(str(i).startswith("chatcmpl-sim") for i in response_ids.values())
    for span in spans:
        attrs = attributes(span.attributes)
        assert attrs["gen_ai.request.seed"] == sample_seed(run_seed, attrs["maker.sample_id"])
        assert (attrs["server.address"], attrs["server.port"]) == ("127.0.0.1", port)
        assert attrs.get("gen_ai.response.id") == response_ids.get(attrs["maker.sample_id"])


async def test_the_variables_alone_send_metrics_and_none_turns_either_signal_off(
    tmp_path: Path,
) -> None:
    run = ("run", "hanoi", "--disks", "2", "--k", "1", "--preset", "ideal", "--no-progress")
    async with otlp_receiver() as receiver:
        # No --otel: the endpoint variable sends both; OTEL_TRACES_EXPORTER=none keeps metrics.
        code, _, err = await maker(
            *run, "--log", str(tmp_path / "a.db"),
            env=child_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_TRACES_EXPORTER="none"),
        )  # fmt: skip
        assert code == 0, err
        assert receiver.spans == []
        names = set(by_name(receiver))
        assert {"gen_ai.client.operation.duration", "gen_ai.client.token.usage"} <= names
        [(attrs, point)] = points(by_name(receiver)["maker.samples"])
        assert attrs == {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "maker.sim",
            "gen_ai.request.model": "sim",
        }
        assert point.as_int == 3  # 3 steps, k = 1, an ideal model: one sample each

        # --otel otlp with OTEL_METRICS_EXPORTER=none: the trace and no metrics.
        receiver.metric_requests.clear()
        code, _, err = await maker(
            *run, "--log", str(tmp_path / "b.db"), "--otel", "otlp",
            env=child_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_METRICS_EXPORTER="none"),
        )  # fmt: skip
        assert code == 0, err
        assert receiver.metric_requests == []
        assert len(chat_spans(receiver)) == 3

        # A per-signal endpoint is honoured as the exporters read it.
        receiver.spans.clear()
        code, _, err = await maker(
            *run, "--log", str(tmp_path / "c.db"),
            env=child_env(OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=f"{receiver.url}/v1/metrics"),
        )  # fmt: skip
        assert code == 0, err
        assert receiver.spans == []  # no traces endpoint, so no traces
        assert "maker.samples" in by_name(receiver)


async def test_a_collector_that_refuses_the_metrics_is_a_warning_not_a_failure(
    tmp_path: Path,
) -> None:
    async with otlp_receiver(status=400) as receiver:
        code, out, err = await maker(
            "run", "hanoi", "--disks", "2", "--k", "1", "--preset", "ideal", "--no-progress",
            "--log", str(tmp_path / "r.db"), "--json",
            env=child_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_TRACES_EXPORTER="none"),
        )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["status"] == "succeeded"
    assert receiver.requests == 1  # the one export at the end, refused, not retried
    assert "maker: warning: otel: 1 of 1 metric exports failed" in err.splitlines()


async def test_a_bad_metrics_exporter_is_one_line_before_the_run(tmp_path: Path) -> None:
    log = tmp_path / "bad.db"
    code, _, err = await maker(
        "run", "hanoi", "--disks", "2", "--log", str(log), "--otel", "console",
        env=child_env(OTEL_METRICS_EXPORTER="prometheus"),
    )  # fmt: skip
    assert code != 0
    assert "Traceback" not in err
    assert err.strip().splitlines() == [
        "maker: error: OTEL_METRICS_EXPORTER: 'prometheus' is not supported;"
        " use otlp, console or none"
    ]
    assert not log.exists()


async def test_console_sends_the_metrics_to_stderr_beside_the_spans(tmp_path: Path) -> None:
    code, out, err = await maker(
        "run", "hanoi", "--disks", "2", "--k", "1", "--preset", "ideal", "--no-progress",
        "--log", str(tmp_path / "c.db"), "--otel", "console", "--json",
        env=child_env(),
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["status"] == "succeeded"  # stdout holds the result alone
    decoder = json.JSONDecoder()
    documents, at = [], 0
    while at < len(err):
        if err[at].isspace():
            at += 1
            continue
        document, at = decoder.raw_decode(err, at)
        documents.append(document)
    names = {
        metric["name"]
        for document in documents
        for resource in document.get("resource_metrics", ())
        for scope in resource["scope_metrics"]
        for metric in scope["metrics"]
    }
    assert {"gen_ai.client.operation.duration", "gen_ai.client.token.usage"} <= names
    assert any(document.get("name") == "chat sim" for document in documents)


def _events_in(log: Path) -> int:
    if not log.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{log}?mode=ro", uri=True) as conn:
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    except sqlite3.Error:
        return 0


async def test_ctrl_c_still_flushes_the_metrics_of_what_ran(tmp_path: Path) -> None:
    log = tmp_path / "int.db"
    async with otlp_receiver() as receiver:
        process = await anyio.open_process(
            # Simulated latency keeps the run going (1,023 steps one at a time take over 5 s);
            # the export interval is far longer than the run, so only the final flush exports.
            [*MAKER, "run", "hanoi", "--disks", "10", "--latency-ms", "5", "--pipeline", "0",
             "--hedge", "0", "--log", str(log), "--no-progress", "--otel", "otlp"],
            env=child_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url),
        )  # fmt: skip
        async with process:
            with anyio.fail_after(120):
                # The child writes the file; nothing here could set an event for it.
                while process.returncode is None and _events_in(log) < 2000:  # noqa: ASYNC110
                    await anyio.sleep(0.005)  # polling the file, not measuring time
                assert process.returncode is None, "the run ended before it could be interrupted"
                process.send_signal(signal.SIGINT)
                code = await process.wait()
    assert code == 130
    events = await load_events(log)
    finished = events[-1]
    assert isinstance(finished, RunFinished)
    assert finished.status == "cancelled"
    [(_, point)] = points(by_name(receiver)["maker.samples"])
    assert point.as_int == sum(isinstance(e, SampleRequested) for e in events)


async def test_calibrate_exports_metrics_where_the_variables_say(tmp_path: Path) -> None:
    async with otlp_receiver() as receiver:
        code, out, err = await maker(
            "calibrate", "hanoi", "--disks", "4", "--model", "sim", "--samples", "5",
            "--preset", "ideal", "--log", str(tmp_path / "cal.db"), "--json",
            env=child_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url),
        )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["models"]
    [(attrs, point)] = points(by_name(receiver)["maker.samples"])
    assert attrs["gen_ai.request.model"] == "sim"
    assert point.as_int == 5
    assert len(chat_spans(receiver)) == 5


async def test_an_otlp_endpoint_is_spelled_otlp_url_in_run_and_in_export_otel(
    tmp_path: Path,
) -> None:
    log = tmp_path / "run.db"
    async with otlp_receiver() as receiver:
        # No variables: the endpoint is in the exporter's spec, for spans and metrics alike; a
        # password in it is never printed.
        host = receiver.url.split("://", 1)[1]
        endpoint = f"http://collector:s3cret-pw@{host}"
        code, out, err = await maker(
            "run", "hanoi", "--disks", "2", "--k", "1", "--preset", "ideal", "--no-progress",
            "--log", str(log), "--otel", f"otlp:{endpoint}", "--json", env=child_env(),
        )  # fmt: skip
        assert code == 0, err
        run_id = json.loads(out)["run_id"]
        assert len(chat_spans(receiver)) == json.loads(out)["samples"]
        assert "maker.samples" in by_name(receiver)
        live = {bytes(s.span_id) for s in receiver.spans}
        receiver.spans.clear()
        code, out, err = await maker(
            "export-otel", str(log), "--exporter", f"otlp:{endpoint}", "--json", env=child_env()
        )
        assert code == 0, err
        assert {bytes(s.span_id) for s in receiver.spans} == live  # the same tree, again
        summary = json.loads(out)
        assert (summary["run_id"], summary["spans"]) == (run_id, len(live))
        assert summary["exporter"] == f"otlp:http://collector:***@{host}"
        assert "s3cret-pw" not in out + err
        # --out is a file, never an endpoint: the other spelling is refused in one line.
        code, out, err = await maker(
            "export-otel", str(log), "--exporter", "otlp", "--out", receiver.url, env=child_env()
        )
        assert code == 2
        assert err.strip().splitlines() == [
            "maker: error: --out is a file; give an otlp endpoint as --exporter otlp:URL"
            " (see 'maker export-otel --help')"
        ]
        code, _, err = await maker(
            "run", "hanoi", "--disks", "2", "--log", str(tmp_path / "bad.db"), "--otel",
            "otlp:localhost:4318", "--no-progress", env=child_env(),
        )  # fmt: skip
        assert code != 0
        assert err.strip().splitlines() == [
            "maker: error: exporter: an otlp endpoint is an http(s) URL, got 'localhost:4318'"
        ]
