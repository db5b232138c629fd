"""What crosses the engine's boundary: the caller's recording after a verification, and a
task's own exceptions, recorded and raised as themselves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from events import EventLog, RunFinished
from maker import (
    Completion,
    Engine,
    MakerError,
    Policy,
    Prompt,
    Recording,
    SampleRequest,
    calibrate,
)

from ._fakes import Count, ScriptedClient, correct, read_events

pytestmark = pytest.mark.anyio


async def test_verify_leaves_the_callers_recording_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    async with Engine(log=path, client=ScriptedClient()) as engine:
        result = await engine.run(Count(3), policy=Policy(k=2), seed=1)
        recording = Recording(await read_events(path, result.run_id))
        # Another k asks for a third sample where the run decided after two.
        changed = await engine.verify(Count(3), recording, policy=Policy(k=3))
        assert not changed.ok
        assert changed.divergence is not None
        assert "sample_requested" in str(changed.divergence)
        # Neither the policy comparison it skipped nor the events it read stay behind.
        assert recording.policy_changed is False
        again = await engine.verify(Count(3), recording)
        assert again.ok
        assert again.checked == again.recorded > 0
        third = await engine.verify(Count(3), recording)
        assert (third.ok, third.checked) == (True, again.checked)


async def test_a_recording_read_from_the_log_is_re_executed_once(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    async with Engine(log=path, client=ScriptedClient()) as engine:
        result = await engine.run(Count(2), policy=Policy(k=2), seed=1)
    log = EventLog(path, mode="r")
    async with (
        log,
        Recording.open(log, result.run_id) as streamed,
        Engine(log=log, client=ScriptedClient()) as reader,
    ):
        assert (await reader.verify(Count(2), streamed)).ok
        with pytest.raises(MakerError, match="read by an earlier re-execution"):
            await reader.verify(Count(2), streamed)


# -- a task's own exceptions -------------------------------------------------------------------


class TaskBug(Exception):
    """An exception of the task's own: the caller must get this very one back."""


class Faulty(Count):
    """Count, with ``where`` (parse, apply or prompt) raising TaskBug at the second step."""

    def __init__(self, where: str, goal: int = 3) -> None:
        super().__init__(goal)
        self.where = where
        self.raised: list[TaskBug] = []

    def _fail(self, where: str, step: int) -> None:
        if where == self.where and step == 1:
            self.raised.append(TaskBug(f"{where} broke at step {step}"))
            raise self.raised[-1]

    def prompt(self, state: int) -> Prompt:
        self._fail("prompt", state)
        return super().prompt(state)

    def parse(self, text: str) -> int:
        value = super().parse(text)
        self._fail("parse", value - 1)
        return value

    def apply(self, state: int, answer: int) -> int:
        self._fail("apply", state)
        return super().apply(state, answer)

    def max_steps(self) -> int:
        return self.goal


class AtOnce:
    """The scripted model answering without awaiting: its samples are made inline."""

    @property
    def model(self) -> str:
        return "fake"

    def describe(self) -> dict[str, Any]:
        return {"kind": "scripted"}

    def complete_now(self, request: SampleRequest) -> Completion:
        reply = correct(request, 1)
        assert isinstance(reply, str)
        return Completion(
            text=reply, finish_reason="stop", input_tokens=1, output_tokens=1, model="fake"
        )

    async def complete(self, request: SampleRequest) -> Completion:
        return self.complete_now(request)


WHERE = ["parse", "apply", "prompt"]
CLIENTS = {"in-tasks": ScriptedClient, "at-once": AtOnce}


async def _finished(path: Path, run_id: str) -> RunFinished:
    last = (await read_events(path, run_id))[-1]
    assert isinstance(last, RunFinished)
    return last


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("client", CLIENTS, ids=list(CLIENTS))
async def test_a_task_error_is_recorded_and_raised_as_itself(
    tmp_path: Path, where: str, client: str
) -> None:
    path = tmp_path / "log.db"
    task = Faulty(where)
    # k = 2: the step's second sample is in flight (in a task, for the scripted client) when
    # the parser breaks on the first.
    async with Engine(log=path, client=CLIENTS[client]()) as engine:
        with pytest.raises(TaskBug) as caught:
            await engine.run(task, policy=Policy(k=2), seed=1, run_id="run")
        assert type(caught.value) is TaskBug
        assert caught.value is task.raised[-1]
        background = Faulty(where)
        handle = engine.start(background, policy=Policy(k=2), seed=1, run_id="started")
        with pytest.raises(TaskBug) as started:
            await handle.result()
        assert started.value is background.raised[-1]
    for run_id in ("run", "started"):
        finished = await _finished(path, run_id)
        assert (finished.status, finished.reason) == ("failed", f"TaskBug: {where} broke at step 1")


@pytest.mark.parametrize("where", ["parse", "prompt"])
async def test_a_task_error_in_a_calibration_is_recorded_and_raised_as_itself(
    tmp_path: Path, where: str
) -> None:
    path = tmp_path / "log.db"
    task = Faulty(where)
    with pytest.raises(TaskBug) as caught:
        await calibrate(task, [ScriptedClient()], samples=3, seed=1, log=path)
    assert caught.value is task.raised[-1]
    async with EventLog(path, mode="r") as log:
        (info,) = await log.runs()
    finished = await _finished(path, info.run_id)
    assert (finished.status, finished.reason) == ("failed", f"TaskBug: {where} broke at step 1")
