"""The MCP server, driven by the official MCP SDK's own client over stdio (a subprocess) and
over streamable HTTP: tool listing and schemas, vote against the simulated model checked
against the log, validate, kmin, run with progress, bad input, and a clean stdout."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import IO, Any

import anyio
import pytest

pytest.importorskip("mcp")

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from events import EventLog, SampleReceived, StepDecided, VoteCounted
from maker.apps.serve_sim._serve_sim import SimServerConfig, serve_sim
from maker.tasks import make_task

pytestmark = pytest.mark.anyio

TOOL_NAMES = {
    "vote",
    "validate",
    "kmin",
    "plan",
    "calibrate",
    "run",
    "run_status",
    "cancel",
    "resume",
    "show",
    "replay_verify",
    "health",
}


_PYTHONPATH = {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}


@asynccontextmanager
async def stdio_server(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[Client]:
    """``maker mcp`` as a subprocess on stdio, its stderr kept in tmp_path/stderr.txt."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "maker", "mcp", *args],
        # The SDK starts the server with a minimal environment: PYTHONPATH goes along, so that
        # the server is the checkout under test, not another one installed.
        env={**_PYTHONPATH, **(env or {}), "PYTHONUNBUFFERED": "1"},
        cwd=str(tmp_path),
    )
    with (tmp_path / "stderr.txt").open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog)) as client:
            yield client


