"""Fakes for engine tests: a tiny counting task and a scripted client with ordering points."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from events import AnyEvent, EventLog
from maker import ClientError, Completion, Prompt, RedFlag, SampleRequest, Task


class Count(Task[int, int]):
    """Count from 0 to ``goal``; a model answers ``next = N``."""

    name = "count"

    def __init__(self, goal: int = 5) -> None:
        self.goal = goal

    def params(self) -> dict[str, Any]:
        return {"goal": self.goal}

    def initial_state(self) -> int:
        return 0

    def is_done(self, state: int) -> bool:
        return state >= self.goal

    def prompt(self, state: int) -> Prompt:
        return Prompt(system="Count up by one. Answer 'next = N'.", user=f"current = {state}")

    def parse(self, text: str) -> int:
        found = re.findall(r"next = (-?\d+)", text)
        if not found:
            raise RedFlag("malformed", "no 'next =' line")
        return int(found[-1])

    def apply(self, state: int, answer: int) -> int:
        return answer

    def oracle(self, state: int) -> int:
        return state + 1


Reply = str | Completion | ClientError
Script = Callable[[SampleRequest, int], Reply]
"""Given the request and the attempt number (1-based), what the fake model does."""


def correct(request: SampleRequest, attempt: int) -> Reply:
    current = int(request.user.rsplit("=", 1)[1])
    return f"next = {current + 1}"


class ScriptedClient:
    """A client whose every reply comes from a script; named samples wait for a release."""

    def __init__(self, script: Script = correct, *, hold: set[str] | None = None) -> None:
        self.script = script
        self.hold = hold or set()
        self.released = anyio.Event()
        self.started: list[tuple[str, int]] = []
        self.cancelled: list[str] = []
        self.temperatures: dict[str, float] = {}
        self.held = 0
        self.all_held = anyio.Event()
        self._attempts: dict[str, int] = {}

    @property
    def model(self) -> str:
        return "fake"

    def describe(self) -> dict[str, Any]:
        return {"kind": "scripted"}

    async def complete(self, request: SampleRequest) -> Completion:
        attempt = self._attempts.get(request.sample_id, 0) + 1
        self._attempts[request.sample_id] = attempt
        self.started.append((request.sample_id, attempt))
        self.temperatures[request.sample_id] = request.temperature
        if request.sample_id in self.hold:
            self.held += 1
            if self.held == len(self.hold):
                self.all_held.set()
            try:
                await self.released.wait()
            except anyio.get_cancelled_exc_class():
                self.cancelled.append(request.sample_id)
                raise
        reply = self.script(request, attempt)
        if isinstance(reply, ClientError):
            raise reply
        if isinstance(reply, Completion):
            return reply
        return Completion(
            text=reply, finish_reason="stop", input_tokens=12, output_tokens=30, model="fake"
        )


async def read_events(path: Path, run_id: str) -> list[AnyEvent]:
    async with EventLog(path, mode="r") as log:
        return [event async for event in log.read(run_id)]


def comparable(event: AnyEvent) -> dict[str, Any]:
    """An event without the fields the determinism contract sets aside (times, durations)."""
    import msgspec

    data = msgspec.to_builtins(event)
    assert isinstance(data, dict)
    for name in ("ts", "latency_s", "wall_s", "run_id"):
        data.pop(name, None)
    return data
