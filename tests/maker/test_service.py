"""The HTTP service: runs started over HTTP, their events as server-sent events, resume by
Last-Event-ID, state from the log, errors, cancellation, shutdown and the ``serve`` command."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.lowlevel
import msgspec
import pytest
from aiohttp import web

from events import EventLog, RunFinished, RunStarted, Store, decode, encode, event_tag
from maker import PRESETS, Completion, Engine, Hedge, SampleRequest, SimulatedModel
from maker.apps.service._service import create_service, serve
from maker.tasks import Hanoi
from replay import resume_run, summarize, verify_run

pytestmark = pytest.mark.anyio

TOKEN = "test-token-0123456789abcdef"
"""The token the services of these tests ask for (the guard's own tests are in
test_service_guard.py)."""

AUTH = {"Authorization": f"Bearer {TOKEN}"}

LATENT = PRESETS["paper"].replace(latency_ms=3.0, latency_sigma=0.3)
"""The paper's model with a little latency, so that a run takes a moment to stream."""


@dataclass
class Message:
    """One server-sent event."""

    seq: int
    type: str
    data: bytes


@dataclass
class Stream:
    """What a client read from an event stream."""

    messages: list[Message] = field(default_factory=list)
    comments: list[bytes] = field(default_factory=list)
    ended: bool = False

    @property
    def seqs(self) -> list[int]:
        return [m.seq for m in self.messages]


async def read_sse(
    response: aiohttp.ClientResponse,
    *,
    limit: int | None = None,
    until_comments: int | None = None,
) -> Stream:
    """Parse a text/event-stream line by line, to its end, or until ``limit`` messages or
    ``until_comments`` comments have arrived."""
    out = Stream()
    fields: dict[str, bytes] = {}
    while True:
        line = await response.content.readline()
        if not line:
            assert not fields, "the stream ended inside a message"
            out.ended = True
            return out
        line = line.rstrip(b"\n")
        if not line:  # a blank line dispatches the message, if there is one
            if not fields:
                continue
            out.messages.append(
                Message(int(fields["id"]), fields["event"].decode(), fields["data"])
            )
            fields = {}
            if limit is not None and len(out.messages) >= limit:
                return out
        elif line.startswith(b":"):
            out.comments.append(line)
            if until_comments is not None and len(out.comments) >= until_comments:
                return out
        else:
            name, _, value = line.partition(b":")
            assert name.decode() not in fields, f"field {name!r} twice in one message"
            fields[name.decode()] = value.removeprefix(b" ")


@asynccontextmanager
async def service(
    path: Path, **options: Any
) -> AsyncIterator[tuple[Engine, aiohttp.ClientSession]]:
    """An engine on ``path`` with the latent simulated model, served on an ephemeral port."""
    client = options.pop("client", None) or SimulatedModel(LATENT)
    async with (
        Engine(log=path, client=client) as engine,
        serve(engine, token=TOKEN, **options) as server,
        aiohttp.ClientSession(base_url=server.base_url, headers=AUTH) as http,
    ):
        yield engine, http


async def start(http: aiohttp.ClientSession, **body: Any) -> str:
    async with http.post("/runs", json=body) as response:
        assert response.status == 201, await response.text()
        answer = await response.json()
    run_id = answer["run_id"]
    assert answer == {
        "run_id": run_id,
        "events": f"/runs/{run_id}/events",
        "state": f"/runs/{run_id}",
        "live": f"/runs/{run_id}/live",
    }
    assert response.headers["Location"] == f"/runs/{run_id}"
    return str(run_id)


async def logged(log: Store, run_id: str) -> list[bytes]:
    if log.mode == "w":
        await log.flush()
    return [encode(event) async for event in log.read(run_id)]


async def until(predicate: Callable[[], bool]) -> None:
    """Wait for the service's side of a connection to catch up (an ordering point)."""
    with anyio.fail_after(10):
        # Polling: a subscription's release has no event to wait on from outside.
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.005)


def check_messages(stream: Stream) -> None:
    """Each message's id and event name agree with the event in its data."""
    for message in stream.messages:
        event = decode(message.data)
        assert event.seq == message.seq
        assert event_tag(type(event)) == message.type