def structured(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def error_text(result: CallToolResult) -> str:
    assert result.is_error, result.structured_content
    text = result.content[0]
    assert text.type == "text"
    return text.text


def arithmetic_prompt() -> tuple[str, str, str]:
    """A step prompt the simulated model understands, and its right answer."""
    task = make_task("arithmetic", {"steps": 5, "digits": 4, "seed": 3})
    state = task.initial_state()
    prompt = task.prompt(state)
    return prompt.system, prompt.user, str(task.oracle(state))


RESULT = r"result\s*=\s*(-?\d+)"


async def read_run(log: Path, run_id: str) -> list[Any]:
    async with EventLog(log, mode="r") as events:
        return [e async for e in events.read(run_id)]


# -- listing ---------------------------------------------------------------------------------


async def test_every_tool_is_listed_with_a_described_closed_schema(tmp_path: Path) -> None:
    async with stdio_server(tmp_path, "--log", "mcp.db") as client:
        listed = await client.list_tools()
    tools = {tool.name: tool for tool in listed.tools}
    assert set(tools) == TOOL_NAMES
    for tool in tools.values():
        schema = tool.input_schema
        assert tool.description, tool.name
        assert schema["type"] == "object", tool.name
        assert schema["additionalProperties"] is False, tool.name
        for obj in (schema, *schema.get("$defs", {}).values()):
            for name, prop in obj["properties"].items():
                assert prop.get("description"), (tool.name, name)
    vote = tools["vote"].input_schema
    assert vote["required"] == ["user"]
    k = next(o for o in vote["properties"]["k"]["anyOf"] if o.get("type") == "integer")
    assert (k["minimum"], k["maximum"]) == (1, 100)
    p = next(o for o in vote["properties"]["p"]["anyOf"] if o.get("type") == "number")
    assert (p["exclusiveMinimum"], p["exclusiveMaximum"]) == (0.5, 1.0)
    # Nested objects are closed too: a calibration prompt rejects unknown fields.
    item = tools["calibrate"].input_schema["$defs"]["PromptItem"]
    assert item["additionalProperties"] is False
    assert item["required"] == ["user", "answer"]


# -- vote ------------------------------------------------------------------------------------


async def test_vote_on_the_simulated_model_wins_and_matches_the_log(tmp_path: Path) -> None:
    system, user, right = arithmetic_prompt()
    async with stdio_server(tmp_path, "--log", "mcp.db") as client:
        result = await client.call_tool(
            "vote", {"system": system, "user": user, "pattern": RESULT, "k": 3, "seed": 11}
        )
        out = structured(result)
        verified = structured(await client.call_tool("replay_verify", {"run_id": out["run_id"]}))
    assert out["status"] == "succeeded"
    assert out["winner"]["answer"] == right
    assert f"result = {right}" in out["winner"]["text"]
    assert out["votes"][json.dumps(right)] >= 3
    assert out["samples"] == sum(out["votes"].values()) + sum(out["red_flags"].values())
    assert out["model"] == "sim"
    assert out["seed"] == 11
    assert out["k"] == 3
    assert out["output_tokens"] > 0
    assert out["input_tokens"] > 0

    events = await read_run(tmp_path / "mcp.db", out["run_id"])
    decided = [e for e in events if isinstance(e, StepDecided)]
    assert len(decided) == 1
    assert decided[0].votes == out["votes"]
    assert decided[0].winner == json.dumps(right)
    received = [e for e in events if isinstance(e, SampleReceived)]
    assert len(received) == out["samples"]
    first = next(
        e for e in events if isinstance(e, VoteCounted) and e.candidate == json.dumps(right)
    )
    assert next(e.text for e in received if e.sample_id == first.sample_id) == out["winner"]["text"]
    assert verified["ok"] is True


async def test_vote_takes_k_from_a_target_and_p_and_parses_json_by_schema(tmp_path: Path) -> None:
    system, user, right = arithmetic_prompt()
    schema = {"type": "integer"}
    async with stdio_server(tmp_path, "--log", "mcp.db") as client:
        out = structured(
            await client.call_tool(
                "vote",
                {
                    "system": system,
                    "user": user,
                    "pattern": RESULT,
                    "schema": schema,
                    "target": 0.999,
                    "p": 0.9,
                    "seed": 2,
                },
            )
        )
    assert out["k"] == 4  # Eq 14 with s = 1: ceil(ln(1/0.999 - 1) / ln(1/9)) = 4
    assert out["winner"]["answer"] == int(right)


# -- validate --------------------------------------------------------------------------------


async def test_validate_names_every_flag_with_its_reason(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    async with stdio_server(tmp_path, "--log", "mcp.db") as client:

        async def flags(**args: Any) -> list[str]:
            out = structured(await client.call_tool("validate", args))
            return sorted(f["reason"] for f in out["flags"])

        assert await flags(response="result = 7", pattern=RESULT, output_tokens=20) == []
        assert await flags(response="result = 7", finish_reason="length", output_tokens=5) == [
            "truncated"
        ]
        assert await flags(response="result = 7", output_tokens=751) == ["too_long"]
        assert await flags(response="the answer is seven", pattern=RESULT) == ["malformed"]
        assert await flags(response='{"n": "seven"}', schema=schema) == ["schema"]
        assert await flags(
            response="no answer", pattern=RESULT, output_tokens=900, finish_reason="length"
        ) == ["malformed", "too_long", "truncated"]
        ok = structured(
            await client.call_tool("validate", {"response": '{"n": 7}', "schema": schema})
        )
    assert ok["answer"] == {"n": 7}
    assert ok["tokens_estimated"] is True


# -- formulas --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [(0.3571, 29), (0.0022, 3), (0.0018, 3), (0.0358, 6), (0.1839, 12), (0.2342, 15)],
)
async def test_kmin_reproduces_the_papers_table(
    tmp_path: Path, error: float, expected: int
) -> None:
    async with stdio_server(tmp_path, "--log", "mcp.db") as client:
        out = structured(
            await client.call_tool("kmin", {"p": 1 - error, "target": 0.95, "steps": 2**20 - 1})
        )
    assert out["k_min"] == expected
    assert out["p_run"] >= 0.95


# -- runs ------------------------------------------------------------------------------------


async def test_run_follows_to_completion_with_progress_notifications(tmp_path: Path) -> None:
    seen: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))

    async with stdio_server(tmp_path, "--log", "mcp.db") as client:
        out = structured(
            await client.call_tool(
                "run",
                {"task": "hanoi", "params": {"disks": 6}, "k": 2, "seed": 4, "wait": True},
                progress_callback=on_progress,
            )
        )
        shown = structured(await client.call_tool("show", {}))
    assert out["status"] == "succeeded"
    assert out["steps"] == 63
    assert out["active"] is False
    assert seen, "no progress notification arrived"
    assert all(total == 63 for _, total in seen)
    done = [d for d, _ in seen]
    assert done == sorted(done)
    assert done[-1] == 63
    assert [r["run_id"] for r in shown["runs"]] == [out["run_id"]]


