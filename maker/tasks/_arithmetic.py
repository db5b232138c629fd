"""A chain of multi-digit arithmetic operations, one per step: a second long sequential task.

Each step applies one operation (add, subtract, multiply, floor-divide) to the running value.
The operations are drawn once from ``seed`` so that the running value of the correct chain
stays in ``[0, 10**(2*digits))``.
"""

from __future__ import annotations

import random
import re
from typing import Any, ClassVar, Literal

import msgspec

from ..core._errors import ConfigError, RedFlag, StateError
from ..core._task import Prompt, Task

OpName = Literal["add", "subtract", "multiply", "divide"]

MAX_STEPS = 1_000_000
MAX_DIGITS = 18
MAX_SEED = 2**63 - 1


class ArithOp(msgspec.Struct, frozen=True):
    """One operation: ``op`` applied with ``operand`` (divide is floor division)."""

    op: OpName
    operand: int

    def describe(self) -> str:
        """The operation as the prompt states it, e.g. ``"multiply by 37"``."""
        if self.op == "add":
            return f"add {self.operand}"
        if self.op == "subtract":
            return f"subtract {self.operand}"
        if self.op == "multiply":
            return f"multiply by {self.operand}"
        return f"divide by {self.operand} (floor division)"

    def apply(self, value: int) -> int:
        """The correct result of this operation on ``value``."""
        if self.op == "add":
            return value + self.operand
        if self.op == "subtract":
            return value - self.operand
        if self.op == "multiply":
            return value * self.operand
        return value // self.operand


class ArithState(msgspec.Struct, frozen=True):
    """The running value and how many operations have been applied to it."""

    value: int
    index: int


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(field: str, value: object, lo: int, hi: int) -> int:
    if not _is_int(value):
        raise ConfigError(field, f"must be an integer, got {value!r}")
    assert isinstance(value, int)
    if not lo <= value <= hi:
        raise ConfigError(field, f"must be in {lo}..{hi}, got {value}")
    return value