async def test_a_run_streams_to_its_end_and_equals_maker_export(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    async with service(path) as (engine, http):
        run_id = await start(http, task="hanoi", params={"disks": 5}, k=3, seed=7)
        handle = engine.handle(run_id)
        assert handle is not None
        async with http.get(f"/runs/{run_id}/events") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            stream = await read_sse(response)
        result = await handle.result()
        assert result.ok
        assert result.steps == 31
        recorded = await logged(engine.log, run_id)
        exported = await anyio.run_process(
            [sys.executable, "-m", "maker", "export", str(path), "--run", run_id]
        )
    assert stream.ended
    assert stream.seqs == list(range(len(recorded)))
    assert [m.data for m in stream.messages] == recorded
    assert exported.stdout.splitlines() == recorded  # byte for byte
    assert stream.messages[0].type == "run_started"
    assert stream.messages[-1].type == "run_finished"
    check_messages(stream)


async def test_disconnecting_and_resuming_loses_and_repeats_nothing(tmp_path: Path) -> None:
    async with service(tmp_path / "log.db") as (engine, http):
        run_id = await start(http, task="hanoi", params={"disks": 6}, seed=3)
        handle = engine.handle(run_id)
        assert handle is not None
        url = f"/runs/{run_id}/events"
        segments: list[Stream] = []

        response = await http.get(url)
        segments.append(await read_sse(response, limit=40))
        assert handle.statistics().subscribers == 1
        response.close()  # the client goes away mid-stream
        await until(lambda: handle.statistics().subscribers == 0)
        assert not handle.done  # it really was mid-run

        last = segments[-1].seqs[-1]
        response = await http.get(url, headers={"Last-Event-ID": str(last)})
        segments.append(await read_sse(response, limit=200))
        response.close()
        await until(lambda: handle.statistics().subscribers == 0)

        # A reconnecting browser sends Last-Event-ID with the original URL: the header wins.
        last = segments[-1].seqs[-1]
        headers = {"Last-Event-ID": str(last)}
        async with http.get(url, params={"after": "5"}, headers=headers) as response:
            segments.append(await read_sse(response))
        assert (await handle.result()).ok
        recorded = await logged(engine.log, run_id)
        # Resuming after the end of a finished run gives an empty stream that ends at once.
        async with http.get(url, params={"after": str(len(recorded) - 1)}) as response:
            empty = await read_sse(response)
        await until(lambda: handle.statistics().subscribers == 0)
    assert all(len(s.messages) > 0 for s in segments)
    assert segments[-1].ended
    assert empty.ended
    assert empty.messages == []
    joined = [m for s in segments for m in s.messages]
    assert [m.seq for m in joined] == list(range(len(recorded)))
    assert [m.data for m in joined] == recorded


async def test_after_in_the_query_resumes_a_stream(tmp_path: Path) -> None:
    async with service(tmp_path / "log.db") as (engine, http):
        run_id = await start(http, task="arithmetic", params={"steps": 5}, seed=1)
        async with http.get(f"/runs/{run_id}/events", params={"after": "9"}) as response:
            stream = await read_sse(response)
        recorded = await logged(engine.log, run_id)
    assert stream.seqs == list(range(10, len(recorded)))
    assert [m.data for m in stream.messages] == recorded[10:]


async def test_the_state_is_the_summary_of_the_log(tmp_path: Path) -> None:
    async with service(tmp_path / "log.db") as (engine, http):
        run_id = await start(http, task="hanoi", params={"disks": 6}, k=2, seed=5)
        handle = engine.handle(run_id)
        assert handle is not None
        async with http.get(f"/runs/{run_id}") as response:
            early = await response.json()
        assert early["status"] == "running"
        assert early["run_id"] == run_id
        assert early["task"] == "hanoi"
        async with http.get("/runs") as response:
            listed = await response.json()
        assert listed["runs"][0]["live"] is True
        await handle.result()
        async with http.get(f"/runs/{run_id}") as response:
            assert response.status == 200
            state = await response.json()
        async with http.get("/runs") as response:
            listed = await response.json()
        events = [event async for event in engine.log.read(run_id)]
    summary = summarize(events, per_step=False).to_json()
    assert state == json.loads(json.dumps(summary))
    assert state["status"] == "succeeded"
    assert state["steps"] == 63
    assert state["k"] == 2
    assert listed == {
        "runs": [
            {
                "run_id": run_id,
                "task": "hanoi",
                "status": "succeeded",
                "events": len(events),
                "live": False,
            }
        ]
    }


BAD_REQUESTS: list[tuple[bytes, str]] = [
    (b'{"task": "chess"}', "unknown task 'chess'; known tasks: arithmetic, hanoi"),
    (b'{"task": "hanoi", "params": {"disks": "five"}}', "disks: must be an integer"),
    (b'{"task": "hanoi", "params": {"disks": 99}}', "disks: must be in 1.."),
    (b'{"task": "hanoi", "params": {"pegs": 4}}', "pegs: not a parameter of task 'hanoi'"),
    (b'{"task": "hanoi", "params": [5]}', "Expected `object`, got `array` - at `$.params`"),
    (
        b'{"task": "hanoi", "params": {"disks": 3}, "colour": "red"}',
        "Object contains unknown field `colour`",
    ),
    (
        b'{"task": "hanoi", "params": {"disks": 3}, "k": "3"}',
        "Expected `int`, got `str` - at `$.k`",
    ),
    (
        b'{"task": "hanoi", "params": {"disks": 3}, "k": true}',
        "Expected `int`, got `bool` - at `$.k`",
    ),
    (b'{"task": "hanoi", "params": {"disks": 3}, "k": 0}', "k: must be at least 1, got 0"),
    (
        b'{"task": "hanoi", "params": {"disks": 3}, "k": 5, "max_samples": 2}',
        "max_samples_per_step: must be at least k",
    ),
    (b'{"task": "hanoi", "params": {"disks": 3}, "speculative": -1}', "speculative: must be >= 0"),
    (
        b'{"task": "hanoi", "params": {"disks": 3}, "matcher": "nope"}',
        "matcher: unknown matcher 'nope'",
    ),
    (b'{"task": "hanoi", "params": {"disks": 3}, "pipeline": -1}', "pipeline: must be >= 0"),
    (
        b'{"task": "hanoi", "params": {"disks": 3}, "pipeline": 65}',
        "pipeline: at most 64, got 65",
    ),
    (
        b'{"task": "hanoi", "params": {"disks": 3}, "hedge": 1.5}',
        "hedge: must be 0 (off) or a quantile in (0, 1), got 1.5",
    ),
    (
        b'{"task": "hanoi", "params": {"disks": 3}, "hedge": {"quantile": 0.9}}',
        "Expected `float | null`, got `object` - at `$.hedge`",
    ),
    (
        b'{"task": "hanoi", "params": {"disks": 3}, "hedge": 0, "hedge_min_s": 0.5}',
        "hedge_min_s: applies only with hedge",
    ),
    (
        b'{"task": "hanoi", "params": {"disks": 3}, "hedge": 0.9, "hedge_min_s": -1}',
        "hedge_min_s: must be a number of seconds >= 0, got -1",
    ),
    (b'{"task": "hanoi", "params": {"disks": 3}, "p": 1.5}', "p: must be between 0 and 1, got 1.5"),
    (b'{"task": "hanoi", "params": {"disks": 3}, "latency_ms": -2}', "latency_ms: must be >= 0"),
    (
        b'{"task": "hanoi", "params": {"disks": 3}, "model": "openai:gpt-4.1-mini"}',
        "it was not set up to choose",
    ),
    (b"{}", "Object missing required field `task`"),
    (b"[]", "Expected `object`, got `array`"),
    (b"", "the body is not valid JSON"),
    (b'{"task": "hanoi",', "the body is not valid JSON"),
]


async def test_bad_requests_are_400_with_one_line(tmp_path: Path) -> None:
    async with service(tmp_path / "log.db") as (engine, http):
        for body, expected in BAD_REQUESTS:
            headers = {"Content-Type": "application/json"}
            async with http.post("/runs", data=body, headers=headers) as response:
                answer = await response.json()
            assert response.status == 400, body
            assert list(answer) == ["error"], body
            assert expected in answer["error"], (body, answer)
            assert "\n" not in answer["error"]
        assert engine.statistics().runs_active == 0
        async with http.get("/runs") as response:
            assert await response.json() == {"runs": []}  # none of them started a run


async def test_pipeline_and_hedge_of_a_request_are_the_runs_policy(tmp_path: Path) -> None:
    from maker.apps._options import AUTO_HEDGE_QUANTILE, AUTO_PIPELINE

    async with service(tmp_path / "log.db") as (_, http):
        on = await start(
            http, task="hanoi", params={"disks": 2}, pipeline=2, hedge=0.9, hedge_min_s=0.25
        )
        off = await start(http, task="hanoi", params={"disks": 2}, pipeline=0, hedge=0)
        unset = await start(http, task="hanoi", params={"disks": 2}, hedge=None)
        # Left out, both are on where the model waits for its answers (the service's model
        # has latency), and off where it answers at once.
        waits = await start(http, task="hanoi", params={"disks": 2})
        at_once = await start(http, task="hanoi", params={"disks": 2}, latency_ms=0.0)
        policies = {}
        for run_id in (on, off, unset, waits, at_once):
            # The stream ends with the run (which may have ended already: it is short).
            async with http.get(f"/runs/{run_id}/events") as response:
                stream = await read_sse(response)
            first, last = decode(stream.messages[0].data), decode(stream.messages[-1].data)
            assert isinstance(first, RunStarted)
            assert isinstance(last, RunFinished)
            assert last.status == "succeeded"
            policies[run_id] = first.policy
    assert policies[on]["pipeline"] == 2
    assert policies[on]["hedge"] == {**msgspec.to_builtins(Hedge()), "quantile": 0.9, "min_s": 0.25}
    # Off is recorded as before pipelining and hedging existed: left out.
    assert "hedge" not in policies[off]
    assert "pipeline" not in policies[off]
    assert "hedge" not in policies[unset]  # null: off
    assert policies[unset]["pipeline"] == AUTO_PIPELINE
    assert policies[waits]["pipeline"] == AUTO_PIPELINE
    assert policies[waits]["hedge"]["quantile"] == AUTO_HEDGE_QUANTILE
    assert "pipeline" not in policies[at_once]
    assert "hedge" not in policies[at_once]


async def test_the_report_is_the_log_folded_with_the_data_of_each_plot(tmp_path: Path) -> None:
    from replay import report_data
    from replay._plots import RUN_PLOTS

    async with service(tmp_path / "log.db") as (engine, http):
        run_id = await start(http, task="hanoi", params={"disks": 5}, k=2, seed=3)
        handle = engine.handle(run_id)
        assert handle is not None
        await handle.result()
        async with http.get(f"/runs/{run_id}/report") as response:
            assert response.status == 200
            answer = await response.json()
        events = [event async for event in engine.log.read(run_id)]
        async with http.get("/runs/nope/report") as response:
            assert response.status == 404
    data = report_data(events)
    whole = json.loads(json.dumps(data.to_json()))
    # The votes of every step grow with the run and the page draws none: left out.
    del whole["votes_to_decide"]
    assert answer["report"] == whole
    assert answer["report"]["last_seq"] == events[-1].seq
    assert answer["plots"] == json.loads(json.dumps({p.name: p.data(data) for p in RUN_PLOTS}))
    assert (answer["run_id"], answer["status"], answer["max_steps"]) == (run_id, "succeeded", 31)


def _static(name: str) -> bytes:
    """A file of the live page, as the source tree has it."""
    return (Path(__file__).resolve().parents[2] / "maker/apps/service/static" / name).read_bytes()


async def test_the_live_page_is_served_without_the_token_and_holds_no_run_data(
    tmp_path: Path,
) -> None:
    async with (
        Engine(log=tmp_path / "log.db", client=SimulatedModel(LATENT)) as engine,
        serve(engine, token=TOKEN) as server,
        aiohttp.ClientSession(base_url=server.base_url, headers=AUTH) as http,
        aiohttp.ClientSession(base_url=server.base_url) as anonymous,
    ):
        run_id = await start(http, task="hanoi", params={"disks": 3})
        pages = []
        for path in (f"/runs/{run_id}/live", "/runs/any-id-at-all/live"):
            async with anonymous.get(path) as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == "text/html; charset=utf-8"
                assert "script-src 'self'" in response.headers["Content-Security-Policy"]
                assert response.headers["X-Content-Type-Options"] == "nosniff"
                pages.append(await response.read())
        # The same bytes whatever the id: the page tells nothing of any run.
        assert pages == [_static("live.html")] * 2
        for name, kind in (("live.js", "text/javascript"), ("live.css", "text/css")):
            async with anonymous.get(f"/live/{name}") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith(kind)
                assert await response.read() == _static(name)
        # Everything else still asks for the token, the run's report and events included.
        for path in (f"/runs/{run_id}/report", f"/runs/{run_id}/events", "/live/other.js"):
            async with anonymous.get(path) as response:
                assert response.status == 401, path
        async with anonymous.post(f"/runs/{run_id}/live") as response:
            assert response.status == 401
        # And a page of another site may not read them.
        async with http.get(
            f"/runs/{run_id}/live", headers={"Origin": "http://evil.example"}
        ) as response:
            assert response.status == 403


async def test_the_matcher_of_a_request_is_the_runs_policy(tmp_path: Path) -> None:
    params = {"steps": 20, "digits": 4, "free_form": True}
    async with service(tmp_path / "log.db") as (_, http):
        matched = await start(http, task="arithmetic", params=params, matcher="text + number")
        plain = await start(http, task="arithmetic", params=params)
        policies = {}
        for run_id in (matched, plain):
            async with http.get(f"/runs/{run_id}/events") as response:
                stream = await read_sse(response)
            first, last = decode(stream.messages[0].data), decode(stream.messages[-1].data)
            assert isinstance(first, RunStarted)
            assert isinstance(last, RunFinished)
            assert last.status == "succeeded"
            policies[run_id] = first.policy
    assert policies[matched]["matcher"] == "text+number"
    assert "matcher" not in policies[plain]  # exact: recorded as before matchers existed


async def test_unknown_runs_are_404_and_a_bad_resume_point_is_400(tmp_path: Path) -> None:
    async with service(tmp_path / "log.db") as (_, http):
        run_id = await start(http, task="hanoi", params={"disks": 2})
        for method, url in [
            ("GET", "/runs/nope"),
            ("GET", "/runs/nope/events"),
            ("POST", "/runs/nope/cancel"),
            ("GET", f"/runs/{run_id[:8]}"),  # a prefix is not an id here
            ("GET", f"/runs/{run_id[:8]}/events"),
        ]:
            async with http.request(method, url) as response:
                assert response.status == 404, url
                assert await response.json() == {"error": f"no run {url.split('/')[2]}"}
        for bad in ("abc", "-2", "1.5"):
            headers = {"Last-Event-ID": bad}
            async with http.get(f"/runs/{run_id}/events", headers=headers) as response:
                assert response.status == 400
                assert "Last-Event-ID/after" in (await response.json())["error"]


async def test_cancel_records_cancelled_and_the_run_resumes_after_the_engine_closed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log.db"
    async with service(path) as (engine, http):
        run_id = await start(http, task="hanoi", params={"disks": 8}, seed=11)
        handle = engine.handle(run_id)
        assert handle is not None
        async with http.get(f"/runs/{run_id}/events") as response:
            first = await read_sse(response, limit=60)  # it is under way
            async with http.post(f"/runs/{run_id}/cancel") as cancelled:
                assert cancelled.status == 200
                result = await cancelled.json()
            rest = await read_sse(response)
        assert result["status"] == "cancelled"
        assert 0 < result["steps"] < 255
        assert rest.ended
        assert rest.messages[-1].type == "run_finished"
        assert json.loads(rest.messages[-1].data)["status"] == "cancelled"
        assert first.seqs + rest.seqs == list(range(rest.seqs[-1] + 1))
        async with http.get(f"/runs/{run_id}") as response:
            assert (await response.json())["status"] == "cancelled"
        async with http.post(f"/runs/{run_id}/cancel") as again:  # nothing more to cancel
            assert (await again.json())["status"] == "cancelled"
        await until(lambda: handle.statistics().subscribers == 0)
        cancelled_at = rest.seqs[-1]

    resumed = await resume_run(path, run_id)  # the engine is closed; the log is all there is
    assert resumed.ok
    assert resumed.steps == 255
    assert (await verify_run(path, run_id)).ok

    # Another service on the same log follows the run from the log alone, through its
    # cancellation and resumption, to the final run_finished.
    async with service(path) as (engine, http):
        assert engine.handle(run_id) is None
        async with http.get(f"/runs/{run_id}/events") as response:
            whole = await read_sse(response)
        headers = {"Last-Event-ID": str(cancelled_at)}
        async with http.get(f"/runs/{run_id}/events", headers=headers) as response:
            after_cancel = await read_sse(response)
        async with http.get(f"/runs/{run_id}/events", params={"after": "999999"}) as response:
            beyond = await read_sse(response)
        async with http.post(f"/runs/{run_id}/cancel") as response:
            assert response.status == 200  # it ended: cancelling changes nothing
            assert (await response.json())["status"] == "succeeded"
        recorded = await logged(engine.log, run_id)
    assert [m.data for m in whole.messages] == recorded
    assert [m.type for m in whole.messages].count("run_finished") == 2
    assert whole.messages[-1].type == "run_finished"
    assert after_cancel.messages[0].type == "run_resumed"
    assert after_cancel.messages == whole.messages[cancelled_at + 1 :]
    assert beyond.ended
    assert beyond.messages == []


async def test_a_run_only_in_the_log_is_followed_live(tmp_path: Path) -> None:
    async with (
        EventLog(tmp_path / "log.db") as log,
        Engine(log=log, client=SimulatedModel(LATENT)) as served,
        Engine(log=log, client=SimulatedModel(LATENT)) as elsewhere,
        serve(served, token=TOKEN) as server,
        aiohttp.ClientSession(base_url=server.base_url, headers=AUTH) as http,
    ):
        handle = elsewhere.start(Hanoi(5), seed=2)
        await until(lambda: handle.statistics().events > 0)
        assert served.handle(handle.run_id) is None
        async with http.get(f"/runs/{handle.run_id}/events") as response:
            stream = await read_sse(response)
        assert handle.done  # the stream ended with the run
        recorded = await logged(log, handle.run_id)
    assert stream.ended
    assert [m.data for m in stream.messages] == recorded


class Gated(SimulatedModel):
    """The ideal simulated model, holding every answer from ``step`` on until the gate opens."""

    def __init__(self, step: int) -> None:
        super().__init__(preset="ideal")
        self.step = step
        self.gate = anyio.Event()

    async def complete(self, request: SampleRequest) -> Completion:
        if request.step >= self.step:
            await self.gate.wait()
        return await super().complete(request)


async def test_an_idle_stream_sends_heartbeats_and_a_gone_client_is_noticed_by_them(
    tmp_path: Path,
) -> None:
    client = Gated(step=2)
    async with Engine(log=tmp_path / "log.db", client=client) as engine:
        # aiohttp's own runner, without handler cancellation: only a write can tell that the
        # client left, and while the run is stalled the heartbeat is the only write.
        runner = web.AppRunner(create_service(engine, token=TOKEN, heartbeat_s=0.02))
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            async with aiohttp.ClientSession(base_url=base_url, headers=AUTH) as http:
                run_id = await start(http, task="hanoi", params={"disks": 3}, k=2)
                handle = engine.handle(run_id)
                assert handle is not None
                response = await http.get(f"/runs/{run_id}/events")
                stalled = await read_sse(response, until_comments=3)
                assert stalled.comments == [b": keep-alive"] * 3
                # Stalled in step 2, waiting for its samples' answers.
                assert stalled.messages[-1].type == "sample_requested"
                assert json.loads(stalled.messages[-1].data)["step"] == 2
                assert handle.statistics().subscribers == 1
                response.close()
                await until(lambda: handle.statistics().subscribers == 0)

                async with http.get(f"/runs/{run_id}/events") as response:
                    with_beats = await read_sse(response, until_comments=1)
                    client.gate.set()
                    rest = await read_sse(response)
                assert (await handle.result()).ok
                recorded = await logged(engine.log, run_id)
        finally:
            await runner.cleanup()
    joined = with_beats.messages + rest.messages
    assert [m.data for m in joined] == recorded


async def test_leaving_serve_ends_open_streams_cleanly(tmp_path: Path) -> None:
    client = Gated(step=1)
    async with (
        Engine(log=tmp_path / "log.db", client=client) as engine,
        aiohttp.ClientSession(headers=AUTH) as http,
    ):
        async with serve(engine, token=TOKEN, heartbeat_s=60.0) as server:
            async with http.post(
                f"{server.base_url}/runs", json={"task": "hanoi", "params": {"disks": 3}}
            ) as response:
                run_id = (await response.json())["run_id"]
            handle = engine.handle(run_id)
            assert handle is not None
            response = await http.get(f"{server.base_url}/runs/{run_id}/events")
            first = await read_sse(response, limit=1)
        # The stream was ended by the shutdown, not cut by the server's timeout: the body is
        # complete (a cut chunked body raises ClientPayloadError here).
        rest = await read_sse(response)
        assert rest.ended
        assert handle.statistics().subscribers == 0
        assert not handle.done
        assert first.messages[0].type == "run_started"
        client.gate.set()
        assert (await handle.result()).ok


class Closable(SimulatedModel):
    """A stand-in for a provider's client: the ideal model under another name, closable."""

    def __init__(self, name: str) -> None:
        super().__init__(preset="ideal", name=name)
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True


async def test_models_per_request(tmp_path: Path) -> None:
    made: list[Closable] = []

    def make_client(spec: str) -> Closable:
        made.append(Closable(spec))
        return made[-1]

    default = SimulatedModel(LATENT)
    path = tmp_path / "log.db"
    async with service(path, client=default, make_client=make_client) as (engine, http):
        plain = await start(http, task="hanoi", params={"disks": 2})
        named = await start(http, task="hanoi", params={"disks": 2}, model="fake:one")
        again = await start(http, task="hanoi", params={"disks": 2}, model="fake:one")
        tuned = await start(http, task="hanoi", params={"disks": 2}, p=1.0, latency_ms=0)
        async with http.post(
            "/runs", json={"task": "hanoi", "params": {"disks": 2}, "model": "fake:one", "p": 1}
        ) as r:
            assert r.status == 400
            assert "apply only to the simulated model" in (await r.json())["error"]
        for run_id in (plain, named, again, tuned):
            handle = engine.handle(run_id)
            if handle is not None:  # finished runs are forgotten by the engine
                assert (await handle.result()).ok
            async with http.get(f"/runs/{run_id}") as response:
                assert (await response.json())["status"] == "succeeded"
        assert engine.client is default  # a per-run client never leaks into the engine
        started: dict[str, RunStarted] = {}
        for run_id in (plain, named, again, tuned):
            async with aclosing(engine.log.read(run_id)) as events:
                first = await anext(events)
            assert isinstance(first, RunStarted)
            started[run_id] = first
    assert [c.model for c in made] == ["fake:one"]  # one client per model, reused
    assert made[0].closed  # and closed with the service
    assert started[plain].models == ["sim"]
    assert started[plain].model_params == default.describe()
    assert started[named].models == started[again].models == ["fake:one"]
    assert started[tuned].model_params["p"] == 1.0
    assert started[tuned].model_params["latency_ms"] == 0.0
    # Everything else about the tuned model is the service's default.
    assert started[tuned].model_params["malformed_rate"] == LATENT.malformed_rate


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_the_serve_command_serves_until_stopped_and_cancels_its_runs(
    tmp_path: Path, stop: signal.Signals
) -> None:
    path = tmp_path / "log.db"
    command = [
        sys.executable,
        "-c",
        "from maker.apps.service._service import serve_command; serve_command()",
        "--log",
        str(path),
        "--port",
        "0",
        "--latency-ms",
        "3",
        "--concurrency",
        "4",
    ]
    env = {**os.environ, "MAKER_TOKEN": TOKEN}
    async with await anyio.open_process(command, stderr=subprocess.PIPE, env=env) as process:
        assert process.stderr is not None
        line = b""
        with anyio.fail_after(20):
            while not line.endswith(b"\n"):
                line += await process.stderr.receive(1)
        found = re.search(r"listening on (http://127\.0\.0\.1:\d+) ", line.decode())
        assert found, line
        async with aiohttp.ClientSession(base_url=found.group(1), headers=AUTH) as http:
            run_id = await start(http, task="hanoi", params={"disks": 10})
            async with http.get(f"/runs/{run_id}/events") as response:
                await read_sse(response, limit=100)
        process.send_signal(stop)
        with anyio.fail_after(20):
            code = await process.wait()
        tail = b""
        async for chunk in process.stderr:
            tail += chunk
    assert code == 0, tail
    assert b"maker serve: stopped" in tail
    async with EventLog(path, mode="r") as log:
        info = await log.run(run_id)
    assert info.finished is not None
    assert info.finished.status == "cancelled"
    assert info.started.limits["concurrency"] == 4
    assert info.started.model_params["latency_ms"] == 3.0


async def test_cancel_right_after_start_cancels_the_run(tmp_path: Path) -> None:
    async with Engine(log=tmp_path / "log.db", client=SimulatedModel(LATENT)) as engine:
        handle = engine.start(Hanoi(6), seed=1)
        result = await handle.cancel()  # no checkpoint between start() and cancel()
    assert result.status == "cancelled"
