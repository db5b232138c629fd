"""The simulated model's hooks for sorting by comparison: read a prompt, answer right or wrong."""

from __future__ import annotations

import random
import re

import msgspec

from events import canonical_json

from ..core._simulator import randbelow
from ._sort import MAX_ITEM_CHARS, QUESTION, RULES, Item, Label, comes_first, item_text

_RULE_OF = {text: key for key, text in RULES.items()}
_RULE = re.compile(r"(?m)^Rule: (.*)$")
_A = re.compile(r"(?m)^A: (.*)$")
_B = re.compile(r"(?m)^B: (.*)$")
_INT = re.compile(r"-?(?:0|[1-9][0-9]{0,17})")
_STR = msgspec.json.Decoder(str)

_REASONS = (
    "Comparing the two items under the rule, {x} comes first.",
    "Checking the rule against both items: {x} goes before the other.",
    "Under this ordering, item {x} is the earlier one.",
    "Going by the rule, the item that comes first is {x}.",
)


class SortQuestion(msgspec.Struct, frozen=True):
    """What one sort prompt asks: does ``a`` or ``b`` come first, for items of one kind
    (``numeric`` or strings) in ascending or ``descending`` order."""

    a: Item
    b: Item
    numeric: bool
    descending: bool


def _item(text: str, numeric: bool) -> Item | None:
    if numeric:
        return int(text) if _INT.fullmatch(text) else None
    try:
        value = _STR.decode(text)
    except msgspec.DecodeError:
        return None
    return value if len(value) <= MAX_ITEM_CHARS else None


class SortSimulator:
    """Answers the prompts of :class:`maker.tasks.Sort` for the simulated model.

    A comparison has one wrong answer, the other letter: every wrong vote agrees on it, as a
    real model's do when it misjudges a pair.
    """

    @property
    def task_name(self) -> str:
        """``"sort"``."""
        return "sort"

    def read_prompt(self, system: str, user: str) -> SortQuestion | None:
        """The two items and the rule in a sort prompt, or None if it is not one."""
        # Every sort prompt asks this: other tasks' prompts are turned away without a search.
        if QUESTION not in user:
            return None
        rule, a_line, b_line = _RULE.search(user), _A.search(user), _B.search(user)
        if rule is None or a_line is None or b_line is None:
            return None
        key = _RULE_OF.get(rule.group(1))
        if key is None:
            return None
        numeric, descending = key
        a, b = _item(a_line.group(1), numeric), _item(b_line.group(1), numeric)
        if a is None or b is None or a == b:
            return None
        return SortQuestion(a=a, b=b, numeric=numeric, descending=descending)

    def state_key(self, state: SortQuestion) -> str:
        """Canonical JSON of the two items and the rule."""
        return canonical_json([state.a, state.b, state.numeric, state.descending])

    def oracle(self, state: SortQuestion) -> Label:
        """``A`` when A comes first under the rule, else ``B``."""
        return "A" if comes_first(state.a, state.b, state.descending) else "B"

    def wrong_answers(self, state: SortQuestion, rng: random.Random, count: int) -> list[Label]:
        """The other letter (when ``count`` allows one): the only wrong answer there is."""
        other: Label = "B" if self.oracle(state) == "A" else "A"
        return [other][: max(count, 0)]

    def render(self, answer: Label, rng: random.Random) -> str:
        """A line of reasoning, then ``first = X`` in one of a few layouts."""
        reason = _REASONS[randbelow(rng, len(_REASONS))].format(x=answer)
        style = randbelow(rng, 3)
        if style == 0:
            return f"{reason}\nfirst = {answer}"
        if style == 1:
            return f"{reason}\n\n```\nfirst = {answer}\n```"
        return f"{reason}\n**first = {answer}**"

    def render_malformed(self, state: SortQuestion, rng: random.Random) -> str:
        """A response the strict parser rejects, drawn from the ways answers go wrong: no
        answer line, the item instead of its letter, a quoted or lowercase letter, a letter
        that is not one, or two lines that disagree."""
        right = self.oracle(state)
        other = "B" if right == "A" else "A"
        winner = state.a if right == "A" else state.b
        return rng.choice(
            (
                "Let me compare the two items carefully before answering.",
                f"first: {right}",
                f"The item that comes first is {right}.",
                f"first = {item_text(winner)}",
                f'first = "{right}"',
                f"first = {right.lower()}",
                "first = C",
                f"first = {right}{other}",
                f"first = {right}\nWait, checking again.\nfirst = {other}",
            )
        )