def generate_operations(steps: int, digits: int, seed: int) -> tuple[int, tuple[ArithOp, ...]]:
    """The initial value and the operations, drawn from ``random.Random(seed)``.

    Each operation is chosen among those that keep the value in ``[0, 10**(2*digits))``, so
    a large value gets subtracted or divided and a value never goes below zero.
    """
    rng = random.Random(seed)
    limit = 10 ** (2 * digits)
    value = rng.randrange(10 ** (digits - 1), 10**digits)
    initial = value
    ops: list[ArithOp] = []
    for _ in range(steps):
        choices: list[ArithOp] = []
        room = min(10**digits - 1, limit - 1 - value)
        if room >= 1:
            choices.append(ArithOp("add", rng.randrange(1, room + 1)))
        most = min(10**digits - 1, value)
        if most >= 1:
            choices.append(ArithOp("subtract", rng.randrange(1, most + 1)))
        factor = min(99, (limit - 1) // max(value, 1))
        if factor >= 2:
            choices.append(ArithOp("multiply", rng.randrange(2, factor + 1)))
        choices.append(ArithOp("divide", rng.randrange(2, 100)))
        op = rng.choice(choices)
        ops.append(op)
        value = op.apply(value)
    return initial, tuple(ops)


SYSTEM_PROMPT = (
    "You are a careful calculator working one step of a long calculation.\n"
    "You are given the current value and exactly one operation. Apply exactly that one "
    "operation to the current value. Division is floor division: divide and round down to a "
    "whole number.\n"
    "You may show brief working, then end your answer with one line in this EXACT FORMAT:\n"
    "result = N\n"
    "where N is the whole-number result written with digits only (no commas or spaces)."
)

_RESULT = re.compile(r"(?i)\bresult\s*=\s*(-?\d+)\b")


class Arithmetic(Task[ArithState, int]):
    """A chain of ``steps`` operations on numbers of about ``digits`` digits.

    >>> task = Arithmetic(steps=3, digits=2, seed=1)
    >>> state = task.initial_state()
    >>> while not task.is_done(state):
    ...     state = task.apply(state, task.oracle(state))
    >>> state.index
    3
    """

    name: ClassVar[str] = "arithmetic"

    def __init__(self, steps: int = 50, digits: int = 6, seed: int = 0) -> None:
        self.steps = _check_int("steps", steps, 1, MAX_STEPS)
        self.digits = _check_int("digits", digits, 1, MAX_DIGITS)
        self.seed = _check_int("seed", seed, 0, MAX_SEED)
        self.initial_value, self.operations = generate_operations(
            self.steps, self.digits, self.seed
        )

    def __repr__(self) -> str:
        return f"Arithmetic(steps={self.steps}, digits={self.digits}, seed={self.seed})"

    @property
    def limit(self) -> int:
        """The correct chain's values stay below this: ``10**(2*digits)``."""
        return int(10 ** (2 * self.digits))

    def params(self) -> dict[str, Any]:
        """``{"steps", "digits", "seed"}``."""
        return {"steps": self.steps, "digits": self.digits, "seed": self.seed}

    def initial_state(self) -> ArithState:
        """The seeded ``digits``-digit start value, no operation applied."""
        return ArithState(value=self.initial_value, index=0)

    def is_done(self, state: ArithState) -> bool:
        """Whether every operation has been applied."""
        return state.index >= self.steps

    def max_steps(self) -> int:
        """``steps``."""
        return self.steps

    def operation(self, state: ArithState) -> ArithOp:
        """The operation the step from ``state`` applies."""
        if not 0 <= state.index < self.steps:
            raise StateError(f"no operation at index {state.index} (steps={self.steps})")
        return self.operations[state.index]

    def prompt(self, state: ArithState) -> Prompt:
        """The current value and the one operation; never the step number."""
        user = (
            f"Current value: {state.value}\n"
            f"Operation: {self.operation(state).describe()}\n"
            "Apply the operation to the current value and give the result."
        )
        return Prompt(system=SYSTEM_PROMPT, user=user)

    def parse(self, text: str) -> int:
        """The last ``result = N``; ``RedFlag("malformed", ...)`` if none or absurdly long.

        >>> Arithmetic(digits=2).parse("12 * 3 = 36\\nresult = 36")
        36
        """
        matches = _RESULT.findall(text)
        if not matches:
            raise RedFlag("malformed", "no result line")
        number = matches[-1]
        if len(number.lstrip("-")) > 4 * self.digits + 4:
            raise RedFlag("malformed", f"result has {len(number.lstrip('-'))} digits")
        return int(number)

    def apply(self, state: ArithState, answer: int) -> ArithState:
        """The voted result becomes the value; one more operation is done."""
        return ArithState(value=answer, index=state.index + 1)

    def state_to_json(self, state: ArithState) -> Any:
        """``{"value": V, "index": i}``."""
        return {"value": state.value, "index": state.index}

    def state_from_json(self, data: Any) -> ArithState:
        """The inverse of :meth:`state_to_json`; raises ValueError on a bad shape."""
        if not isinstance(data, dict) or set(data) != {"value", "index"}:
            raise StateError("an arithmetic state is an object with 'value' and 'index'")
        value, index = data["value"], data["index"]
        if not _is_int(value):
            raise StateError(f"'value' must be an integer, got {value!r}")
        if not _is_int(index) or not 0 <= index <= self.steps:
            raise StateError(f"'index' must be an integer in 0..{self.steps}, got {index!r}")
        return ArithState(value=value, index=index)

    def answer_to_json(self, answer: int) -> Any:
        """``{"result": N}``."""
        return {"result": answer}

    def oracle(self, state: ArithState) -> int | None:
        """The operation's correct result; None once the chain is done."""
        if not 0 <= state.index < self.steps:
            return None
        return self.operations[state.index].apply(state.value)
