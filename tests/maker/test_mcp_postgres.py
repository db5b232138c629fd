"""``maker mcp --log URL``: the MCP server records its runs in a PostgreSQL database (a real
server, tests/_postgres.py) and reads them back from there."""

from __future__ import annotations

from pathlib import Path

import pytest

from events import verify_log

from .test_mcp import stdio_server, structured

pytestmark = pytest.mark.anyio


async def test_the_mcp_server_runs_into_a_database(tmp_path: Path, postgres_url: str) -> None:
    async with stdio_server(tmp_path, "--log", postgres_url) as client:
        out = structured(
            await client.call_tool(
                "run",
                {"task": "hanoi", "params": {"disks": 4}, "k": 2, "seed": 1, "wait": True},
            )
        )
        shown = structured(await client.call_tool("show", {}))
        replayed = structured(await client.call_tool("replay_verify", {"run_id": out["run_id"]}))
        health = structured(await client.call_tool("health", {}))
    assert (out["status"], out["steps"]) == ("succeeded", 15)
    assert [r["run_id"] for r in shown["runs"]] == [out["run_id"]]
    assert shown["log"] == postgres_url
    assert replayed["ok"] is True
    assert health["config"]["log"] == postgres_url
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stderr.txt"]  # noqa: ASYNC240 (no file)
    report = verify_log(postgres_url)
    assert report.ok, report
    assert [run.run_id for run in report.runs] == [out["run_id"]]
