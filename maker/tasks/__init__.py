"""Built-in tasks and the simulators that let the simulated model answer them.

- :class:`Hanoi`: Towers of Hanoi exactly as the paper ran it.
- :class:`Arithmetic`: a seeded chain of multi-digit operations, one per step.
- :class:`Sort`: sorting by binary insertion, one strict comparison per step.
- :class:`Toposort`: dependency ordering, one node of a DAG per step.
- :class:`PromptTask`: given prompts, one step each, read by an :class:`AnswerParser` (a regex,
  a JSON Schema or both); :func:`validate_response` reports every red flag of one response.
- :class:`TaskFile`: "prompt, parse, update a JSON state" declared in a TOML task file
  (:func:`load_task_file`), simulated by :class:`TaskFileSimulator` when the file says how.

:func:`make_task` builds any of them by name, and a task of one's own by its reference
(``package.module:factory``) or by the name an installed package registers in the
``maker.tasks`` entry point group.

>>> task = make_task("hanoi", {"disks": 2})
>>> task.initial_state().pegs
((2, 1), (), ())
"""

from __future__ import annotations

from ..core._simulator import AnySimulator
from ._arithmetic import Arithmetic, ArithState
from ._arithmetic_sim import ArithmeticSimulator
from ._hanoi import Hanoi, HanoiAnswer, HanoiState, optimal_moves
from ._hanoi_sim import HanoiSimulator
from ._plugins import (
    BUILTIN_TASKS,
    TASK_ENTRY_POINTS,
    is_reference,
    known_task_names,
    make_task,
    plugin_allowed,
)
from ._prompt import (
    CHARS_PER_TOKEN,
    AnswerParser,
    PromptTask,
    RegexEngine,
    Validation,
    estimate_tokens,
    validate_response,
)
from ._sort import Sort, SortState
from ._sort_sim import SortSimulator
from ._taskfile import TaskFile, TaskFileError, load_task_file
from ._taskfile_sim import TaskFileSimulator
from ._toposort import Toposort, TopoState
from ._toposort_sim import ToposortSimulator

BUILTIN_SIMULATORS: tuple[AnySimulator, ...] = (
    ArithmeticSimulator(),
    HanoiSimulator(),
    SortSimulator(),
    ToposortSimulator(),
)
"""One simulator per built-in task whose prompts it can read; a :class:`PromptTask` needs none
of its own: the simulated model answers its prompts when they are another task's."""


__all__ = [
    "BUILTIN_SIMULATORS",
    "BUILTIN_TASKS",
    "CHARS_PER_TOKEN",
    "TASK_ENTRY_POINTS",
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
    "Sort",
    "SortSimulator",
    "SortState",
    "TaskFile",
    "TaskFileError",
    "TaskFileSimulator",
    "TopoState",
    "Toposort",
    "ToposortSimulator",
    "Validation",
    "estimate_tokens",
    "is_reference",
    "known_task_names",
    "load_task_file",
    "make_task",
    "optimal_moves",
    "plugin_allowed",
    "validate_response",
]
