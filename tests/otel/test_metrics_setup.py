"""Which metrics exporter the OTEL_* variables and --otel choose, and the seed on sample spans."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from events import EventLog, RunStarted
from maker import ConfigError, Engine, Policy, SimulatedModel
from maker.apps._telemetry import otel_sink_for
from maker.engine import sample_seed
from maker.otel._otel import TraceSink, export_run, metric_losses
from maker.otel._sdk import DeterministicIdGenerator, meter_provider_for, metrics_from_env
from maker.tasks import Hanoi

pytestmark = pytest.mark.anyio

_VARIABLES = (
    "OTEL_SDK_DISABLED",
    "OTEL_METRICS_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
)


def _exporter_name(provider: MeterProvider) -> str:
    """The class of the exporter behind a provider built by ``meter_provider_for``."""
    [reader] = provider._metric_readers
    return type(reader._exporter._inner).__name__  # type: ignore[attr-defined]


def test_metrics_from_env_follows_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert metrics_from_env() is None  # no endpoint, no exporter named: nothing to send to
    assert metrics_from_env({"OTEL_METRICS_EXPORTER": "none"}) is None
    assert metrics_from_env({"OTEL_METRICS_EXPORTER": "none,otlp"}) is None  # the first counts
    assert (
        metrics_from_env({"OTEL_SDK_DISABLED": "true", "OTEL_METRICS_EXPORTER": "console"}) is None
    )
    chosen = {
        "console": {"OTEL_METRICS_EXPORTER": "console"},
        "otlp": {"OTEL_METRICS_EXPORTER": "otlp_proto_http"},
        "endpoint": {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},
        "metrics endpoint": {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://127.0.0.1:9/v1/m"},
    }
    names = {}
    for label, env in chosen.items():
        provider = metrics_from_env(env)
        assert provider is not None
        names[label] = _exporter_name(provider)
        provider.shutdown()
    assert names == {
        "console": "ConsoleMetricExporter",
        "otlp": "OTLPMetricExporter",
        "endpoint": "OTLPMetricExporter",
        "metrics endpoint": "OTLPMetricExporter",
    }
    # A traces-only endpoint asks nothing of metrics.
    assert metrics_from_env({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9"}) is None
    with pytest.raises(ConfigError, match="OTEL_METRICS_EXPORTER"):
        metrics_from_env({"OTEL_METRICS_EXPORTER": "prometheus"})
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"):
        metrics_from_env(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
                "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc",
            }
        )


def test_otel_spec_sends_metrics_its_way_unless_the_variable_says_otherwise() -> None:
    # --otel console or otlp: the same exporter for metrics when OTEL_METRICS_EXPORTER is unset.
    for default, expected in (("console", "ConsoleMetricExporter"), ("otlp", "OTLPMetricExporter")):
        provider = metrics_from_env({}, default=default)
        assert provider is not None
        assert _exporter_name(provider) == expected
        provider.shutdown()
        assert metrics_from_env({"OTEL_METRICS_EXPORTER": "none"}, default=default) is None
    switched = metrics_from_env({"OTEL_METRICS_EXPORTER": "console"}, default="otlp")
    assert switched is not None
    assert _exporter_name(switched) == "ConsoleMetricExporter"
    switched.shutdown()
    with pytest.raises(ConfigError, match="http/protobuf"):
        metrics_from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, default="otlp")


def test_meter_provider_for_names_its_exporters_and_counts_failed_exports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigError, match="unknown metrics exporter"):
        meter_provider_for("json")
    with pytest.raises(ConfigError, match="http"):
        meter_provider_for("otlp", "ftp://collector")
    out = io.StringIO()
    provider = meter_provider_for("console", stream=out)
    provider.get_meter("t").create_counter("t.c").add(2)
    provider.shutdown()
    exported = json.loads(out.getvalue())
    [metric] = exported["resource_metrics"][0]["scope_metrics"][0]["metrics"]
    assert metric["name"] == "t.c"
    assert exported["resource_metrics"][0]["resource"]["attributes"]["service.name"] == "maker"
    losses = metric_losses(provider)
    assert losses is not None
    assert (losses.exports, losses.failed) == (1, 0)
    assert metric_losses(MeterProvider()) is None

    # Nothing listens on port 9 of this machine: the export fails and is counted (after the
    # exporter's retries, which its timeout variable cuts short).
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "1")
    refused = meter_provider_for("otlp", "http://127.0.0.1:9")
    refused.get_meter("t").create_counter("t.c").add(1)
    refused.shutdown()
    failed = metric_losses(refused)
    assert failed is not None
    assert failed.failed == failed.exports == 1


async def test_sample_spans_carry_the_seed_each_request_was_sent_with(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(id_generator=DeterministicIdGenerator(), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    log = tmp_path / "log.db"
    async with Engine(log=log, client=SimulatedModel(preset="ideal")) as engine:
        result = await engine.run(
            Hanoi(3), policy=Policy(k=2), seed=42, sinks=[TraceSink(provider)]
        )
    live = [s for s in exporter.get_finished_spans() if s.name == "chat sim"]
    assert len(live) == result.samples
    seeds = {
        (s.attributes or {})["maker.sample_id"]: (s.attributes or {})["gen_ai.request.seed"]
        for s in live
    }
    assert seeds == {sample_id: sample_seed(42, str(sample_id)) for sample_id in seeds}
    assert len(set(seeds.values())) == len(seeds)  # one seed per request

    # The export of the log says the same: the seed comes from the recorded run seed.
    async with EventLog(log, mode="r") as opened:
        events = [event async for event in opened.read(result.run_id)]
    assert isinstance(events[0], RunStarted)
    exporter.clear()
    export_run(events, provider)
    exported = {
        (s.attributes or {})["maker.sample_id"]: (s.attributes or {})["gen_ai.request.seed"]
        for s in exporter.get_finished_spans()
        if s.name == "chat sim"
    }
    assert exported == seeds


def test_a_bad_metrics_setting_leaves_no_trace_file_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "live.jsonl"
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "prometheus")
    with pytest.raises(ConfigError, match="OTEL_METRICS_EXPORTER"):
        otel_sink_for(f"json:{out}")
    assert not out.exists()
