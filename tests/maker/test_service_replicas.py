"""Two ``maker serve --log URL`` processes sharing one PostgreSQL store: a run started through one
streams, live and whole, through the other, and a dropped stream resumes with ``Last-Event-ID``.

The replica that did not start the run has no handle for it: it follows the run in the store,
woken by the commits' notifications (LISTEN/NOTIFY), so its events reach the stream as the other
process commits them. Real processes, a real server; the comparison is with the store's events.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import anyio
import pytest
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream

from events import RunFinished, decode, encode, open_log

from .test_service import Message, read_sse

pytestmark = pytest.mark.anyio

TOKEN = "replica-test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@asynccontextmanager
async def replica(url: str, cwd: Path) -> AsyncIterator[str]:
    """``maker serve --log URL`` on an ephemeral port; its base URL. SIGTERM stops it."""
    env = {**os.environ, "MAKER_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "maker", "serve", "--log", url, "--port", "0"]
    proc: Process = await anyio.open_process(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL)
    try:
        assert proc.stderr is not None
        seen = ""
        with anyio.fail_after(60):
            async for chunk in TextReceiveStream(proc.stderr):
                seen += chunk
                if "listening on " in seen and "\n" in seen.split("listening on ", 1)[1]:
                    break
        assert "listening on " in seen, seen
        yield seen.split("listening on ", 1)[1].split()[0]
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            with anyio.move_on_after(30):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_a_run_started_on_one_replica_streams_whole_through_the_other(
    tmp_path: Path, postgres_url: str
) -> None:
    async with (
        replica(postgres_url, tmp_path) as first,
        replica(postgres_url, tmp_path) as second,
        aiohttp.ClientSession(headers=AUTH) as http,
    ):
        # 255 steps at 5 ms a call: long enough that the other replica joins it going.
        body = {"task": "hanoi", "params": {"disks": 8}, "k": 2, "seed": 3, "latency_ms": 5}
        async with http.post(f"{first}/runs", json=body) as response:
            assert response.status == 201, await response.text()
            run_id = (await response.json())["run_id"]
        # Through the other replica: a first stretch, then the connection is dropped.
        async with http.get(f"{second}/runs/{run_id}/events") as response:
            assert response.status == 200
            head = await read_sse(response, limit=40)
        async with http.get(f"{first}/runs/{run_id}") as response:
            during = (await response.json())["status"]
        # Resumed after the last id received, to the run's end.
        last = str(head.messages[-1].seq)
        async with http.get(
            f"{second}/runs/{run_id}/events", headers={"Last-Event-ID": last}
        ) as response:
            assert response.status == 200
            rest = await read_sse(response)
        async with http.get(f"{second}/runs/{run_id}") as response:
            state = await response.json()
    assert during == "running", "the run ended before the other replica streamed it"
    assert rest.ended
    messages: list[Message] = [*head.messages, *rest.messages]
    streamed = [decode(m.data) for m in messages]
    assert [m.seq for m in messages] == [e.seq for e in streamed]
    assert isinstance(streamed[-1], RunFinished)
    assert streamed[-1].status == state["status"] == "succeeded"
    assert [m.type for m in messages] == [json.loads(m.data)["type"] for m in messages]
    # Every event of the run, each once and in order, as the store holds it.
    async with open_log(postgres_url, mode="r") as log:
        stored = [event async for event in log.read(run_id)]
    assert [m.data for m in messages] == [encode(e) for e in stored]