async def test_run_takes_pipeline_and_hedge_into_the_runs_policy(tmp_path: Path) -> None:
    run = {"task": "hanoi", "params": {"disks": 3}, "k": 2, "wait": True}
    async with stdio_server(tmp_path, "--log", "mcp.db") as client:
        on = structured(
            await client.call_tool(
                "run", {**run, "pipeline": 3, "hedge": 0.9, "hedge_min_s": 0.5, "seed": 1}
            )
        )
        off = structured(await client.call_tool("run", {**run, "pipeline": 0, "hedge": None}))
    assert on["status"] == off["status"] == "succeeded"
    started = (await read_run(tmp_path / "mcp.db", on["run_id"]))[0]
    assert started.policy["pipeline"] == 3
    assert started.policy["hedge"]["quantile"] == 0.9
    assert started.policy["hedge"]["min_s"] == 0.5
    plain = (await read_run(tmp_path / "mcp.db", off["run_id"]))[0]
    assert "pipeline" not in plain.policy
    assert "hedge" not in plain.policy


async def test_vote_and_run_take_a_matcher_into_the_policy(tmp_path: Path) -> None:
    free = make_task("arithmetic", {"steps": 5, "digits": 4, "seed": 3, "free_form": True})
    state = free.initial_state()
    prompt = free.prompt(state)
    oracle = free.oracle(state)
    assert oracle is not None
    right = int(oracle)
    vote_args = {"system": prompt.system, "user": prompt.user, "k": 3, "seed": 5}
    written = r"(?m)^result = (\S+)$"
    async with stdio_server(tmp_path, "--log", "mcp.db") as client:
        out = structured(
            await client.call_tool("vote", {**vote_args, "pattern": written, "matcher": "number"})
        )
        run = structured(
            await client.call_tool(
                "run",
                {"task": "arithmetic", "params": {"steps": 5, "free_form": True},
                 "matcher": "number", "wait": True},
            )
        )  # fmt: skip
        bad = error_text(await client.call_tool("vote", {**vote_args, "matcher": "nope"}))
    assert out["status"] == "succeeded"
    # The key is the value; the answer is the first winning vote's, as it was written.
    assert json.loads(out["winner"]["candidate"]) == right
    assert float(out["winner"]["answer"]) == right
    assert f"result = {out['winner']['answer']}" in out["winner"]["text"]
    assert run["status"] == "succeeded"
    for run_id in (out["run_id"], run["run_id"]):
        started = (await read_run(tmp_path / "mcp.db", run_id))[0]
        assert started.policy["matcher"] == "number"
    assert "matcher: unknown matcher 'nope'" in bad
    assert "\n" not in bad


async def test_a_background_run_is_followed_by_run_status_and_cancelled_resumably(
    tmp_path: Path,
) -> None:
    config = tmp_path / "mcp.toml"
    config.write_text('log = "mcp.db"\n[[models]]\nspec = "sim"\nlatency_ms = 20\n')
    async with stdio_server(tmp_path, "--config", str(config)) as client:
        quick = structured(
            await client.call_tool("run", {"task": "arithmetic", "params": {"steps": 5}, "k": 1})
        )
        assert quick["status"] == "running"
        status = structured(
            await client.call_tool("run_status", {"run_id": quick["run_id"], "wait_s": 60})
        )
        assert status["status"] == "succeeded"
        assert status["steps"] == 5

        long = structured(await client.call_tool("run", {"task": "hanoi", "params": {"disks": 12}}))
        going = structured(await client.call_tool("run_status", {"run_id": long["run_id"]}))
        cancelled = structured(await client.call_tool("cancel", {"run_id": long["run_id"]}))
        again = await client.call_tool("cancel", {"run_id": long["run_id"]})
        # A run the client leaves going when it disconnects is cancelled, not waited for.
        orphan = structured(
            await client.call_tool("run", {"task": "hanoi", "params": {"disks": 14}})
        )
    assert going["status"] == "running"
    assert going["active"] is True
    assert going["steps_total"] == 4095
    assert going["steps"] < 4095
    assert cancelled["status"] == "cancelled"
    assert cancelled["active"] is False
    assert cancelled["steps"] >= going["steps"]
    assert cancelled["resume"].startswith("maker resume ")
    assert "is not running" in error_text(again)
    for run in (long, orphan):  # the log says so, read by the CLI as a user would
        show = [sys.executable, "-m", "maker", "show", str(tmp_path / "mcp.db"), "--json"]
        shown = await anyio.run_process([*show, "--run", run["run_id"]])
        assert json.loads(shown.stdout)["status"] == "cancelled"


