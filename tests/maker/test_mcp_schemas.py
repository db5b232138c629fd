"""The MCP server as a client sees it through the official SDK over stdio: every tool's title,
annotations and output schema; every tool's structured result checked against its schema
with jsonschema; the runs as resources (summary, paged events); and subscriptions to a run
that ``run`` started, in both eras of the protocol (``resources/subscribe`` and
``subscriptions/listen``)."""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

pytest.importorskip("mcp")
pytest.importorskip("jsonschema")

import jsonschema
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.subscriptions import ResourceUpdated
from mcp_types import (
    CallToolResult,
    ResourceUpdatedNotification,
    TextResourceContents,
    Tool,
)

from events import RunFinished, RunStarted, decode
from maker.tasks import make_task

pytestmark = pytest.mark.anyio

_PYTHONPATH = {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}

# readOnly, destructive, idempotent, openWorld: what each tool does (see HINTS in _mcp.py).
HINTS = {
    "vote": (False, False, False, True),
    "validate": (True, False, True, False),
    "kmin": (True, False, True, False),
    "plan": (True, False, True, False),
    "calibrate": (False, False, False, True),
    "run": (False, False, False, True),
    "run_status": (True, False, True, False),
    "cancel": (False, False, True, False),
    "resume": (False, False, True, True),
    "show": (True, False, True, False),
    "replay_verify": (True, False, True, False),
    "health": (True, False, True, True),
}

RESULT = r"result\s*=\s*(-?\d+)"


