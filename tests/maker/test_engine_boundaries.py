"""What crosses the engine's boundary: the caller's recording after a verification, and a
task's own exceptions, recorded and raised as themselves."""

from __future__ import annotations

from pathlib import Path

import pytest

from events import EventLog
from maker import Engine, MakerError, Policy, Recording

from ._fakes import Count, ScriptedClient, read_events

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