async def test_cancelling_a_vote_call_cancels_its_run(tmp_path: Path) -> None:
    config = tmp_path / "mcp.toml"
    config.write_text(
        'log = "mcp.db"\n[[models]]\nspec = "sim"\nlatency_ms = 400\nconcurrency = 1\n'
    )
    async with stdio_server(tmp_path, "--config", str(config)) as client:

        async def runs_once(done: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
            with anyio.fail_after(30):
                while True:
                    runs: list[dict[str, Any]] = structured(await client.call_tool("show", {}))[
                        "runs"
                    ]
                    if done(runs):
                        return runs
                    await anyio.sleep(0.02)

        # An unknown prompt draws one identical answer, one call at a time at 0.4 s each:
        # k = 20 takes 8 s. The call is cancelled once its run is under way.
        async with anyio.create_task_group() as tg:
            call = anyio.CancelScope()

            async def vote() -> None:
                with call:
                    await client.call_tool("vote", {"user": "a question no task knows", "k": 20})

            tg.start_soon(vote)
            await runs_once(lambda runs: bool(runs) and runs[0]["status"] == "running")
            call.cancel()
        runs = await runs_once(lambda runs: runs[0]["status"] != "running")
    assert runs[0]["task"] == "prompt"
    assert runs[0]["status"] == "cancelled"


async def test_a_cancelled_run_resumes_through_the_server_to_the_uninterrupted_decisions(
    tmp_path: Path,
) -> None:
    config = tmp_path / "mcp.toml"
    config.write_text('log = "mcp.db"\n[[models]]\nspec = "sim"\nlatency_ms = 5\n')
    run = {"task": "hanoi", "params": {"disks": 8}, "k": 2, "seed": 8}
    async with stdio_server(tmp_path, "--config", str(config)) as client:
        started = structured(await client.call_tool("run", run))
        with anyio.fail_after(30):  # an ordering point on the run's own progress, not a sleep
            args = {"run_id": started["run_id"]}
            while True:  # polls the server; no event of its can cross the process boundary
                if structured(await client.call_tool("run_status", args))["steps"] >= 5:
                    break
                await anyio.sleep(0.01)
        cancelled = structured(await client.call_tool("cancel", {"run_id": started["run_id"]}))
        resumed = structured(
            await client.call_tool("resume", {"run_id": started["run_id"], "wait": True})
        )
        again = structured(await client.call_tool("resume", {"run_id": started["run_id"]}))
        verified = structured(
            await client.call_tool("replay_verify", {"run_id": started["run_id"]})
        )
        unbroken = structured(await client.call_tool("run", {**run, "wait": True}))
    assert cancelled["status"] == "cancelled"
    assert 5 <= cancelled["steps"] < 255
    assert resumed["status"] == "succeeded"
    assert resumed["steps"] == 255
    assert resumed["resumed"] == 1  # one resumption
    assert again["note"] == "the run had finished; nothing was changed"
    assert verified["ok"] is True
    assert unbroken["status"] == "succeeded"

    async def winners(run_id: str) -> list[str]:
        events = await read_run(tmp_path / "mcp.db", run_id)
        return [e.winner for e in events if isinstance(e, StepDecided)]

    # The same seed decides the same, interrupted or not.
    assert await winners(started["run_id"]) == await winners(unbroken["run_id"])


# -- bad input -------------------------------------------------------------------------------


async def test_bad_arguments_are_tool_errors_and_the_server_keeps_serving(tmp_path: Path) -> None:
    async with stdio_server(tmp_path, "--log", "mcp.db") as client:
        bad: dict[str, tuple[str, dict[str, Any]]] = {
            "unknown field": ("vote", {"user": "q", "colour": "red"}),
            "k out of range": ("vote", {"user": "q", "k": 0}),
            "p out of range": ("kmin", {"p": 0.4}),
            "wrong type": ("kmin", {"p": "high"}),
            "missing field": ("validate", {}),
            "bad regex": ("validate", {"response": "x", "pattern": "("}),
            "bad schema": ("validate", {"response": "1", "schema": {"type": "nonsense"}}),
            "k with target": ("vote", {"user": "q", "k": 2, "target": 0.9, "p": 0.8}),
            "unconfigured model": ("vote", {"user": "q", "model": "openai:gpt-4.1-mini"}),
            "unknown task params": ("run", {"task": "hanoi", "params": {"pegs": 4}}),
            "unknown run": ("run_status", {"run_id": "nope"}),
            "plan from nothing": ("plan", {"steps": 10}),
            "pipeline out of range": ("run", {"task": "hanoi", "pipeline": 65}),
            "hedge out of range": ("run", {"task": "hanoi", "hedge": 1.0}),
            "hedge as an object": ("run", {"task": "hanoi", "hedge": {"quantile": 0.9}}),
            "hedge floor alone": (
                "run",
                {"task": "hanoi", "params": {"disks": 3}, "hedge_min_s": 0.5},
            ),
            "unknown tool": ("levitate", {}),
        }
        messages = {}
        for label, (tool, args) in bad.items():
            messages[label] = error_text(await client.call_tool(tool, args))
        still = structured(await client.call_tool("kmin", {"p": 0.99}))
    assert "colour" in messages["unknown field"]
    assert "$.k" in messages["k out of range"]
    assert ">= 1" in messages["k out of range"]
    assert "$.p" in messages["p out of range"]
    assert "$.p" in messages["wrong type"]
    assert "response" in messages["missing field"]
    assert "pattern" in messages["bad regex"]
    assert "schema" in messages["bad schema"]
    assert "not both" in messages["k with target"]
    assert "not configured" in messages["unconfigured model"]
    assert "pegs" in messages["unknown task params"]
    assert "no run nope" in messages["unknown run"]
    assert "calibrations" in messages["plan from nothing"]
    assert "<= 64 - at `$.pipeline`" in messages["pipeline out of range"]
    assert "< 1.0 - at `$.hedge`" in messages["hedge out of range"]
    assert "`$.hedge`" in messages["hedge as an object"]
    assert "hedge_min_s: applies only with hedge" in messages["hedge floor alone"]
    assert "unknown tool" in messages["unknown tool"]
    assert all("\n" not in m and "Traceback" not in m for m in messages.values())
    assert still["k_min"] >= 1


# -- stdout carries the protocol only -------------------------------------------------------


def _rpc(id_: int | None, method: str, params: dict[str, Any]) -> str:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if id_ is not None:
        message["id"] = id_
    return json.dumps(message) + "\n"


def test_nothing_but_protocol_messages_reach_stdout(tmp_path: Path) -> None:
    """A raw client: every stdout line must be a JSON-RPC message, while the server logs at
    INFO (-v), fails tool calls, and runs the engine."""
    system, user, _ = arithmetic_prompt()
    calls = [
        _rpc(
            1,
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"},
            },
        ),
        _rpc(None, "notifications/initialized", {}),
        _rpc(2, "tools/list", {}),
        _rpc(
            3,
            "tools/call",
            {
                "name": "vote",
                "arguments": {"system": system, "user": user, "pattern": RESULT, "seed": 1},
            },
        ),
        _rpc(4, "tools/call", {"name": "vote", "arguments": {"bogus": 1}}),
        _rpc(5, "tools/call", {"name": "health", "arguments": {}}),
        _rpc(
            6,
            "tools/call",
            {"name": "run", "arguments": {"task": "hanoi", "params": {"disks": 3}, "wait": True}},
        ),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "maker", "mcp", "-v", "--log", str(tmp_path / "mcp.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    answered: dict[int, dict[str, Any]] = {}
    lines: list[str] = []
    try:
        for call in calls:
            proc.stdin.write(call)
            proc.stdin.flush()
            wanted = json.loads(call).get("id")
            while wanted is not None and wanted not in answered:
                line = proc.stdout.readline()
                assert line, "the server closed stdout"
                lines.append(line)
                message = json.loads(line)  # anything else on stdout fails here
                assert message["jsonrpc"] == "2.0"
                if "id" in message and ("result" in message or "error" in message):
                    answered[message["id"]] = message
        rest, stderr = proc.communicate(timeout=60)  # closes stdin: the client is gone
    finally:
        if proc.poll() is None:
            proc.kill()
    for line in rest.splitlines():
        assert json.loads(line)["jsonrpc"] == "2.0"
    assert proc.returncode == 0, stderr
    assert answered[3]["result"]["isError"] is False
    assert answered[4]["result"]["isError"] is True
    assert answered[6]["result"]["structuredContent"]["status"] == "succeeded"
    assert "serving on stdio" in stderr  # diagnostics went to stderr


# -- HTTP ------------------------------------------------------------------------------------


HTTP_TOKEN = "mcp-test-token-0123456789"
"""The token the HTTP server of these tests asks for."""


@contextmanager
def http_server(tmp_path: Path, *args: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``maker mcp --http --port 0`` as a subprocess, asking for :data:`HTTP_TOKEN`; yields its
    URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "maker", "mcp", "--http", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "MAKER_TOKEN": HTTP_TOKEN},
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "listening on " in line, line + _drain(proc.stderr)
        url = line.split("listening on ", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@asynccontextmanager
async def http_client(url: str) -> AsyncIterator[Client]:
    """The SDK's streamable HTTP client, sending :data:`HTTP_TOKEN`."""
    auth = {"Authorization": f"Bearer {HTTP_TOKEN}"}
    async with (
        httpx2.AsyncClient(headers=auth) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


def _drain(stream: IO[str]) -> str:
    return stream.read() if stream else ""


async def test_the_http_transport_serves_the_same_tools(tmp_path: Path) -> None:
    system, user, right = arithmetic_prompt()
    # 14 disks are 16383 steps: above the default bound of an HTTP server.
    with http_server(tmp_path, "--log", "mcp.db", "--max-steps", "16383") as (url, proc):
        async with http_client(url) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            out = structured(
                await client.call_tool(
                    "vote", {"system": system, "user": user, "pattern": RESULT, "seed": 5}
                )
            )
            bad = await client.call_tool("vote", {"user": "q", "k": 0})
            health = structured(await client.call_tool("health", {}))
            seen: list[float] = []

            async def on_progress(
                progress: float, total: float | None, message: str | None
            ) -> None:
                seen.append(progress)

            run = {"task": "hanoi", "params": {"disks": 5}, "wait": True}
            ran = structured(await client.call_tool("run", run, progress_callback=on_progress))
            # A run still going when the server is stopped is recorded as cancelled.
            left = structured(
                await client.call_tool("run", {"task": "hanoi", "params": {"disks": 14}})
            )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert proc.stdout is not None
        assert proc.stdout.read() == ""
    assert names == TOOL_NAMES
    assert out["winner"]["answer"] == right
    assert "$.k" in error_text(bad)
    assert health["config"]["models"][0]["reachable"] is True
    assert ran["status"] == "succeeded"
    assert seen
    assert seen[-1] == 31  # progress notifications arrive over HTTP too
    show = [sys.executable, "-m", "maker", "show", str(tmp_path / "mcp.db"), "--json"]
    shown = await anyio.run_process([*show, "--run", left["run_id"]])
    assert json.loads(shown.stdout)["status"] == "cancelled"
    verify = await anyio.run_process(
        [sys.executable, "-m", "maker", "verify", str(tmp_path / "mcp.db")], check=False
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


# -- configuration ---------------------------------------------------------------------------


async def test_configuration_from_file_env_and_cli_is_reported_and_applied(tmp_path: Path) -> None:
    config = tmp_path / "mcp.toml"
    config.write_text(
        'log = "from-file.db"\n'
        "[[models]]\n"
        'spec = "sim"\n'
        "p = 0.7\n"
        "rpm = 6000\n"
        "concurrency = 2\n"
        "[prices.sim]\ninput = 1.0\noutput = 2.0\n"
    )
    items = []
    task = make_task("arithmetic", {"steps": 200, "digits": 3, "seed": 9})
    state = task.initial_state()
    for _ in range(200):
        prompt = task.prompt(state)
        answer = task.oracle(state)
        items.append({"system": prompt.system, "user": prompt.user, "answer": str(answer)})
        state = task.apply(state, answer)
    env = {"MAKER_MCP_LOG": str(tmp_path / "from-env.db")}
    async with stdio_server(
        tmp_path, "--config", str(config), "--tpm", "900000", env=env
    ) as client:
        health = structured(await client.call_tool("health", {}))
        cal = structured(
            await client.call_tool(
                "calibrate",
                {"prompts": items, "pattern": RESULT, "seed": 1, "target": 0.9, "steps": 100},
            )
        )
        # The paper's critical path: calibrate, then plan from the calibration in the log.
        planned = structured(
            await client.call_tool(
                "plan", {"calibrations": [cal["run_id"]], "steps": 100, "target": 0.9}
            )
        )
    cfg = health["config"]
    assert cfg["log"] == str(tmp_path / "from-env.db")
    assert cfg["sources"] == {"models": "file", "limits": "cli", "log": "env", "prices": "file"}
    model = cfg["models"][0]
    assert model["spec"] == "sim"
    assert model["p"] == 0.7
    assert model["limits"] == {"concurrency": 2, "rpm": 6000, "tpm": 900000, "timeout_s": 120.0}
    assert model["reachable"] is True
    # Applied for real: the simulated model answers at p = 0.7, priced, into the env's log.
    assert cal["n"] == 200
    assert cal["p_low"] < 0.7 < cal["p_high"]
    assert cal["cost_per_call"] > 0
    assert cal["recommended_k"] is not None
    assert cal["recommended_k"] >= 5
    assert (tmp_path / "from-env.db").exists()
    assert not (tmp_path / "from-file.db").exists()
    (entry,) = planned["models"]
    assert planned["recommended"] == "sim"
    assert entry["k_min"] == cal["recommended_k"]  # both Eq 14 at the interval's lower bound
    assert entry["expected_cost_usd"] > 0


def test_a_bad_configuration_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[[models]]\nspec = "openai:gpt-4.1-mini"\npreset = "paper"\n')
    for args in (
        ["--config", str(config)],
        ["--model", "gemini:pro"],
        ["--config", str(tmp_path / "none.toml")],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "maker", "mcp", *args],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        assert done.returncode != 0
        assert done.stdout == ""
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Traceback" not in done.stderr


# -- real providers --------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_health_probes_providers_and_votes_reach_them_without_leaking_keys(
    tmp_path: Path,
) -> None:
    """OpenAI through the official SDK against serve-sim, and an Ollama that is down: health
    tells them apart, and a vote on the OpenAI model goes through the scheduler to it."""
    system, user, right = arithmetic_prompt()
    secret = "sk-SECRET-never-printed"
    async with serve_sim(SimServerConfig(sim="ideal")) as sim:
        config = tmp_path / "mcp.toml"
        config.write_text(
            'log = "mcp.db"\n'
            "[[models]]\n"
            'spec = "openai:gpt-4.1-mini"\n'
            f'base_url = "{sim.base_url}/v1"\n'
            'api_key_env = "MY_OPENAI_KEY"\n'
            "concurrency = 3\n"
            "[[models]]\n"
            'spec = "ollama:llama3.1:8b"\n'
            f'base_url = "http://127.0.0.1:{_closed_port()}"\n'
        )
        env = {"MY_OPENAI_KEY": secret}
        async with stdio_server(tmp_path, "--config", str(config), env=env) as client:
            health_result = await client.call_tool("health", {})
            vote_result = await client.call_tool(
                "vote", {"system": system, "user": user, "pattern": RESULT, "k": 2, "seed": 3}
            )
        lookups = [r for r in sim.stats.requests if r.probe]
    health, vote = structured(health_result), structured(vote_result)
    openai, ollama = health["config"]["models"]
    assert openai["reachable"] is True
    assert openai["api_key_env"] == "MY_OPENAI_KEY"
    assert openai["api_key_set"] is True
    assert ollama["reachable"] is False
    assert ollama["error"].startswith("connection")
    assert len(lookups) == 1  # the probe looked the model up; it generated nothing
    assert vote["model"] == "openai:gpt-4.1-mini"
    assert vote["winner"]["answer"] == right
    assert vote["cost_usd"] > 0  # gpt-4.1-mini is in the price table
    assert health["scheduler"]["calls"] == 0  # probes bypass the scheduler; votes do not
    stderr = (tmp_path / "stderr.txt").read_text()
    log_bytes = (tmp_path / "mcp.db").read_bytes()
    for text in (json.dumps(health), json.dumps(vote), stderr):
        assert secret not in text
    assert secret.encode() not in log_bytes


async def test_models_from_the_environment_replace_the_default(tmp_path: Path) -> None:
    env = {"MAKER_MCP_MODELS": "sim ollama:llama3.1:8b", "MAKER_MCP_LOG": "env.db"}
    async with stdio_server(tmp_path, "--rpm", "120", env=env) as client:
        health = structured(await client.call_tool("health", {"probe": False}))
    config = health["config"]
    assert [m["spec"] for m in config["models"]] == ["sim", "ollama:llama3.1:8b"]
    assert config["default_model"] == "sim"
    assert config["sources"] == {"models": "env", "limits": "cli", "log": "env"}
    assert all(m["limits"]["rpm"] == 120 for m in config["models"])
    assert all(m["reachable"] is None for m in config["models"])  # not probed when asked not to