@asynccontextmanager
async def server(
    tmp_path: Path, mode: str = "auto", message_handler: Any = None
) -> AsyncIterator[Client]:
    """``maker mcp`` on stdio (the simulated model, a log in tmp_path), through the SDK's
    client negotiating as ``mode`` says, its notifications to ``message_handler``."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "maker", "mcp", "--log", "mcp.db"],
        env={**_PYTHONPATH, "PYTHONUNBUFFERED": "1"},
        cwd=str(tmp_path),
    )
    with (tmp_path / "stderr.txt").open("w") as errlog:
        transport = stdio_client(params, errlog=errlog)
        async with Client(transport, mode=mode, message_handler=message_handler) as client:
            yield client


def contains_ref(schema: Any) -> bool:
    if isinstance(schema, dict):
        return "$ref" in schema or "$defs" in schema or any(map(contains_ref, schema.values()))
    if isinstance(schema, list):
        return any(map(contains_ref, schema))
    return False


def checked(tool: Tool, result: CallToolResult) -> dict[str, Any]:
    """The call's structured content, valid against the tool's output schema, and the same
    data as its text."""
    assert not result.is_error, result.content
    data = result.structured_content
    assert isinstance(data, dict)
    assert tool.output_schema is not None
    jsonschema.Draft202012Validator(tool.output_schema).validate(data)
    text = result.content[0]
    assert text.type == "text"
    assert json.loads(text.text) == data
    return data


async def test_every_tool_has_a_title_its_hints_and_an_inlined_object_output_schema(
    tmp_path: Path,
) -> None:
    async with server(tmp_path) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == set(HINTS)
    for name, tool in tools.items():
        assert tool.title, name
        assert tool.title != name
        hints = tool.annotations
        assert hints is not None, name
        assert hints.title == tool.title
        got = (
            hints.read_only_hint,
            hints.destructive_hint,
            hints.idempotent_hint,
            hints.open_world_hint,
        )
        assert got == HINTS[name], name
        schema = tool.output_schema
        assert schema is not None, name
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["type"] == "object", name
        assert not contains_ref(schema), name
    # Nested result types are written out where they are used.
    vote = tools["vote"].output_schema
    assert vote is not None
    winner = next(o for o in vote["properties"]["winner"]["anyOf"] if o.get("type") == "object")
    assert winner["required"] == ["answer", "text", "candidate"]
    # A tool with two shapes offers both.
    run = tools["run"].output_schema
    assert run is not None
    assert len(run["anyOf"]) == 2


async def test_every_tool_returns_structured_content_its_schema_accepts(tmp_path: Path) -> None:
    task = make_task("arithmetic", {"steps": 5, "digits": 4, "seed": 3})
    state = task.initial_state()
    prompt = task.prompt(state)
    answer = str(task.oracle(state))
    async with server(tmp_path) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}

        async def call(name: str, args: dict[str, Any]) -> dict[str, Any]:
            return checked(tools[name], await client.call_tool(name, args))

        voted = await call(
            "vote", {"system": prompt.system, "user": prompt.user, "pattern": RESULT, "k": 2}
        )
        assert voted["winner"]["answer"] == answer
        assert (await call("validate", {"response": "result = 7", "pattern": RESULT}))["ok"]
        assert (await call("kmin", {"p": 0.99}))["k_min"] == 4
        calibrated = await call(
            "calibrate",
            {
                "prompts": [{"system": prompt.system, "user": prompt.user, "answer": answer}],
                "pattern": RESULT,
                "samples": 2,
            },
        )
        planned = await call(
            "plan",
            {
                "steps": 100,
                "models": [{"model": "m", "p": 0.99}],
                "calibrations": [calibrated["run_id"]],
            },
        )
        assert planned["recommended"] == "m"
        finished = await call("run", {"task": "hanoi", "params": {"disks": 2}, "wait": True})
        assert finished["status"] == "succeeded"
        started = await call("run", {"task": "hanoi", "params": {"disks": 12}})
        assert started["status"] == "running"
        await call("run_status", {"run_id": started["run_id"]})
        cancelled = await call("cancel", {"run_id": started["run_id"]})
        assert cancelled["status"] == "cancelled"
        resumed = await call("resume", {"run_id": started["run_id"]})
        assert resumed["status"] == "running"
        # Left going: the server cancels it when the client leaves.
        unchanged = await call("resume", {"run_id": finished["run_id"]})
        assert unchanged["note"]
        assert (await call("show", {"run_id": finished["run_id"]}))["status"] == "succeeded"
        assert len((await call("show", {}))["runs"]) == 4
        assert (await call("replay_verify", {"run_id": finished["run_id"]}))["ok"] is True
        assert (await call("health", {"probe": False}))["server"]["name"] == "maker"

        # An error is a tool error, one line of text, and no structured content.
        refused = await client.call_tool("show", {"run_id": "nosuchrun"})
        assert refused.is_error
        assert refused.structured_content is None
        assert "no run nosuchrun" in refused.content[0].text  # type: ignore[union-attr]


def text_of(contents: list[Any]) -> TextResourceContents:
    assert len(contents) == 1
    assert isinstance(contents[0], TextResourceContents)
    return contents[0]


async def test_a_run_is_a_resource_with_its_summary_and_its_events_a_page_at_a_time(
    tmp_path: Path,
) -> None:
    async with server(tmp_path) as client:
        ran = (
            await client.call_tool("run", {"task": "hanoi", "params": {"disks": 3}, "wait": True})
        ).structured_content
        assert ran is not None
        run_id = ran["run_id"]
        templates = (await client.list_resource_templates()).resource_templates
        listed = (await client.list_resources()).resources
        summary = text_of((await client.read_resource(f"maker://runs/{run_id}")).contents)
        shown = (await client.call_tool("show", {"run_id": run_id})).structured_content

        pages: list[list[Any]] = []
        uri: str | None = f"maker://runs/{run_id}/events?limit=40"
        while uri is not None:
            page = text_of((await client.read_resource(uri)).contents)
            assert page.mime_type == "application/jsonl"
            pages.append([decode(line) for line in page.text.splitlines()])
            following = (page.meta or {}).get("maker/next")
            uri = f"{following}&limit=40" if following is not None else None
        with pytest.raises(Exception, match="no run"):
            await client.read_resource("maker://runs/nosuchrun")
        with pytest.raises(Exception, match="not a run resource"):
            await client.read_resource("maker://nothing/here")

    assert {t.uri_template for t in templates} == {
        "maker://runs/{run_id}",
        "maker://runs/{run_id}/events{?after,limit}",
    }
    assert [r.uri for r in listed] == [f"maker://runs/{run_id}"]
    assert summary.mime_type == "application/json"
    assert json.loads(summary.text) == shown
    assert [len(p) for p in pages] == [40, 40, 6]  # 86 events, pages of 40
    events = [e for page in pages for e in page]
    assert [e.seq for e in events] == list(range(86)) == list(range(ran["events"]))
    assert isinstance(events[0], RunStarted)
    assert isinstance(events[-1], RunFinished)


async def finished_after(
    client: Client, run_id: str, updates: anyio.abc.ObjectReceiveStream[str]
) -> list[str]:
    """The URIs announced updated until the run's summary reads as ended."""
    uris: list[str] = []
    with anyio.fail_after(30):
        while True:
            uris.append(await updates.receive())
            read = await client.read_resource(f"maker://runs/{run_id}")
            if json.loads(text_of(read.contents).text)["status"] != "running":
                return uris


