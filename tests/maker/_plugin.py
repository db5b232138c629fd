"""A task of one's own, as a user writes it: a module outside the repository, written into a
temporary directory by the tests that run it from the CLI, the service and the MCP server."""

from __future__ import annotations

from pathlib import Path

COUNTING = r'''"""A task of one's own: count from 0 to ``n``, one number per step."""

from __future__ import annotations

import random
import re

from maker import Prompt, RedFlag, Task

_SYSTEM = "You count. Reply with one line: next = NUMBER."
_ASKED = re.compile(r"The number is (-?\d+)\. What comes next\?")
_ANSWER = re.compile(r"^next = (-?\d+)$", re.MULTILINE)


class CountingSimulator:
    """What the simulated model needs to answer counting prompts."""

    task_name = "counting"

    def read_prompt(self, system: str, user: str) -> int | None:
        found = _ASKED.search(user) if system == _SYSTEM else None
        return int(found.group(1)) if found else None

    def state_key(self, state: int) -> str:
        return str(state)

    def oracle(self, state: int) -> int:
        return state + 1

    def wrong_answers(self, state: int, rng: random.Random, count: int) -> list[int]:
        return [state + 2 + i for i in range(count)]

    def render(self, answer: int, rng: random.Random) -> str:
        return f"Adding one.\nnext = {answer}"

    def render_malformed(self, state: int, rng: random.Random) -> str:
        return "next = ?"


class Counting(Task[int, int]):
    """Count from 0 up to ``n``."""

    def __init__(self, n: int = 5) -> None:
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        self.n = n

    def params(self) -> dict[str, int]:
        return {"n": self.n}

    def initial_state(self) -> int:
        return 0

    def is_done(self, state: int) -> bool:
        return state >= self.n

    def prompt(self, state: int) -> Prompt:
        return Prompt(_SYSTEM, f"The number is {state}. What comes next?")

    def parse(self, text: str) -> int:
        found = _ANSWER.search(text)
        if found is None:
            raise RedFlag("no_answer", "no 'next = NUMBER' line")
        return int(found.group(1))

    def apply(self, state: int, answer: int) -> int:
        return answer

    def max_steps(self) -> int:
        return self.n

    def oracle(self, state: int) -> int:
        return state + 1

    def simulator(self) -> CountingSimulator:
        return CountingSimulator()


def counting(n: int = 5) -> Counting:
    """A factory: the same task, built by a function."""
    return Counting(n)
'''
"""``counting.py``: count from 0 to ``n``, one number per step, with its own simulator; a Task
subclass (``counting:Counting``) and a function (``counting:counting``) that build it."""


def write_counting(directory: Path) -> Path:
    """Write ``counting.py`` into ``directory`` (made if missing); the directory to put on
    PYTHONPATH."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "counting.py").write_text(COUNTING, encoding="utf-8")
    return directory
