"""What guards ``maker mcp --http``, as ``maker serve`` is guarded: the bearer token (401 without
it, printed once when generated, logged nowhere), the Host and Origin checks against DNS
rebinding, ``--no-auth`` on loopback only, and the bounds of the tools that start runs (steps,
samples per step, worst case cost, runs going at once), each a one-line tool error naming
its bound. The real command runs as a subprocess; the official SDK's streamable HTTP client
talks to it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

pytest.importorskip("mcp")

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from .test_mcp import error_text, structured

pytestmark = pytest.mark.anyio

TOKEN = "mcp-guard-test-token-0123456789"

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "probe", "version": "1"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


@dataclass
class Running:
    """A ``maker mcp --http`` subprocess: its URL, the token it printed (if it made one), and
    its whole stderr once stopped."""

    url: str
    proc: subprocess.Popen[str]
    printed_token: str | None = None
    stderr: str = field(default="")


@contextmanager
def guarded_server(
    tmp_path: Path, *args: str, token: str | None = TOKEN, expect_line: str | None = None
) -> Iterator[Running]:
    """``maker mcp --http --port 0 ARGS`` with ``MAKER_TOKEN`` = ``token`` (None: unset, so
    the server makes one and prints it on the line after ``listening on``, or prints
    ``expect_line`` there)."""
    env = {k: v for k, v in os.environ.items() if k != "MAKER_TOKEN"}
    if token is not None:
        env["MAKER_TOKEN"] = token
    proc = subprocess.Popen(
        [sys.executable, "-m", "maker", "mcp", "--http", "--port", "0", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert proc.stderr is not None
    head = proc.stderr.readline()
    try:
        assert "listening on " in head, head + proc.stderr.read()
        running = Running(head.split("listening on ", 1)[1].split()[0], proc)
        if token is None or expect_line is not None:
            second = proc.stderr.readline()
            head += second
            if expect_line is not None:
                assert expect_line in second, second
            else:
                prefix = "maker mcp: token (send Authorization: Bearer TOKEN): "
                assert second.startswith(prefix), second
                running.printed_token = second[len(prefix) :].strip()
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        rest = proc.stderr.read()
        proc.stderr.close()
        if "running" in locals():
            running.stderr = head + rest


@asynccontextmanager
async def connect(url: str, headers: dict[str, str]) -> AsyncIterator[Client]:
    """The SDK's client over streamable HTTP, sending ``headers`` with every request."""
    async with (
        httpx2.AsyncClient(headers=headers) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def post_initialize(url: str, headers: dict[str, str]) -> httpx2.Response:
    """One raw ``initialize`` POST: what a client without the SDK (or a web page) sends."""
    async with httpx2.AsyncClient() as http:
        return await http.post(url, json=INITIALIZE, headers={**MCP_HEADERS, **headers})


async def refused_by_the_sdk_client(url: str, headers: dict[str, str]) -> bool:
    try:
        async with connect(url, headers) as client:
            await client.list_tools()
    except Exception:
        return True
    return False


# -- the token and the names -----------------------------------------------------------------


async def test_every_request_needs_the_token_and_a_host_of_the_server(tmp_path: Path) -> None:
    with guarded_server(tmp_path, "--log", "mcp.db", "--allow-host", "mcp.example") as server:
        url = server.url
        port = url.split(":")[2].split("/")[0]
        guesses = [{}, bearer(TOKEN + "x"), bearer(TOKEN[:-1]), {"Authorization": TOKEN}]
        for headers in guesses:
            answer = await post_initialize(url, headers)
            assert answer.status_code == 401, (headers, answer.text)
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
            assert TOKEN not in answer.text
            assert await refused_by_the_sdk_client(url, headers)
        assert (await post_initialize(url, bearer(TOKEN))).status_code == 200
        # Another name (DNS rebinding: evil.example resolving to 127.0.0.1), a page elsewhere.
        for headers, status in (
            ({"Host": f"evil.example:{port}"}, 421),
            ({"Host": f"localhost:{int(port) + 1}"}, 421),
            ({"Origin": "http://evil.example"}, 403),
            ({"Origin": f"http://evil.example:{port}"}, 403),
        ):
            answer = await post_initialize(url, {**bearer(TOKEN), **headers})
            assert answer.status_code == status, (headers, answer.text)
            assert await refused_by_the_sdk_client(url, {**bearer(TOKEN), **headers})
        for headers in ({"Host": f"localhost:{port}"}, {"Host": "mcp.example:8443"}):
            answer = await post_initialize(url, {**bearer(TOKEN), **headers})
            assert answer.status_code == 200, (headers, answer.text)
        async with connect(url, bearer(TOKEN)) as client:
            assert len((await client.list_tools()).tools) == 12
            health = structured(await client.call_tool("health", {"probe": False}))
    assert health["bounds"] == {
        "max_steps": 10_000,
        "max_samples": 100,
        "max_cost_usd": 10.0,
        "max_running": 4,
        "running": 0,
    }
    assert TOKEN not in json.dumps(health)
    assert TOKEN not in server.stderr  # from MAKER_TOKEN: never printed, never logged


async def test_a_generated_token_is_printed_once_and_no_auth_is_for_loopback_only(
    tmp_path: Path,
) -> None:
    with guarded_server(tmp_path, "--log", "mcp.db", token=None) as server:
        token = server.printed_token
        assert token is not None
        assert len(token) >= 32
        assert (await post_initialize(server.url, {})).status_code == 401
        async with connect(server.url, bearer(token)) as client:
            out = structured(await client.call_tool("kmin", {"p": 0.99}))
            bad = await client.call_tool("show", {"run_id": "nope"})
    assert out["k_min"] >= 1
    assert token not in error_text(bad)
    assert server.stderr.count(token) == 1
    env = {k: v for k, v in os.environ.items() if k != "MAKER_TOKEN"}
    for args, said in (
        (["--http", "--host", "0.0.0.0", "--no-auth"], "--no-auth is allowed only on a loopback"),
        (["--no-auth"], "--no-auth applies to --http only"),
        (["--http", "--allow-host", "mcp.example:http"], "not a host name or host:port"),
    ):
        with anyio.fail_after(60):
            done = await anyio.run_process(
                [sys.executable, "-m", "maker", "mcp", "--log", "mcp.db", *args],
                stdin=subprocess.DEVNULL,
                cwd=tmp_path,
                env=env,
                check=False,
            )
        stderr = done.stderr.decode()
        assert done.returncode == 2, stderr
        assert len(stderr.strip().splitlines()) == 1, stderr
        assert said in stderr
        assert "Traceback" not in stderr
    with guarded_server(
        tmp_path, "--log", "mcp.db", "--no-auth", token=None, expect_line="no token asked"
    ) as server:
        async with connect(server.url, {}) as client:
            assert structured(await client.call_tool("kmin", {"p": 0.99}))["k_min"] >= 1


# -- bounds ------------------------------------------------------------------------------------


async def test_the_tools_that_start_runs_are_bounded(tmp_path: Path) -> None:
    config = tmp_path / "mcp.toml"
    config.write_text(
        '[[models]]\nspec = "sim"\nlatency_ms = 100\n\n'
        # A price for the simulated model, so that the cost bound has something to bound.
        "[prices.sim]\ninput = 1.0\noutput = 100.0\n"
    )
    args = ["--config", str(config), "--log", "mcp.db"]
    bounds = ["--max-steps", "40", "--max-samples", "20", "--max-cost", "5", "--max-running", "1"]
    with guarded_server(tmp_path, *args, *bounds) as server:
        async with connect(server.url, bearer(TOKEN)) as client:

            async def run(params: dict[str, object]) -> CallToolResult:
                return await client.call_tool("run", {"task": "hanoi", **params})

            steps = await run({"params": {"disks": 6}})  # 63 steps
            samples = await run({"params": {"disks": 2}, "max_samples": 21})
            k = await run({"params": {"disks": 2}, "k": 21, "max_samples": 5})
            # 31 steps of up to 20 samples and a hedge each (the model waits for its answers,
            # so the run hedges), of 1000 tokens at $100/Mtok: up to $65.
            cost = await run({"params": {"disks": 5}, "max_samples": 20})
            calibration = await client.call_tool(
                "calibrate", {"prompts": [{"user": "q", "answer": "a"}], "samples": 41}
            )
            first = structured(await run({"params": {"disks": 3}, "max_samples": 3}))
            busy = await run({"params": {"disks": 2}, "max_samples": 3})
            vote = await client.call_tool("vote", {"user": "2+2?", "max_samples": 3})
            cancelled = structured(await client.call_tool("cancel", {"run_id": first["run_id"]}))
            again = structured(await run({"params": {"disks": 2}, "max_samples": 3, "wait": True}))
    assert "has up to 63 steps; this server runs at most 40 (--max-steps)" in error_text(steps)
    assert "max_samples: at most 20 on this server (--max-samples), got 21" in error_text(samples)
    assert "k: at most 20 on this server (--max-samples), got 21" in error_text(k)
    assert "could cost up to $65." in error_text(cost)
    assert "this server allows $5.00 (--max-cost)" in error_text(cost)
    assert "asks for 41 steps; this server runs at most 40" in error_text(calibration)
    for refused in (busy, vote):
        assert "the server is full: 1 runs going, at most 1 at once (--max-running)" in (
            error_text(refused)
        )
    for result in (steps, samples, k, cost, calibration, busy, vote):
        assert len(error_text(result).splitlines()) == 1
    assert cancelled["status"] == "cancelled"
    assert again["status"] == "succeeded"  # the place is free once the run has ended
    assert TOKEN not in server.stderr
    verify = await anyio.run_process(
        [sys.executable, "-m", "maker", "verify", str(tmp_path / "mcp.db")], check=False
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


async def test_sigterm_stops_the_http_server_cleanly_with_a_client_connected(
    tmp_path: Path,
) -> None:
    # A client holds its session open and a run is going: SIGTERM stops the server, which
    # closes the session, records the run as cancelled (resumable) and exits 0, with no
    # traceback (uvicorn's shutdown and the loop's cancellation used to race on the signal).
    with guarded_server(tmp_path) as server:
        async with connect(server.url, bearer(TOKEN)) as client:
            started = await client.call_tool(
                "run", {"task": "hanoi", "params": {"disks": 12}, "k": 2}
            )
            run_id = structured(started)["run_id"]
            server.proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                code = await anyio.to_thread.run_sync(server.proc.wait)
    assert code == 0
    assert "Traceback" not in server.stderr
    assert "ERROR" not in server.stderr
    done = await anyio.run_process(
        [sys.executable, "-m", "maker", "show", "maker-mcp.db", "--run", run_id, "--json"],
        cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "cancelled"