async def test_a_subscriber_hears_a_live_run_progress_and_end(tmp_path: Path) -> None:
    # 2026-07-28: subscriptions/listen, a stream of the events the client asked for.
    send, updates = anyio.create_memory_object_stream[str](100)
    with send, updates:
        async with server(tmp_path) as client:
            assert client.protocol_version == "2026-07-28"
            run = {
                "task": "hanoi",
                "params": {"disks": 11},
            }  # some seconds: it outlives the subscribe
            started = (await client.call_tool("run", run)).structured_content
            assert started is not None
            uri = f"maker://runs/{started['run_id']}"
            async with client.listen(resource_subscriptions=[uri, uri + "/events"]) as sub:

                async def forward() -> None:
                    async for event in sub:
                        assert isinstance(event, ResourceUpdated)
                        await send.send(event.uri)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(forward)
                    uris = await finished_after(client, started["run_id"], updates)
                    tg.cancel_scope.cancel()
    assert set(uris) <= {uri, uri + "/events"}
    assert uri in uris


async def test_a_handshake_era_subscriber_hears_a_live_run_end(tmp_path: Path) -> None:
    # Up to 2025-11-25: resources/subscribe, then notifications/resources/updated.
    send, updates = anyio.create_memory_object_stream[str](100)

    async def on_message(message: Any) -> None:
        if isinstance(message, ResourceUpdatedNotification):
            await send.send(message.params.uri)

    with send, updates:
        async with server(tmp_path, mode="legacy", message_handler=on_message) as client:
            resources = client.server_capabilities.resources
            assert resources is not None
            assert resources.subscribe is True
            run = {
                "task": "hanoi",
                "params": {"disks": 11},
            }  # some seconds: it outlives the subscribe
            started = (await client.call_tool("run", run)).structured_content
            assert started is not None
            uri = f"maker://runs/{started['run_id']}"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the SDK deprecates it for 2026-07-28
                await client.subscribe_resource(uri)
            uris = await finished_after(client, started["run_id"], updates)
    assert set(uris) == {uri}


async def test_the_tools_let_an_error_of_their_block_out_as_it_is(tmp_path: Path) -> None:
    # The run watchers' task group must not wrap what the caller's block raises in a group.
    from maker.apps.mcp import McpTools, load_mcp_config
    from maker.apps.mcp._mcp_tools import RunArgs

    async def block() -> None:
        async with McpTools(load_mcp_config(log=str(tmp_path / "mcp.db"))) as tools:
            await tools.run(RunArgs(task="hanoi", params={"disks": 12}))
            raise KeyError("the block's")

    with pytest.raises(KeyError, match="the block's"):
        await block()


async def test_cancelling_a_resume_at_once_is_no_error(tmp_path: Path) -> None:
    # The resume tool returns while the run re-executes its log; a cancel then cuts it before
    # it has recorded anything: that is reported, not raised.
    from maker.apps.mcp import McpTools, load_mcp_config
    from maker.apps.mcp._mcp_tools import CancelArgs, ResumeArgs, RunArgs, RunStatusArgs

    async with McpTools(load_mcp_config(log=str(tmp_path / "mcp.db"))) as tools:
        # 16,383 steps: far more than are done when the cancel comes after 200, at any speed.
        started = await tools.run(RunArgs(task="hanoi", params={"disks": 14}, k=2))
        with anyio.fail_after(30):
            args = RunStatusArgs(run_id=started["run_id"])
            while (await tools.run_status(args))["steps"] < 200:  # noqa: ASYNC110
                await anyio.sleep(0.01)  # polling the run's progress
        first = await tools.cancel(CancelArgs(run_id=started["run_id"]))
        assert first["status"] == "cancelled"
        await tools.resume(ResumeArgs(run_id=started["run_id"]))
        cut = await tools.cancel(CancelArgs(run_id=started["run_id"]))
        status = await tools.run_status(RunStatusArgs(run_id=started["run_id"]))
    assert cut["status"] == status["status"] == "cancelled"
    assert "error" not in status
    if "note" in cut:  # cut while it re-executed the log (the usual case): nothing appended
        assert cut["note"] == "cancelled before it recorded anything; the log is as it was"
        assert cut["steps"] == first["steps"]
    else:  # it went live first: it recorded its own cancellation, further on
        assert cut["steps"] > first["steps"]
