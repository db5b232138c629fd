"""Built-in tasks and the simulators that let the simulated model answer them.

- :class:`Hanoi`: Towers of Hanoi exactly as the paper ran it.
- :class:`Arithmetic`: a seeded chain of multi-digit operations, one per step.
- :class:`PromptTask`: given prompts, one step each, read by an :class:`AnswerParser` (a regex,
  a JSON Schema or both); :func:`validate_response` reports every red flag of one response.

>>> task = make_task("hanoi", {"disks": 2})
>>> task.initial_state().pegs
((2, 1), (), ())
"""

from __future__ import annotations

import inspect
from typing import Any

from ..core._errors import ConfigError, UnknownTaskError
from ..core._simulator import AnySimulator
from ..core._task import Task
from ._arithmetic import Arithmetic, ArithState
from ._arithmetic_sim import ArithmeticSimulator
from ._hanoi import Hanoi, HanoiAnswer, HanoiState, optimal_moves
from ._hanoi_sim import HanoiSimulator
from ._prompt import (
    CHARS_PER_TOKEN,
    AnswerParser,
    PromptTask,
    RegexEngine,
    Validation,
    estimate_tokens,
    validate_response,
)

BUILTIN_TASKS: dict[str, type[Task[Any, Any]]] = {
    Arithmetic.name: Arithmetic,
    Hanoi.name: Hanoi,
    PromptTask.name: PromptTask,
}
"""The built-in task classes by :attr:`Task.name`."""

BUILTIN_SIMULATORS: tuple[AnySimulator, ...] = (ArithmeticSimulator(), HanoiSimulator())
"""One simulator per built-in task whose prompts it can read; a :class:`PromptTask` needs none
of its own: the simulated model answers its prompts when they are another task's."""


def make_task(name: str, params: dict[str, Any]) -> Task[Any, Any]:
    """Build a built-in task from its name and :meth:`Task.params`.

    Raises :class:`maker.UnknownTaskError` for an unknown name and :class:`maker.ConfigError`
    naming the field for a missing, unknown or invalid parameter.

    >>> make_task("arithmetic", {"steps": 3}).params()
    {'steps': 3, 'digits': 6, 'seed': 0}
    """
    cls = BUILTIN_TASKS.get(name)
    if cls is None:
        raise UnknownTaskError(name, list(BUILTIN_TASKS))
    if not isinstance(params, dict):
        raise ConfigError("params", f"must be an object, got {type(params).__name__}")
    accepted = inspect.signature(cls).parameters
    for key in params:
        if key not in accepted:
            raise ConfigError(key, f"not a parameter of task {name!r}")
    for key, param in accepted.items():
        if param.default is inspect.Parameter.empty and key not in params:
            raise ConfigError(key, f"required by task {name!r}")
    try:
        return cls(**params)
    except TypeError as exc:  # a constructor that skipped validating a type
        raise ConfigError("params", str(exc)) from exc


__all__ = [
    "BUILTIN_SIMULATORS",
    "BUILTIN_TASKS",
    "CHARS_PER_TOKEN",
    "AnswerParser",
    "ArithState",
    "Arithmetic",
    "ArithmeticSimulator",
    "Hanoi",
    "HanoiAnswer",
    "HanoiSimulator",
    "HanoiState",
    "PromptTask",
    "RegexEngine",
    "Validation",
    "estimate_tokens",
    "make_task",
    "optimal_moves",
    "validate_response",
]
