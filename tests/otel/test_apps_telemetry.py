"""``maker resume``, ``maker serve`` and ``maker mcp`` export telemetry too: real subprocesses
sending OTLP/HTTP to a real receiver on this machine, checked against the log.

A resumption re-executes the recorded prefix: its spans are sent again (same ids), but its
metrics were counted by the process that recorded it, so only the new part's are counted now.
"""

from __future__ import annotations

import json
import signal
import sys
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.text import TextReceiveStream

from events import AnyEvent, EventLog, RunResumed, SampleRequested, StepDecided
from replay import load_events

from ._receiver import attributes, otlp_receiver
from .test_cli_metrics import by_name, chat_spans, child_env, maker, points

pytestmark = pytest.mark.anyio

SIM = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "maker.sim"}


def requested(events: list[AnyEvent]) -> list[SampleRequested]:
    return [e for e in events if isinstance(e, SampleRequested)]


def samples_counted(receiver: Any) -> int:
    """The ``maker.samples`` total the receiver was sent (cumulative: the last export)."""
    return sum(point.as_int for _, point in points(by_name(receiver)["maker.samples"]))


async def test_resume_resends_the_prefix_spans_but_counts_only_the_new_parts_metrics(
    tmp_path: Path,
) -> None:
    full = tmp_path / "full.db"
    code, out, err = await maker(
        "run", "hanoi", "--disks", "4", "--k", "2", "--seed", "3", "--preset", "paper",
        "--log", str(full), "--json", "--no-progress", env=child_env(),
    )  # fmt: skip
    assert code == 0, err
    recorded = await load_events(full, json.loads(out)["run_id"])
    # A crash halfway: the log ends after an arbitrary event, samples in flight.
    cut = len(recorded) // 2
    crashed = tmp_path / "crashed.db"
    async with EventLog(crashed) as log:
        for event in recorded[:cut]:
            log.append(event)

    async with otlp_receiver() as receiver:
        code, out, err = await maker(
            "resume", str(crashed), "--otel", "otlp", "--json", "--no-progress",
            env=child_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url),
        )  # fmt: skip
    assert code == 0, err
    assert "warning" not in err
    assert json.loads(out)["resumed"] is True
    events = await load_events(crashed)
    [marker] = [e for e in events if isinstance(e, RunResumed)]
    assert marker.seq == cut
    new = [e for e in requested(events) if e.seq > marker.seq]
    assert new, "the cut left work to do"
    # Metrics: the new samples only, once each.
    assert samples_counted(receiver) == len(new)
    [(_, votes)] = points(by_name(receiver)["maker.votes_per_step"])
    assert votes.count == sum(1 for e in events if isinstance(e, StepDecided) and e.seq > cut)
    [(attrs, _)] = points(by_name(receiver)["maker.samples"])
    assert {k: attrs[k] for k in SIM} == SIM
    # Spans: every sample of the run, the prefix's included, under the run's one trace.
    spans = chat_spans(receiver)
    assert {attributes(s.attributes)["maker.sample_id"] for s in spans} == {
        e.sample_id for e in requested(events)
    }
    assert len({s.trace_id for s in receiver.spans}) == 1


async def _http(url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One request to the service, on a worker thread: the loop stays free for the receiver."""

    def call() -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            url,
            data,
            {"Content-Type": "application/json"},
            method="GET" if data is None else "POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    return await anyio.to_thread.run_sync(call)


async def test_serve_exports_the_telemetry_of_the_runs_it_starts(tmp_path: Path) -> None:
    log = tmp_path / "serve.db"
    async with otlp_receiver() as receiver:
        env = child_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, PYTHONUNBUFFERED="1")
        command = [sys.executable, "-m", "maker", "serve", "--log", str(log), "--port", "0"]
        async with await anyio.open_process([*command, "--no-auth"], env=env) as proc:
            assert proc.stderr is not None
            seen = ""
            with anyio.fail_after(60):
                async for chunk in TextReceiveStream(proc.stderr):
                    seen += chunk
                    if "listening on " in seen and "\n" in seen.split("listening on ", 1)[1]:
                        break
            base = seen.split("listening on ", 1)[1].split()[0]
            run = {"task": "hanoi", "params": {"disks": 3}, "k": 2}
            started = await _http(f"{base}/runs", run)
            with anyio.fail_after(60):
                # Polling the run's state, as a client of the service would.
                while (await _http(base + started["state"]))["status"] in ("queued", "running"):  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(60):
                code = await proc.wait()
        assert code == 0
    events = await load_events(log, started["run_id"])
    assert samples_counted(receiver) == len(requested(events)) > 0
    assert {attributes(s.attributes)["maker.sample_id"] for s in chat_spans(receiver)} == {
        e.sample_id for e in requested(events)
    }


async def test_mcp_exports_the_telemetry_of_the_runs_its_tools_start(tmp_path: Path) -> None:
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client

    async with otlp_receiver() as receiver:
        env = child_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, PYTHONUNBUFFERED="1")
        params = StdioServerParameters(
            command=sys.executable,
            args=["-m", "maker", "mcp", "--log", "mcp.db"],
            env=env,
            cwd=str(tmp_path),
        )
        with (tmp_path / "stderr.txt").open("w") as errlog, anyio.fail_after(120):
            async with Client(stdio_client(params, errlog=errlog)) as client:
                ran = await client.call_tool(
                    "run", {"task": "hanoi", "params": {"disks": 3}, "k": 2, "wait": True}
                )
                assert not ran.is_error, ran.content
                assert isinstance(ran.structured_content, dict)
                run_id = ran.structured_content["run_id"]
            # Leaving the client closes the server's stdin: it ends, flushing its exporters.
    events = await load_events(tmp_path / "mcp.db", run_id)
    assert samples_counted(receiver) == len(requested(events)) > 0
    assert {attributes(s.attributes)["maker.sample_id"] for s in chat_spans(receiver)} == {
        e.sample_id for e in requested(events)
    }
