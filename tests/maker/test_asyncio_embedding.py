"""maker inside plain-asyncio applications, as many users embed it: an ``asyncio.TaskGroup``
beside other work, ``asyncio.timeout`` and ``Task.cancel`` cutting a run short, and an aiohttp
service running one engine for all its requests.

These tests use pytest-asyncio (strict mode: only the tests marked ``asyncio`` are its), not
anyio's plugin, so that nothing of anyio's runner stands between the test and the loop: the
loop is the one ``asyncio.run`` would make, and the cancellations are asyncio's own.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from events import EventLog, RunFinished, StepDecided, UnknownRunError, verify_log
from maker import Engine, Policy, RunResult, SimConfig, SimulatedModel
from maker.tasks import Hanoi
from replay import resume_run, verify_run

pytestmark = pytest.mark.asyncio

LATENCY = SimConfig(p=0.99, latency_ms=2.0, latency_sigma=0.3)
"""A model that waits (2 ms a call), so a run yields to the loop between its samples."""


async def _winners(path: Path, run_id: str) -> list[str]:
    async with EventLog(path, mode="r") as log:
        return [e.winner async for e in log.read(run_id) if isinstance(e, StepDecided)]


async def _finish(path: Path, run_id: str) -> RunFinished:
    async with EventLog(path, mode="r") as log:
        finished = [e async for e in log.read(run_id) if isinstance(e, RunFinished)]
    assert finished, f"run {run_id} recorded no run_finished"
    return finished[-1]


async def _uninterrupted(tmp_path: Path, disks: int, seed: int) -> list[str]:
    path = tmp_path / "whole.db"
    async with Engine(log=path, client=SimulatedModel(LATENCY)) as engine:
        result = await engine.run(Hanoi(disks), policy=Policy(k=2), seed=seed)
    assert result.status == "succeeded"
    return await _winners(path, result.run_id)


async def test_a_run_shares_an_asyncio_taskgroup_with_other_work(tmp_path: Path) -> None:
    ticks: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.005)

    async def run() -> Any:
        try:
            async with Engine(log=tmp_path / "tg.db", client=SimulatedModel(LATENCY)) as engine:
                return await engine.run(Hanoi(5), policy=Policy(k=2), seed=3)
        finally:
            done.set()

    began = time.monotonic()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(ticker())
        running = tg.create_task(run())
    result = running.result()
    assert result.status == "succeeded"
    assert result.steps == 31
    # The ticker kept its pace while the run went on: the run awaits its model and the log
    # instead of holding the loop (31 steps at 2 ms a call take well over 60 ms).
    during = [t for t in ticks if t >= began]
    assert len(during) >= 5, ticks


async def test_asyncio_timeout_cancels_a_run_that_resumes_to_the_same_decisions(
    tmp_path: Path,
) -> None:
    path = tmp_path / "timeout.db"
    run_id = "cut-by-a-timeout"
    async with Engine(log=path, client=SimulatedModel(LATENCY)) as engine:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.15):
                await engine.run(Hanoi(7), policy=Policy(k=2), seed=11, run_id=run_id)
    # The cancellation is recorded, the log is whole, and the run is not finished yet.
    finished = await _finish(path, run_id)
    assert finished.status == "cancelled"
    decided = len(await _winners(path, run_id))
    assert 0 < decided < 127
    report = await asyncio.to_thread(verify_log, path)
    assert report.ok, report
    # Resumed in the same loop, it ends with the decisions of a run never interrupted.
    resumed = await resume_run(path, run_id, client=SimulatedModel(LATENCY))
    assert resumed.status == "succeeded"
    assert await _winners(path, run_id) == await _uninterrupted(tmp_path, 7, 11)
    verified = await verify_run(path, run_id)
    assert verified.ok, verified


async def test_task_cancel_stops_a_run_and_the_log_says_so(tmp_path: Path) -> None:
    path = tmp_path / "cancel.db"
    run_id = "cancelled-by-its-task"
    async with Engine(log=path, client=SimulatedModel(LATENCY)) as engine:
        running = asyncio.create_task(
            engine.run(Hanoi(8), policy=Policy(k=2), seed=5, run_id=run_id)
        )
        # Cancel once a few steps are in the log, wherever the run is in its step.
        while len(await _decided_so_far(engine, run_id)) < 3:
            assert not running.done()
            await asyncio.sleep(0.01)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    assert (await _finish(path, run_id)).status == "cancelled"
    assert 3 <= len(await _winners(path, run_id)) < 255
    assert (await asyncio.to_thread(verify_log, path)).ok


async def _decided_so_far(engine: Engine, run_id: str) -> list[str]:
    await engine.log.flush()
    try:
        return [e.winner async for e in engine.log.read(run_id) if isinstance(e, StepDecided)]
    except UnknownRunError:  # its first event is not in the log yet
        return []


async def test_an_aiohttp_service_runs_its_requests_on_one_shared_engine(tmp_path: Path) -> None:
    path = tmp_path / "service.db"
    engine_key = web.AppKey("engine", Engine)

    async def lifespan(app: web.Application) -> Any:
        async with Engine(log=path, client=SimulatedModel(LATENCY)) as engine:
            app[engine_key] = engine
            yield

    async def solve(request: web.Request) -> web.Response:
        body = await request.json()
        engine = request.app[engine_key]
        result = await engine.run(
            Hanoi(int(body["disks"])), policy=Policy(k=2), seed=int(body["seed"])
        )
        return web.json_response(
            {"run_id": result.run_id, "status": result.status, "steps": result.steps}
        )

    app = web.Application()
    app.cleanup_ctx.append(lifespan)
    app.router.add_post("/solve", solve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as session:

            async def ask(disks: int, seed: int) -> dict[str, Any]:
                url = f"http://127.0.0.1:{port}/solve"
                async with session.post(url, json={"disks": disks, "seed": seed}) as response:
                    assert response.status == 200, await response.text()
                    answer: dict[str, Any] = json.loads(await response.text())
                    return answer

            # Three requests at once: their runs interleave on the one engine and its log.
            answers = await asyncio.gather(ask(4, 1), ask(5, 2), ask(3, 3))
    finally:
        await runner.cleanup()  # closes the engine: its log flushes
    assert [a["status"] for a in answers] == ["succeeded"] * 3
    assert [a["steps"] for a in answers] == [15, 31, 7]
    assert len({a["run_id"] for a in answers}) == 3
    report = await asyncio.to_thread(verify_log, path)
    assert report.ok, report
    for answer in answers:
        assert len(await _winners(path, answer["run_id"])) == answer["steps"]
        assert (await verify_run(path, answer["run_id"])).ok


async def test_leaving_the_engine_waits_for_runs_awaited_in_other_tasks(tmp_path: Path) -> None:
    # A run awaited in a task of the application's own, not in the engine's block: leaving
    # the block waits for it to end (it used to close the log under it: LogClosedError).
    path = tmp_path / "log.db"
    async with Engine(log=path, client=SimulatedModel(LATENCY)) as engine:
        task = asyncio.create_task(engine.run(Hanoi(5), policy=Policy(k=2), seed=4))
        await asyncio.sleep(0.05)
        assert not task.done()
    assert task.done()
    result = task.result()
    assert result.status == "succeeded"
    assert (await _finish(path, result.run_id)).status == "succeeded"
    assert await _winners(path, result.run_id) == await _uninterrupted(tmp_path, 5, 4)


async def test_leaving_the_engine_by_an_error_cancels_runs_awaited_elsewhere(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log.db"
    tasks: list[asyncio.Task[RunResult]] = []

    async def application() -> None:
        async with Engine(log=path, client=SimulatedModel(LATENCY)) as engine:
            tasks.append(asyncio.create_task(engine.run(Hanoi(8), policy=Policy(k=2), seed=4)))
            await asyncio.sleep(0.05)
            raise RuntimeError("the application failed")

    with pytest.raises(RuntimeError, match="the application failed"):
        await application()
    [task] = tasks
    # The run recorded its cancellation before the log closed, and its caller got that result.
    result = await task
    assert result.status == "cancelled"
    assert (await _finish(path, result.run_id)).status == "cancelled"
    assert verify_log(path).ok
    resumed = await resume_run(path, result.run_id, client=SimulatedModel(LATENCY))
    assert resumed.status == "succeeded"
