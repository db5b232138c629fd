"""What guards ``maker serve``: the token, the Host and Origin checks, JSON-only bodies, the
bounds of requests and of the server (429), the prompt and model gates, a request's model kept
on the configured base URL, short error quotes, a strict Last-Event-ID; then a fuzz test of
requests and a bounded load test.

Every server here is real (127.0.0.1, an ephemeral port) and so is every client (aiohttp).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.from_thread
import anyio.to_thread
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maker import Completion, Engine, SampleRequest, SimulatedModel
from maker.apps.serve_sim._serve_sim import SimServerConfig, serve_sim
from maker.apps.service import Server, ServiceLimits, serve
from maker.apps.service._service import request_models
from maker.clients import close_client

pytestmark = pytest.mark.anyio

TOKEN = "guard-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HANOI = {"task": "hanoi", "params": {"disks": 2}, "k": 1, "max_samples": 1}


class Gated(SimulatedModel):
    """The ideal simulated model, holding every answer until the gate opens: runs that stay."""

    def __init__(self) -> None:
        super().__init__(preset="ideal")
        self.gate = anyio.Event()

    async def complete(self, request: SampleRequest) -> Completion:
        await self.gate.wait()
        return await super().complete(request)


@asynccontextmanager
async def guarded(
    path: Path, client: Any = None, **options: Any
) -> AsyncIterator[tuple[Engine, Server, aiohttp.ClientSession]]:
    """An engine on ``path`` served with :data:`TOKEN`; the session sends no token itself."""
    async with (
        Engine(log=path, client=client or SimulatedModel(preset="ideal")) as engine,
        serve(engine, token=TOKEN, **options) as server,
        aiohttp.ClientSession(base_url=server.base_url) as http,
    ):
        yield engine, server, http


async def answer(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, dict[str, Any], Any]:
    """Status, headers and JSON body of one request."""
    async with http.request(method, url, **kwargs) as response:
        return response.status, dict(response.headers), await response.json()


async def test_every_endpoint_asks_for_the_token_and_never_echoes_it(tmp_path: Path) -> None:
    async with guarded(tmp_path / "log.db") as (_, _, http):
        status, _, body = await answer(http, "POST", "/runs", json=HANOI, headers=AUTH)
        assert status == 201
        run_id = body["run_id"]
        guess = "guard-test-token-0123456789x"  # the token and one more character
        for method, url in [
            ("GET", "/runs"),
            ("POST", "/runs"),
            ("GET", f"/runs/{run_id}"),
            ("GET", f"/runs/{run_id}/events"),
            ("POST", f"/runs/{run_id}/cancel"),
            ("GET", "/runs/nope"),
        ]:
            for headers in (
                {},
                {"Authorization": f"Bearer {guess}"},
                {"Authorization": f"Bearer {TOKEN[:-1]}"},
                {"Authorization": TOKEN},  # no scheme
                {"Authorization": f"Basic {TOKEN}"},
            ):
                kwargs: dict[str, Any] = {"headers": headers}
                if method == "POST":
                    kwargs["json"] = HANOI
                async with http.request(method, url, **kwargs) as response:
                    text = await response.text()
                assert response.status == 401, (method, url, headers)
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                assert TOKEN[:12] not in text
                assert "Access-Control-Allow-Origin" not in response.headers
        status, _, listed = await answer(http, "GET", "/runs", headers=AUTH)
        assert status == 200
        assert [run["run_id"] for run in listed["runs"]] == [run_id]  # no 401 started a run


async def test_a_host_or_origin_of_another_name_is_refused(tmp_path: Path) -> None:
    async with guarded(tmp_path / "log.db", allowed_hosts=["proxy.example"]) as (_, srv, http):
        port = srv.port
        for host in (
            f"evil.example:{port}",  # DNS rebinding: a name that resolves to 127.0.0.1
            f"127.0.0.1:{port + 1}",
            "127.0.0.1",
            f"localhost.evil.example:{port}",
            "",
            "[::1",
            f"127.0.0.1:{port}:{port}",
        ):
            headers = {**AUTH, "Host": host}
            status, _, body = await answer(http, "GET", "/runs", headers=headers)
            assert status == 421, host
            assert "Host" in body["error"]
        for host in (
            f"127.0.0.1:{port}",
            f"localhost:{port}",
            f"LOCALHOST.:{port}",
            "proxy.example",
        ):
            status, _, _ = await answer(http, "GET", "/runs", headers={**AUTH, "Host": host})
            assert status == 200, host
        for origin in ("http://evil.example", f"http://127.0.0.1:{port + 1}", "null", "file://"):
            headers = {**AUTH, "Origin": origin}
            status, _, body = await answer(http, "POST", "/runs", json=HANOI, headers=headers)
            assert status == 403, origin
            assert "cross-origin" in body["error"]
        same = {**AUTH, "Origin": f"http://127.0.0.1:{port}"}
        status, _, _ = await answer(http, "POST", "/runs", json=HANOI, headers=same)
        assert status == 201


async def test_a_cross_origin_style_text_plain_post_is_refused(tmp_path: Path) -> None:
    """What a page may send anywhere without a preflight: text/plain, a form. Even with the
    token (and with none asked, on loopback), no run starts; no answer allows other origins."""
    data = json.dumps(HANOI)
    async with guarded(tmp_path / "log.db") as (_, _, http):
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "text/json"):
            headers = {**AUTH, "Content-Type": content_type}
            status, head, body = await answer(http, "POST", "/runs", data=data, headers=headers)
            assert status == 415, content_type
            assert "application/json" in body["error"]
            assert "Access-Control-Allow-Origin" not in head
        async with http.options("/runs", headers={**AUTH, "Origin": "http://evil.example"}) as r:
            assert r.status == 403  # a preflight gets no permission either
            assert "Access-Control-Allow-Origin" not in r.headers
        status, _, listed = await answer(http, "GET", "/runs", headers=AUTH)
        assert listed == {"runs": []}
    async with (
        Engine(log=tmp_path / "open.db", client=SimulatedModel(preset="ideal")) as engine,
        serve(engine, auth=False) as server,
        aiohttp.ClientSession(base_url=server.base_url) as http,
    ):
        assert server.token is None
        plain = {"Content-Type": "text/plain"}
        status, _, _ = await answer(http, "POST", "/runs", data=data, headers=plain)
        assert status == 415
        status, _, _ = await answer(http, "POST", "/runs", json=HANOI)
        assert status == 201  # no token asked, on loopback


async def test_no_auth_is_refused_off_loopback(tmp_path: Path) -> None:
    async with Engine(log=tmp_path / "log.db", client=SimulatedModel()) as engine:
        with pytest.raises(Exception, match="only on a loopback address"):
            async with serve(engine, host="0.0.0.0", auth=False):
                pass
        with pytest.raises(Exception, match="at least 16 characters"):
            async with serve(engine, token="short"):
                pass


async def test_a_full_service_answers_429_with_retry_after(tmp_path: Path) -> None:
    client = Gated()
    limits = ServiceLimits(max_running=2, max_queued=1, retry_after_s=3)
    async with guarded(tmp_path / "log.db", client=client, limits=limits) as (engine, _, http):
        ids = []
        for _ in range(3):
            status, _, body = await answer(http, "POST", "/runs", json=HANOI, headers=AUTH)
            assert status == 201
            ids.append(body["run_id"])
        status, head, body = await answer(http, "POST", "/runs", json=HANOI, headers=AUTH)
        assert status == 429
        assert head["Retry-After"] == "3"
        assert "2 runs running, 1 queued" in body["error"]
        _, _, state = await answer(http, "GET", f"/runs/{ids[2]}", headers=AUTH)
        assert state["status"] == "queued"
        _, _, listed = await answer(http, "GET", "/runs", headers=AUTH)
        assert [run["status"] for run in listed["runs"]] == ["running", "running", "queued"]
        # A queued run cancelled is recorded as cancelled before its first step: resumable.
        status, _, cancelled = await answer(http, "POST", f"/runs/{ids[2]}/cancel", headers=AUTH)
        assert status == 200
        assert cancelled["status"] == "cancelled"
        status, _, body = await answer(http, "POST", "/runs", json=HANOI, headers=AUTH)
        assert status == 201  # its place in the queue is free again
        queued = body["run_id"]
        async with http.get(f"/runs/{queued}/events", headers=AUTH) as response:
            assert response.status == 200  # a stream of a queued run waits for its start
            client.gate.set()
            lines = (await response.read()).decode().splitlines()
        assert "event: run_started" in lines
        assert lines[-2].startswith("data: ")
        assert '"status":"succeeded"' in lines[-2]
        for run_id in ids[:2]:
            handle = engine.handle(run_id)
            if handle is not None:
                assert (await handle.result()).ok
        _, _, listed = await answer(http, "GET", "/runs", headers=AUTH)
        statuses = {run["run_id"]: run["status"] for run in listed["runs"]}
    assert statuses == {
        ids[0]: "succeeded",
        ids[1]: "succeeded",
        ids[2]: "cancelled",
        queued: "succeeded",
    }


async def test_per_request_bounds(tmp_path: Path) -> None:
    limits = ServiceLimits(max_steps=100, max_samples=10, max_body_bytes=2048)
    async with guarded(tmp_path / "log.db", limits=limits) as (_, _, http):
        for body, expected in [
            (
                {"task": "hanoi", "params": {"disks": 7}, "max_samples": 5},
                "up to 127 steps; this service runs at most 100",
            ),
            ({"task": "hanoi", "max_samples": 11}, "max_samples: at most 10"),
            ({"task": "hanoi", "k": 11, "max_samples": 11}, "k: at most 10"),
            ({"task": "hanoi", "max_samples": 5, "speculative": 50}, "speculative: at most 10"),
            ({"task": "hanoi", "max_samples": 5, "latency_ms": 1e9}, "latency_ms: at most 60000"),
            ({"task": "hanoi", "max_samples": 5, "seed": -1}, "seed: must be in 0..2**63-1"),
        ]:
            status, _, answered = await answer(http, "POST", "/runs", json=body, headers=AUTH)
            assert status == 400, body
            assert expected in answered["error"], answered
        big = {"task": "hanoi", "params": {"disks": 2}, "pad": "x" * 4000}
        async with http.post("/runs", json=big, headers=AUTH) as response:
            assert response.status == 413


async def test_the_worst_case_cost_is_bounded_when_the_price_is_known(tmp_path: Path) -> None:
    priced = SimulatedModel(preset="ideal", name="openai:gpt-4o")  # a listed price
    limits = ServiceLimits(max_cost_usd=1.0)
    async with guarded(tmp_path / "log.db", client=priced, limits=limits) as (_, _, http):
        body = {"task": "hanoi", "params": {"disks": 6}, "k": 3, "max_samples": 100}
        status, _, answered = await answer(http, "POST", "/runs", json=body, headers=AUTH)
        assert status == 400
        found = re.search(r"could cost up to \$(\d+\.\d\d) on openai:gpt-4o", answered["error"])
        assert found, answered
        # 63 steps of 100 samples, each at least its 1000 output tokens at $10/Mtok.
        assert float(found.group(1)) >= 63 * 100 * 1000 * 10 / 1e6
        assert "lower max_samples" in answered["error"]
        # A hedged run may draw one more sample beside each step's start: in the bound.
        hedged = {**body, "hedge": 0.9}
        status, _, with_hedges = await answer(http, "POST", "/runs", json=hedged, headers=AUTH)
        assert status == 400
        assert "63 steps of up to 100 samples, 1 hedged" in with_hedges["error"]
        more = re.search(r"could cost up to \$(\d+\.\d\d)", with_hedges["error"])
        assert more
        assert float(more.group(1)) == pytest.approx(float(found.group(1)) * 101 / 100, abs=0.01)
        small = {"task": "hanoi", "params": {"disks": 2}, "k": 1, "max_samples": 3}
        status, _, _ = await answer(http, "POST", "/runs", json=small, headers=AUTH)
        assert status == 201


async def test_prompt_tasks_only_when_allowed(tmp_path: Path) -> None:
    body = {"task": "prompt", "params": {"prompts": ["say 1"], "answer": r"(\d)"}, "k": 1}
    async with guarded(tmp_path / "log.db") as (_, _, http):
        status, _, answered = await answer(http, "POST", "/runs", json=body, headers=AUTH)
        assert status == 403
        assert "--allow-prompts" in answered["error"]
    async with guarded(tmp_path / "other.db", allow_prompts=True) as (_, _, http):
        status, _, answered = await answer(http, "POST", "/runs", json=body, headers=AUTH)
        assert status != 403, answered  # the gate is open; the task's own checks remain


async def test_a_clients_patterns_run_on_re2_whatever_the_body_asks(tmp_path: Path) -> None:
    """ReDoS: a catastrophic pattern is compiled by RE2 (linear time) even when the body asks
    for Python's re; what RE2 cannot run is a 400 naming it; the server keeps answering."""
    prompts = [{"system": "", "user": "1111111111111111111111111111111111111111"}]
    catastrophic = {
        "task": "prompt",
        "params": {"prompts": prompts, "pattern": r"(\d+)+!", "engine": "re"},
        "k": 1,
        "max_samples": 2,
    }
    lookahead = {**catastrophic, "params": {"prompts": prompts, "pattern": r"1(?=1)"}}
    async with guarded(tmp_path / "log.db", allow_prompts=True) as (engine, _, http):
        status, _, started = await answer(http, "POST", "/runs", json=catastrophic, headers=AUTH)
        assert status == 201, started
        handle = engine.handle(started["run_id"])
        if handle is not None:
            await handle.result()
        status, _, refused = await answer(http, "POST", "/runs", json=lookahead, headers=AUTH)
        assert status == 400
        assert "RE2" in refused["error"]
        status, _, _ = await answer(http, "GET", "/runs", headers=AUTH)
        assert status == 200
        info = await engine.log.run(started["run_id"])
    assert info.started.task_params["engine"] == "re2"


