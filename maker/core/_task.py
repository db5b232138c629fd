"""The Task protocol: what a user implements to run a sequential problem under MAKER."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import msgspec

if TYPE_CHECKING:
    from ._simulator import Simulator

S = TypeVar("S")
A = TypeVar("A")


class Prompt(msgspec.Struct, frozen=True):
    """The two messages of one model call: the system prompt and the user prompt."""

    system: str
    user: str


class Task(ABC, Generic[S, A]):
    """A sequential problem solved one model call per step.

    Subclasses give the initial state, when the run is done, the prompt for a state, how to parse
    a response into a hashable answer (raising :class:`maker.RedFlag` when it cannot), and the
    next state from an answer. States and answers must convert to JSON through
    :meth:`state_to_json` and :meth:`answer_to_json`; the defaults use ``msgspec.to_builtins``.

    A task may also offer :meth:`oracle`, the correct answer for a state. The simulated model,
    calibration and the tests use it; the engine never does. A task whose solution is long and
    regular may offer :meth:`oracle_state` too, so that calibration finds states deep in the
    solution without walking there.
    """

    name: ClassVar[str] = "custom"

    def params(self) -> dict[str, Any]:
        """The parameters that rebuild this task (recorded in ``run_started``)."""
        return {}

    @abstractmethod
    def initial_state(self) -> S:
        """The state the first step starts from."""

    @abstractmethod
    def is_done(self, state: S) -> bool:
        """Whether ``state`` completes the task."""

    @abstractmethod
    def prompt(self, state: S) -> Prompt:
        """The messages that ask a model for the one next step from ``state``."""

    @abstractmethod
    def parse(self, text: str) -> A:
        """Parse a response into an answer, or raise :class:`maker.RedFlag`. Never repair."""

    @abstractmethod
    def apply(self, state: S, answer: A) -> S:
        """The state after ``answer`` was voted from ``state``."""

    def max_steps(self) -> int | None:
        """A step budget: a run not done after this many steps fails. None means no budget."""
        return None

    def state_to_json(self, state: S) -> Any:
        """The state as JSON-compatible builtins, for events."""
        return msgspec.to_builtins(state)

    def state_from_json(self, data: Any) -> S:
        """The inverse of :meth:`state_to_json`, used to resume from a log."""
        return data  # type: ignore[no-any-return]

    def answer_to_json(self, answer: A) -> Any:
        """The answer as JSON-compatible builtins; its canonical text is the vote's key."""
        return msgspec.to_builtins(answer)

    def oracle(self, state: S) -> A | None:
        """The correct answer for ``state``, when the task knows it. Never used to decide."""
        return None

    def oracle_state(self, index: int) -> S | None:
        """The state the oracle's answers reach from the initial state in ``index`` steps, when
        the task can compute it directly; None (the default) when it cannot.

        Optional. Calibration samples states along the known solution: with this hook it takes
        each at once, without it it walks there from the initial state with :meth:`oracle`,
        one step at a time. The state must be the one the walk would reach. Never used to
        decide.
        """
        return None

    def simulator(self) -> Simulator[S, A] | None:
        """What lets the simulated model answer this task's prompts, or None (the default).

        Optional: the built-in tasks' simulators are the simulated model's own; a task of one's
        own offers its simulator here, and a :class:`maker.SimulatedModel` that runs the task
        takes it up (see :meth:`maker.SimulatedModel.add_simulator`). Never used to decide.
        """
        return None
