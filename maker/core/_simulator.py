"""What a task offers the simulated model so that it can answer the task's prompts.

A simulator is parameter-free: it reads everything it needs from the prompt text, exactly as a
real model would, so the same simulator serves the in-process model and an HTTP server that sees
only messages.
"""

from __future__ import annotations

import random
from typing import Any, Protocol, TypeVar

S = TypeVar("S")
A = TypeVar("A")


class Simulator(Protocol[S, A]):
    """Hooks the simulated model uses to answer one task's prompts."""

    @property
    def task_name(self) -> str:
        """The name of the task this simulator answers (``Task.name``)."""
        ...

    def read_prompt(self, system: str, user: str) -> S | None:
        """Recover the state from a prompt of this task, or None if the prompt is not ours."""
        ...

    def state_key(self, state: S) -> str:
        """A canonical text of the state, to draw per-state properties (hardness, rivals)."""
        ...

    def oracle(self, state: S) -> A | None:
        """The correct answer for the state, or None when the state has none."""
        ...

    def wrong_answers(self, state: S, rng: random.Random, count: int) -> list[A]:
        """Up to ``count`` distinct plausible wrong answers, well-formed so that they parse."""
        ...

    def render(self, answer: A, rng: random.Random) -> str:
        """The answer as a model would write it: a little reasoning, then the answer lines."""
        ...

    def render_malformed(self, state: S, rng: random.Random) -> str:
        """A response the task's strict parser rejects (missing, broken or invalid answer)."""
        ...


AnySimulator = Simulator[Any, Any]


def randbelow(rng: random.Random, n: int) -> int:
    """``rng.randrange(n)`` for ``n >= 1``, which is also the index ``rng.choice`` draws from a
    sequence of ``n``: the same bits drawn the same way, without the two calls around them.

    Simulators render every sample; the draw of a reason or a layout was a third of a render.
    """
    getrandbits = rng.getrandbits
    k = n.bit_length()
    r = getrandbits(k)
    while r >= n:
        r = getrandbits(k)
    return r