async def test_a_requested_model_is_reached_at_the_configured_base_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--allow-models`` with ``--base-url``: openai:gpt-4o goes to that address (serve-sim
    here, which records the model it was asked for), never to the provider's own endpoint;
    another provider's model is refused rather than sent elsewhere with the server's key."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local-only")
    async with serve_sim(SimServerConfig(sim="ideal")) as sim:
        base_url = sim.base_url + "/v1"
        factory = request_models("openai:local-model", base_url, 10.0)
        default = factory("openai:local-model")
        async with guarded(tmp_path / "log.db", client=default, make_client=factory) as (
            engine,
            _,
            http,
        ):
            body = {**HANOI, "model": "openai:gpt-4o"}
            status, _, started = await answer(http, "POST", "/runs", json=body, headers=AUTH)
            assert status == 201, started
            handle = engine.handle(started["run_id"])
            if handle is not None:
                assert (await handle.result()).ok
            other = {**HANOI, "model": "anthropic:claude-sonnet-4-5"}
            status, _, refused = await answer(http, "POST", "/runs", json=other, headers=AUTH)
            assert status == 400
            assert "at its --base-url only" in refused["error"]
        models = {request.model for request in sim.stats.requests}
        await close_client(default)
    assert "gpt-4o" in models  # dialled at the configured address


