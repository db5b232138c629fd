"""A chain of multi-digit arithmetic operations, one per step: a second long sequential task.

Each step applies one operation (add, subtract, multiply, floor-divide) to the running value.
The operations are drawn once from ``seed`` so that the running value of the correct chain
stays in ``[0, 10**(2*digits))``.

With ``free_form=True`` the prompt lets the model write the result in any usual way (``1234``,
``1234.0``, ``1.234e3``) and the parser keeps what it wrote: answers that agree in value come in
several surface forms, as free-form answers of real models do, and split the vote unless a
matcher (``number``) lets them vote together.
"""

from __future__ import annotations

import random
import re
from decimal import Decimal, InvalidOperation
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

FREE_FORM_SYSTEM_PROMPT = (
    "You are a careful calculator working one step of a long calculation.\n"
    "You are given the current value and exactly one operation. Apply exactly that one "
    "operation to the current value. Division is floor division: divide and round down to a "
    "whole number.\n"
    "You may show brief working, then end your answer with one line in this format:\n"
    "result = N\n"
    "where N is the whole-number result, written as you like: digits, a decimal point or an "
    "exponent are all fine."
)

_FREE_RESULT = re.compile(r"(?im)^[ \t]*result[ \t]*=[ \t]*(\S+)[ \t]*$")
_FREE_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


class Arithmetic(Task[ArithState, Any]):
    """A chain of ``steps`` operations on numbers of about ``digits`` digits.

    The answer is the result, an int; with ``free_form`` it is the result as the model wrote
    it (a string such as ``"1234.0"``), whose value becomes the next state's.

    >>> task = Arithmetic(steps=3, digits=2, seed=1)
    >>> state = task.initial_state()
    >>> while not task.is_done(state):
    ...     state = task.apply(state, task.oracle(state))
    >>> state.index
    3
    """

    name: ClassVar[str] = "arithmetic"

    def __init__(
        self, steps: int = 50, digits: int = 6, seed: int = 0, free_form: bool = False
    ) -> None:
        self.steps = _check_int("steps", steps, 1, MAX_STEPS)
        self.digits = _check_int("digits", digits, 1, MAX_DIGITS)
        self.seed = _check_int("seed", seed, 0, MAX_SEED)
        if not isinstance(free_form, bool):
            raise ConfigError("free_form", f"must be true or false, got {free_form!r}")
        self.free_form = free_form
        self.initial_value, self.operations = generate_operations(
            self.steps, self.digits, self.seed
        )

    def __repr__(self) -> str:
        free = ", free_form=True" if self.free_form else ""
        return f"Arithmetic(steps={self.steps}, digits={self.digits}, seed={self.seed}{free})"

    @property
    def limit(self) -> int:
        """The correct chain's values stay below this: ``10**(2*digits)``."""
        return int(10 ** (2 * self.digits))

    def params(self) -> dict[str, Any]:
        """``{"steps", "digits", "seed"}``, and ``"free_form"`` when set (a run recorded before
        it existed records none)."""
        params: dict[str, Any] = {"steps": self.steps, "digits": self.digits, "seed": self.seed}
        if self.free_form:
            params["free_form"] = True
        return params

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
        system = FREE_FORM_SYSTEM_PROMPT if self.free_form else SYSTEM_PROMPT
        return Prompt(system=system, user=user)

    def parse(self, text: str) -> Any:
        """The last ``result = N``; ``RedFlag("malformed", ...)`` if none or absurdly long.
        With ``free_form``, N as written (a whole number in digits, with a decimal point or an
        exponent), red-flagged when it is not a whole number.

        >>> Arithmetic(digits=2).parse("12 * 3 = 36\\nresult = 36")
        36
        >>> Arithmetic(digits=2, free_form=True).parse("result = 3.6e1")
        '3.6e1'
        """
        if self.free_form:
            return self._parse_free(text)
        matches = _RESULT.findall(text)
        if not matches:
            raise RedFlag("malformed", "no result line")
        number = matches[-1]
        if len(number.lstrip("-")) > 4 * self.digits + 4:
            raise RedFlag("malformed", f"result has {len(number.lstrip('-'))} digits")
        return int(number)

    def _parse_free(self, text: str) -> str:
        matches = _FREE_RESULT.findall(text)
        if not matches:
            raise RedFlag("malformed", "no result line")
        written = matches[-1]
        if len(written) > 4 * self.digits + 12 or _FREE_NUMBER.fullmatch(written) is None:
            raise RedFlag("malformed", f"result {written[:40]!r} is not a number")
        value = Decimal(written)
        if abs(value.adjusted()) > 4 * self.digits + 4 or value != value.to_integral_value():
            raise RedFlag("malformed", f"result {written!r} is not a whole number")
        return str(written)

    def apply(self, state: ArithState, answer: Any) -> ArithState:
        """The voted result becomes the value; one more operation is done."""
        if self.free_form:
            try:
                value = int(Decimal(answer))
            except (InvalidOperation, TypeError, ValueError):
                raise StateError(f"result {answer!r} is not a number") from None
            return ArithState(value=value, index=state.index + 1)
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

    def answer_to_json(self, answer: Any) -> Any:
        """``{"result": N}`` (N as written with ``free_form``)."""
        return {"result": answer}

    def oracle(self, state: ArithState) -> Any:
        """The operation's correct result (in digits, a string, with ``free_form``); None once
        the chain is done."""
        if not 0 <= state.index < self.steps:
            return None
        right = self.operations[state.index].apply(state.value)
        return str(right) if self.free_form else right
