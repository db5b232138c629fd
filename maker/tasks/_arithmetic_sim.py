"""The simulated model's hooks for the arithmetic chain: read a prompt, answer right or wrong.

A free-form prompt (``Arithmetic(free_form=True)``) is answered like a strict one, right with
the same probability, but the result is written in one of several forms that agree in value:
digits (half of the answers), ``N.0`` (a quarter), an exact exponent form such as ``1.234e3``
(an eighth) and ``N.00`` (an eighth), each drawn per sample.
"""

from __future__ import annotations

import random
import re

import msgspec

from ..core._simulator import randbelow
from ._arithmetic import FREE_FORM_SYSTEM_PROMPT, ArithOp, OpName

_VALUE = re.compile(r"(?m)^Current value:[ \t]*(-?[0-9]+)[ \t]*$")
_OPERATION = re.compile(
    r"(?m)^Operation:[ \t]*(add|subtract|multiply by|divide by)[ \t]+([0-9]+)"
    r"(?:[ \t]+\(floor division\))?[ \t]*$"
)
_OPS: dict[str, OpName] = {
    "add": "add",
    "subtract": "subtract",
    "multiply by": "multiply",
    "divide by": "divide",
}
# Far beyond any task's digit budget, so read_prompt never feeds int() a hostile length.
_MAX_PROMPT_DIGITS = 200

_WORKING = (
    "Working through the digits from the right: {n}.",
    "Carrying as I go, the value comes to {n}.",
    "Computing carefully, I get {n}.",
    "Doing the operation step by step gives {n}.",
)


class ArithQuestion(msgspec.Struct, frozen=True):
    """What one arithmetic prompt asks: ``operation`` applied to ``value`` (``free``: with the
    result written as the model likes)."""

    value: int
    operation: ArithOp
    free: bool = False


class FreeResult(int):
    """The answer to a free-form prompt: a result the model writes in a form of its choice.

    An int (it is the result), marked so that :meth:`ArithmeticSimulator.render` writes it
    freely: the simulated model hands answers from the oracle to the renderer untouched.
    """

    __slots__ = ()


def written_forms(value: int) -> tuple[str, str, str, str]:
    """The forms a free-form result is written in: digits, ``N.0``, exponent, ``N.00``.

    >>> written_forms(1230)
    ('1230', '1230.0', '1.23e3', '1230.00')
    """
    digits = str(abs(value))
    sign = "-" if value < 0 else ""
    tail = digits[1:].rstrip("0")
    mantissa = digits[0] + (f".{tail}" if tail else "")
    return str(value), f"{value}.0", f"{sign}{mantissa}e{len(digits) - 1}", f"{value}.00"


# Of eight draws: four in digits, two N.0, one exponent, one N.00.
_FORM_OF_DRAW = (0, 0, 0, 0, 1, 1, 2, 3)


class ArithmeticSimulator:
    """Answers the prompts of :class:`maker.tasks.Arithmetic` for the simulated model."""

    @property
    def task_name(self) -> str:
        """``"arithmetic"``."""
        return "arithmetic"

    def read_prompt(self, system: str, user: str) -> ArithQuestion | None:
        """The value and operation in an arithmetic prompt, or None if it is not one."""
        # Every match holds these words: checking for them first spares the two searches on
        # other tasks' prompts, which the simulated model tries this reader on first.
        if "Current value:" not in user or "Operation:" not in user:
            return None
        value = _VALUE.search(user)
        operation = _OPERATION.search(user)
        if value is None or operation is None:
            return None
        if len(value.group(1)) > _MAX_PROMPT_DIGITS or len(operation.group(2)) > _MAX_PROMPT_DIGITS:
            return None
        op = _OPS[operation.group(1)]
        operand = int(operation.group(2))
        if op == "divide" and operand == 0:
            return None
        return ArithQuestion(
            value=int(value.group(1)),
            operation=ArithOp(op, operand),
            free=system == FREE_FORM_SYSTEM_PROMPT,
        )

    def state_key(self, state: ArithQuestion) -> str:
        """``"<value> <operation>"``."""
        return f"{state.value} {state.operation.describe()}"

    def oracle(self, state: ArithQuestion) -> int:
        """The operation's correct result (to be written freely, for a free-form prompt)."""
        right = state.operation.apply(state.value)
        return FreeResult(right) if state.free else right

    def wrong_answers(self, state: ArithQuestion, rng: random.Random, count: int) -> list[int]:
        """:meth:`slips`, each to be written freely for a free-form prompt."""
        slips = self.slips(state, rng, count)
        return [FreeResult(n) for n in slips] if state.free else slips

    def slips(self, state: ArithQuestion, rng: random.Random, count: int) -> list[int]:
        """Up to ``count`` distinct non-negative slips: off by one, one digit off by one (a
        dropped or doubled carry), two neighbouring digits swapped. Ordered by ``rng``."""
        right = state.operation.apply(state.value)
        size = len(str(abs(right)))
        candidates = [right + 1, right - 1]
        for i in range(1, size + 1):
            candidates += [right + 10**i, right - 10**i]
        text = str(abs(right))
        for i in range(len(text) - 1):
            if text[i] != text[i + 1] and not (i == 0 and text[i + 1] == "0"):
                swapped = text[:i] + text[i + 1] + text[i] + text[i + 2 :]
                candidates.append(int(swapped) * (1 if right >= 0 else -1))
        unique = [c for c in dict.fromkeys(candidates) if c >= 0 and c != right]
        rng.shuffle(unique)
        return unique[: max(count, 0)]

    def render(self, answer: int, rng: random.Random) -> str:
        """A line of working, then ``result = N`` (N in a form drawn from ``rng`` when free)."""
        if type(answer) is FreeResult:
            value = int(answer)
            working = _WORKING[randbelow(rng, len(_WORKING))].format(n=value)
            form = written_forms(value)[_FORM_OF_DRAW[randbelow(rng, 8)]]
            return f"{working}\nresult = {form}"
        working = _WORKING[randbelow(rng, len(_WORKING))].format(n=answer)
        return f"{working}\nresult = {answer}"

    def render_malformed(self, state: ArithQuestion, rng: random.Random) -> str:
        """A response the strict parser rejects: no ``result = N`` line it can read."""
        right = state.operation.apply(state.value)
        return rng.choice(
            (
                f"The answer is {right}.",
                "result = ?",
                f"result: {right}",
                "result = (I could not finish the calculation)",
                f"Let me compute {state.value} {state.operation.describe()} carefully first.",
                "result = " + "9" * 300,
                f"result = {right}x",
            )
        )
