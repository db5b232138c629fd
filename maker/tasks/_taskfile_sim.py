"""The simulated model's hooks for task files: the prompts a task file rendered, answered by
its ``[simulate]`` section.

A task file's prompts are the user's own templates, so no reader can recover the state from
their text in general. Instead, every :class:`~maker.tasks.TaskFile` with a ``[simulate]``
section notes each prompt it renders here, with the state it rendered it from and what its
``[simulate]`` section says about that state; :class:`TaskFileSimulator` reads a prompt by
looking it up. That is why it serves only a simulated model in the process that renders the
prompts (``maker run``, ``resume``, ``calibrate`` with ``--model sim``), not ``maker
serve-sim``, which sees only messages.

The notes are process-wide and bounded (the :data:`NOTED_PROMPTS` most recent): one simulator
class answers every task file, as :meth:`maker.SimulatedModel.add_simulator` keeps one
simulator per class. Two task files that render the very same prompt text share its note (the
later one's), as a real model could not tell them apart either.
"""

from __future__ import annotations

import random
import threading
from collections import OrderedDict
from typing import Any, Protocol

NOTED_PROMPTS = 4096
"""How many rendered prompts are remembered: far more than a step renders ahead."""


class Simulation(Protocol):
    """What a task file's ``[simulate]`` section says about its states."""

    def key(self, state: Any) -> str:
        """A canonical text of ``state`` and of the file it belongs to."""
        ...

    def right_response(self, state: Any) -> str | None:
        """The response that writes the right answer for ``state``, or None when the section
        does not know one."""
        ...

    def wrong_responses(self, state: Any) -> list[str]:
        """Responses that write distinct plausible wrong answers for ``state``, each one the
        parser accepts."""
        ...

    def render_malformed(self) -> str:
        """A response the file's parser rejects."""
        ...


class Asked:
    """One noted prompt: the file's simulation and the state it was rendered from."""

    __slots__ = ("simulation", "state")

    def __init__(self, simulation: Simulation, state: Any) -> None:
        self.simulation = simulation
        self.state = state


_noted: OrderedDict[tuple[str, str], Asked] = OrderedDict()
_lock = threading.Lock()


def note_prompt(system: str, user: str, simulation: Simulation, state: Any) -> None:
    """Remember that ``(system, user)`` was rendered from ``state`` by a file simulating
    with ``simulation``."""
    key = (system, user)
    with _lock:
        _noted[key] = Asked(simulation, state)
        _noted.move_to_end(key)
        while len(_noted) > NOTED_PROMPTS:
            _noted.popitem(last=False)


class TaskFileSimulator:
    """Answers the prompts task files rendered in this process (see the module's notes)."""

    @property
    def task_name(self) -> str:
        """``"taskfile"``."""
        return "taskfile"

    def read_prompt(self, system: str, user: str) -> Asked | None:
        """The noted state of a prompt a task file rendered, or None."""
        with _lock:
            return _noted.get((system, user))

    def state_key(self, state: Asked) -> str:
        """The file's and the state's canonical text."""
        return state.simulation.key(state.state)

    # The simulated model renders an answer without its state, and a file's response template
    # may read the state: so the "answers" handed to it are the responses themselves, written
    # from the state here. They are distinct exactly when the answers they write are.

    def oracle(self, state: Asked) -> str | None:
        """The response that writes the ``[simulate]`` section's answer, or None."""
        return state.simulation.right_response(state.state)

    def wrong_answers(self, state: Asked, rng: random.Random, count: int) -> list[str]:
        """Up to ``count`` responses writing the section's wrong answers, in ``rng``'s order."""
        wrong = state.simulation.wrong_responses(state.state)
        rng.shuffle(wrong)
        return wrong[: max(count, 0)]

    def render(self, answer: str, rng: random.Random) -> str:
        """The response itself (see :meth:`oracle`)."""
        return answer

    def render_malformed(self, state: Asked, rng: random.Random) -> str:
        """A response the file's parser rejects."""
        return state.simulation.render_malformed()