async def test_error_bodies_quote_a_short_prefix(tmp_path: Path) -> None:
    long = "A" * 5000
    async with guarded(tmp_path / "log.db") as (_, _, http):
        for body in (
            {"task": long},
            {"task": "hanoi", long: 1},
            {"task": "hanoi", "params": {long: 1}},
        ):
            status, _, answered = await answer(http, "POST", "/runs", json=body, headers=AUTH)
            assert status == 400
            assert "A" * 81 not in answered["error"], answered
            assert len(answered["error"]) < 400
        headers = {**AUTH, "Last-Event-ID": "9" * 5000}
        status, _, answered = await answer(http, "GET", f"/runs/{'b' * 5000}", headers=headers)
        assert status == 404
        assert "b" * 81 not in answered["error"]


async def test_a_bad_last_event_id_is_400_not_a_broken_stream(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with guarded(tmp_path / "log.db") as (engine, _, http):
        _, _, started = await answer(http, "POST", "/runs", json=HANOI, headers=AUTH)
        run_id = started["run_id"]
        handle = engine.handle(run_id)
        if handle is not None:
            await handle.result()
        url = f"/runs/{run_id}/events"
        for bad in ("99999999999999999999999", "-1", "-5", "1.5", "abc", "+3", "1_0", "٣", "0x1"):
            headers = {**AUTH, "Last-Event-ID": bad}
            status, _, answered = await answer(http, "GET", url, headers=headers)
            assert status == 400, bad
            assert "Last-Event-ID/after" in answered["error"]
            status, _, _ = await answer(http, "GET", url, params={"after": bad}, headers=AUTH)
            assert status == 400, bad
        async with http.get(url, headers={**AUTH, "Last-Event-ID": "2"}) as response:
            assert response.status == 200
            text = await response.text()
        assert text.startswith("id: 3\n")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@contextmanager
def server_log() -> Iterator[list[logging.LogRecord]]:
    """Every warning or error logged while the block runs (aiohttp logs a handler's crash,
    with its traceback, at ERROR)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield records
    finally:
        root.removeHandler(handler)


_HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF).filter(
        lambda c: not 0x7F <= ord(c) < 0xA0
    ),
    max_size=60,
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
_RUN_BODY = st.fixed_dictionaries(
    {"task": st.sampled_from(["hanoi", "arithmetic", "prompt", "chess", ""])},
    optional={
        "params": st.dictionaries(
            st.sampled_from(["disks", "steps", "digits", "seed", "prompts", "answer", "x"]), _JSON
        ),
        "k": st.integers(-5, 200) | _JSON,
        "seed": st.integers(-(2**70), 2**70),
        "model": st.sampled_from(["sim", "openai:gpt-4o", "x", ""]) | st.text(max_size=20),
        "p": st.floats(allow_nan=False) | _JSON,
        "latency_ms": st.floats(-10, 100, allow_nan=False),
        "max_samples": st.integers(-5, 200),
        "speculative": st.integers(-5, 200),
        "pipeline": st.integers(-5, 100) | _JSON,
        "hedge": st.floats(-1, 2, allow_nan=False) | _JSON,
        "hedge_min_s": st.floats(-1, 10, allow_nan=False),
    },
)


@pytest.mark.slow  # 200 requests through hypothesis: about 10 s
async def test_fuzzed_requests_get_no_5xx_and_leave_no_traceback(tmp_path: Path) -> None:
    limits = ServiceLimits(max_steps=64, max_running=4, max_queued=8)
    with server_log() as records:
        async with guarded(tmp_path / "log.db", limits=limits) as (engine, _, http):
            _, _, started = await answer(http, "POST", "/runs", json=HANOI, headers=AUTH)
            known = started["run_id"]
            statuses: list[int] = []

            async def send(
                method: str,
                path: str,
                headers: dict[str, str],
                query: dict[str, str],
                body: bytes | None,
            ) -> int:
                with anyio.fail_after(10):
                    async with http.request(
                        method, path, headers=headers, params=query, data=body
                    ) as response:
                        if not response.headers.get("Content-Type", "").startswith(
                            "text/event-stream"
                        ):
                            await response.read()
                        return response.status

            @settings(
                max_examples=200,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
                database=None,
                # The same 200 requests every run: drawn afresh, they missed an authorised
                # POST /runs (so a 400) about one run in four, and the check below failed.
                derandomize=True,
            )
            @given(
                method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]),
                path=st.sampled_from(
                    ["/runs", f"/runs/{known}", f"/runs/{known}/events", f"/runs/{known}/cancel"]
                )
                | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30).map(
                    lambda tail: "/runs/" + tail.replace("?", "").replace("#", "")
                ),
                auth=st.sampled_from([AUTH, {}, {"Authorization": "Bearer x"}]),
                headers=st.dictionaries(
                    st.sampled_from(["Last-Event-ID", "Origin", "Accept", "X-Any", "Content-Type"]),
                    _HEADER_TEXT,
                    max_size=3,
                ),
                json_type=st.booleans(),
                query=st.dictionaries(
                    st.sampled_from(["after", "x", "token"]), _HEADER_TEXT, max_size=2
                ),
                body=st.none()
                | st.just(json.dumps(HANOI).encode())
                | st.binary(max_size=200)
                | _JSON.map(lambda v: json.dumps(v).encode())
                | _RUN_BODY.map(lambda v: json.dumps(v).encode()),
            )
            def one_request(
                method: str,
                path: str,
                auth: dict[str, str],
                headers: dict[str, str],
                json_type: bool,
                query: dict[str, str],
                body: bytes | None,
            ) -> None:
                sent = {**headers, **auth}
                if json_type:
                    sent["Content-Type"] = "application/json"
                status = anyio.from_thread.run(send, method, path, sent, query, body)
                statuses.append(status)
                assert status < 500, (method, path, sent, query, body)

            await anyio.to_thread.run_sync(one_request)
            status, _, _ = await answer(http, "GET", "/runs", headers=AUTH)
            assert status == 200  # still answering
            assert engine.statistics().runs_active <= limits.max_running
    assert len(statuses) >= 200
    assert {200, 400, 401}.issubset(set(statuses)), sorted(set(statuses))
    assert [r.getMessage() for r in records] == []


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


RSS_BOUND_MIB = 400
"""The server's resident memory under load: it holds a few runs and a queue, never 200."""


@pytest.mark.slow  # a server process and 200 requests at once: about 10 s
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
async def test_200_concurrent_runs_against_a_bounded_server(tmp_path: Path) -> None:
    """Every request gets 201 or 429; the accepted runs finish; ``GET /runs`` answers within
    a second all along (measured; the bound is the issue's, generous for a few tiny runs);
    the server's RSS stays under :data:`RSS_BOUND_MIB`."""
    path = tmp_path / "log.db"
    command = [
        sys.executable, "-m", "maker", "serve", "--log", str(path), "--port", "0",
        "--latency-ms", "2", "--max-running", "4", "--max-queued", "8",
    ]  # fmt: skip
    env = {**os.environ, "MAKER_TOKEN": TOKEN}
    async with await anyio.open_process(command, stderr=subprocess.PIPE, env=env) as process:
        assert process.stderr is not None
        line = b""
        with anyio.fail_after(20):
            while not line.endswith(b"\n"):
                line += await process.stderr.receive(1)
        found = re.search(r"listening on (http://127\.0\.0\.1:\d+) ", line.decode())
        assert found, line
        connector = aiohttp.TCPConnector(limit=0)
        latencies: list[float] = []
        peak = [rss_kib(process.pid)]
        done = anyio.Event()
        async with aiohttp.ClientSession(
            base_url=found.group(1), headers=AUTH, connector=connector
        ) as http:

            async def watch() -> None:
                while not done.is_set():
                    began = time.monotonic()
                    async with http.get("/runs") as response:
                        assert response.status == 200
                        await response.read()
                    latencies.append(time.monotonic() - began)
                    peak[0] = max(peak[0], rss_kib(process.pid))
                    await anyio.sleep(0.05)

            answers: list[tuple[int, dict[str, Any], str]] = []

            async def post() -> None:
                body = {"task": "hanoi", "params": {"disks": 4}, "k": 2}
                async with http.post("/runs", json=body) as response:
                    answers.append((response.status, dict(response.headers), await response.text()))

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(watch)
                    async with anyio.create_task_group() as burst:
                        for _ in range(200):
                            burst.start_soon(post)
                    accepted = [json.loads(text)["run_id"] for s, _, text in answers if s == 201]
                    pending = set(accepted)
                    while pending:
                        async with http.get("/runs") as response:
                            runs = (await response.json())["runs"]
                        pending = {
                            r["run_id"] for r in runs if r["status"] in ("running", "queued")
                        } & set(accepted)
                        await anyio.sleep(0.1)
                    done.set()
            async with http.get("/runs") as response:
                final = {r["run_id"]: r["status"] for r in (await response.json())["runs"]}
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(20):
            await process.wait()
        tail = b""
        async for chunk in process.stderr:
            tail += chunk
    statuses = sorted({status for status, _, _ in answers})
    assert len(answers) == 200
    assert set(statuses) <= {201, 429}, statuses
    assert 12 <= len(accepted) < 200  # 4 running and 8 queued at least; the rest turned away
    for status, headers, _ in answers:
        if status == 429:
            assert int(headers["Retry-After"]) > 0
    assert [final[run_id] for run_id in accepted] == ["succeeded"] * len(accepted)
    assert len(final) == len(accepted)  # a refused request recorded nothing
    assert latencies
    assert max(latencies) < 1.0, max(latencies)
    assert peak[0] < RSS_BOUND_MIB * 1024, peak[0]
    assert b"Traceback" not in tail


async def test_the_command_prints_a_generated_token_once_and_refuses_no_auth_off_loopback(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MAKER_TOKEN"}
    command = [sys.executable, "-m", "maker", "serve", "--log", str(tmp_path / "log.db")]
    refused = await anyio.run_process(
        [*command, "--host", "0.0.0.0", "--no-auth"], env=env, check=False
    )
    assert refused.returncode == 2
    assert b"--no-auth is allowed only on a loopback --host" in refused.stderr
    assert b"Traceback" not in refused.stderr
    short = await anyio.run_process(command, env={**env, "MAKER_TOKEN": "abc"}, check=False)
    assert short.returncode == 2
    assert b"at least 16 characters" in short.stderr
    async with await anyio.open_process(
        [*command, "--port", "0"], stderr=subprocess.PIPE, env=env
    ) as process:
        assert process.stderr is not None
        head = b""
        with anyio.fail_after(20):
            while head.count(b"\n") < 2:
                head += await process.stderr.receive(1)
        found = re.search(r"listening on (http://127\.0\.0\.1:\d+) ", head.decode())
        token = re.search(r"token \(send Authorization: Bearer TOKEN\): (\S+)\n", head.decode())
        assert found, head
        assert token, head
        async with aiohttp.ClientSession(base_url=found.group(1)) as http:
            async with http.get("/runs") as response:
                assert response.status == 401
            bearer = {"Authorization": f"Bearer {token.group(1)}"}
            async with http.post("/runs", json=HANOI, headers=bearer) as response:
                assert response.status == 201
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(20):
            await process.wait()
        rest = b""
        async for chunk in process.stderr:
            rest += chunk
    assert (head + rest).count(token.group(1).encode()) == 1  # printed once, logged nowhere
