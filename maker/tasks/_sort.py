"""Sorting by binary insertion, one strict comparison per step.

The state is explicit: the items placed so far (in order), the items still to place (the first
is the one being placed), and the window ``[lo, hi)`` of positions where it may still go. Each
step asks one question about two items only, "which of A and B comes first under the rule?",
where A is the item being placed and B the placed item in the middle of the window; the answer
halves the window, and when the window closes the item is inserted there. Given correct answers
the sequence of comparisons is fixed by the items, so the run has a known length and a wrong
answer shows as a step that differs from the reference (and, usually, as a wrong final order).

Items are distinct integers or distinct strings, so every comparison is strict: A and B are
never equal, and exactly one of the two answers is right.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import msgspec

from ..core._errors import ConfigError, RedFlag, StateError
from ..core._task import Prompt, Task

Item = int | str
"""One item to sort: all of a task's items are ints, or all are strings."""

Label = Literal["A", "B"]
"""Which of the two compared items comes first."""

Order = Literal["ascending", "descending"]

MAX_ITEMS = 1000
MAX_ITEM_CHARS = 100
MAX_SEED = 2**63 - 1
MAX_INT = 10**18
"""Integer items lie strictly within +-MAX_INT: a prompt never shows a hostile length."""

DEFAULT_COUNT = 20


class SortState(msgspec.Struct, frozen=True):
    """The placed items in order, the items still to place (``pending[0]`` is being placed),
    and the window ``[lo, hi)`` of ``placed`` positions it may still go to.

    While items are pending, ``0 <= lo < hi <= len(placed)``; once none are, the window is the
    whole list (``lo = 0``, ``hi = len(placed)``).
    """

    placed: tuple[Item, ...]
    pending: tuple[Item, ...]
    lo: int
    hi: int

    @property
    def compared(self) -> tuple[Item, Item]:
        """``(A, B)``: the item being placed and the placed item it is compared with."""
        if not self.pending:
            raise StateError("no comparison is pending: every item is placed")
        return self.pending[0], self.placed[(self.lo + self.hi) // 2]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(field: str, value: object, lo: int, hi: int) -> int:
    if not _is_int(value):
        raise ConfigError(field, f"must be an integer, got {value!r}")
    assert isinstance(value, int)
    if not lo <= value <= hi:
        raise ConfigError(field, f"must be in {lo}..{hi}, got {value}")
    return value


def comes_first(a: Item, b: Item, descending: bool) -> bool:
    """Whether ``a`` comes before ``b`` (two distinct items of one kind) under the rule.

    >>> comes_first(3, 17, False), comes_first("b", "a", True)
    (True, True)
    """
    return (a > b) if descending else (a < b)  # type: ignore[operator]


def generate_items(count: int, seed: int) -> tuple[int, ...]:
    """``count`` distinct integers drawn from ``random.Random(seed)``, in drawn order."""
    rng = random.Random(seed)
    return tuple(rng.sample(range(1, max(1000, 10 * count)), count))


def comparisons(items: Sequence[Item], descending: bool) -> int:
    """How many comparisons binary insertion makes on ``items`` with every answer right.

    >>> comparisons([3, 1, 2], False)
    3
    """
    placed: list[Item] = [items[0]]
    count = 0
    for x in items[1:]:
        lo, hi = 0, len(placed)
        while lo < hi:
            mid = (lo + hi) // 2
            count += 1
            if comes_first(x, placed[mid], descending):
                hi = mid
            else:
                lo = mid + 1
        placed.insert(lo, x)
    return count


def _check_items(items: object) -> tuple[Item, ...]:
    if isinstance(items, str | bytes) or not isinstance(items, Sequence):
        raise ConfigError("items", f"must be a list, got {type(items).__name__}")
    values = tuple(items)
    if not 2 <= len(values) <= MAX_ITEMS:
        raise ConfigError("items", f"must hold 2..{MAX_ITEMS} items, got {len(values)}")
    if all(_is_int(v) for v in values):
        for v in values:
            assert isinstance(v, int)
            if not -MAX_INT < v < MAX_INT:
                raise ConfigError("items", f"integers must lie strictly within +-10**18, got {v}")
    elif all(isinstance(v, str) for v in values):
        for v in values:
            assert isinstance(v, str)
            if len(v) > MAX_ITEM_CHARS:
                raise ConfigError("items", f"a string may have {MAX_ITEM_CHARS} characters")
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise ConfigError("items", f"{v!r} is not valid Unicode text") from None
    else:
        raise ConfigError("items", "must be all integers or all strings")
    seen: set[Item] = set()
    for v in values:
        if v in seen:
            raise ConfigError("items", f"must be distinct; {v!r} is there twice")
        seen.add(v)
    return values


def item_text(item: Item) -> str:
    """The item as a prompt shows it: an integer in digits, a string as JSON (quoted)."""
    return str(item) if isinstance(item, int) else json.dumps(item, ensure_ascii=False)


RULES: dict[tuple[bool, bool], str] = {
    (True, False): "smaller numbers come first (ascending numeric order).",
    (True, True): "larger numbers come first (descending numeric order).",
    (False, False): (
        "alphabetical order by Unicode code point, character by character: at the first "
        "position where the two differ, the smaller character comes first, and an item that "
        'is a prefix of the other comes first ("Zoo" before "apple", "car" before "cart").'
    ),
    (False, True): (
        "reverse alphabetical order by Unicode code point, character by character: at the "
        "first position where the two differ, the larger character comes first, and an item "
        'that is a prefix of the other comes last ("apple" before "Zoo", "cart" before "car").'
    ),
}
"""The rule line of the prompt, by ``(numeric, descending)``."""

SYSTEM_PROMPT = (
    "You are a careful assistant sorting a list one comparison at a time.\n"
    "You are given an ordering rule and two different items, A and B. Decide which of the two "
    "comes first under the rule. They are never equal.\n"
    "You may reason briefly, then end your answer with one line in this EXACT FORMAT:\n"
    "first = A\n"
    "or\n"
    "first = B\n"
    "giving the letter only, never the item itself."
)

QUESTION = "Which of A and B comes first under the rule?"

# The word, '=' and the token after it: a response names its answer by a bare letter. Anything
# else after "first =" (the item itself, a quoted letter, a lowercase one) reads as another
# token, and is a red flag rather than something to guess at.
_FIRST = re.compile(r"(?i)\bfirst[ \t]*=[ \t]*([A-Za-z0-9_]*)")
_LABELS = frozenset({"A", "B"})


class Sort(Task[SortState, Label]):
    """Sort ``items`` (or ``count`` integers drawn from ``seed``) by binary insertion, one voted
    comparison per step, under ``order`` (ascending or descending).

    >>> task = Sort(items=[3, 1, 2])
    >>> state = task.initial_state()
    >>> while not task.is_done(state):
    ...     state = task.apply(state, task.oracle(state))
    >>> state.placed, task.is_solved(state), task.max_steps()
    ((1, 2, 3), True, 3)
    """

    name: ClassVar[str] = "sort"

    def __init__(
        self,
        items: Sequence[int] | Sequence[str] | None = None,
        count: int | None = None,
        seed: int | None = None,
        order: Order = "ascending",
    ) -> None:
        if order not in ("ascending", "descending"):
            raise ConfigError("order", f"must be 'ascending' or 'descending', got {order!r}")
        self.order: Order = order
        self.descending = order == "descending"
        if items is not None:
            if count is not None or seed is not None:
                field = "count" if count is not None else "seed"
                raise ConfigError(field, "give items, or count and seed to draw them; not both")
            self.count: int | None = None
            self.seed: int | None = None
            self.items: tuple[Item, ...] = _check_items(items)
            self._given = True
        else:
            self.count = _check_int(
                "count", DEFAULT_COUNT if count is None else count, 2, MAX_ITEMS
            )
            self.seed = _check_int("seed", 0 if seed is None else seed, 0, MAX_SEED)
            self.items = generate_items(self.count, self.seed)
            self._given = False
        self.numeric = isinstance(self.items[0], int)
        self._rule = RULES[self.numeric, self.descending]
        self._steps = comparisons(self.items, self.descending)
        self._solution = tuple(sorted(self.items, reverse=self.descending))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"Sort({args})"

    def params(self) -> dict[str, Any]:
        """``{"items", "order"}`` when the items were given, else ``{"count", "seed", "order"}``."""
        if self._given:
            return {"items": list(self.items), "order": self.order}
        return {"count": self.count, "seed": self.seed, "order": self.order}

    def initial_state(self) -> SortState:
        """The first item placed, the others pending, the second one's window the whole list."""
        return SortState(placed=self.items[:1], pending=self.items[1:], lo=0, hi=1)

    def is_done(self, state: SortState) -> bool:
        """Whether every item is placed (rightly or not: see :meth:`is_solved`)."""
        return not state.pending

    def is_solved(self, state: SortState) -> bool:
        """Whether every item is placed and the placed list is in the rule's order."""
        return not state.pending and state.placed == self._solution

    def solution(self) -> tuple[Item, ...]:
        """The items in the rule's order: what a run with every step right ends with."""
        return self._solution

    def max_steps(self) -> int:
        """The comparisons binary insertion makes with every answer right: the run's exact
        length on the reference path (a wrong answer can make the real path longer, and then
        the run fails at this budget)."""
        return self._steps

    def prompt(self, state: SortState) -> Prompt:
        """The rule and the two items compared; never the list, the step or the window."""
        a, b = state.compared
        user = f"Rule: {self._rule}\nA: {item_text(a)}\nB: {item_text(b)}\n{QUESTION}"
        return Prompt(system=SYSTEM_PROMPT, user=user)

    def parse(self, text: str) -> Label:
        """The letter of every ``first = X`` line, which must be ``A`` or ``B`` and all agree;
        anything else raises ``RedFlag("malformed", detail)``.

        A response that names both letters has lost track of its answer, so it is flagged
        rather than read by its last line.

        >>> Sort(items=[1, 2]).parse("2 is larger, so A comes first.\\nfirst = A")
        'A'
        """
        found = _FIRST.findall(text)
        if not found:
            raise RedFlag("malformed", "no first line")
        for label in found:
            if label not in _LABELS:
                shown = repr(label[:20]) if label else "nothing"
                raise RedFlag("malformed", f"first is {shown}, not A or B")
        if len(set(found)) > 1:
            raise RedFlag("malformed", "first lines disagree")
        return "A" if found[0] == "A" else "B"

    def apply(self, state: SortState, answer: Label) -> SortState:
        """Halve the window by the voted answer; when it closes, insert the item there."""
        if not state.pending:
            raise StateError("every item is placed: there is no step to apply")
        mid = (state.lo + state.hi) // 2
        lo, hi = (state.lo, mid) if answer == "A" else (mid + 1, state.hi)
        if lo < hi:
            return SortState(placed=state.placed, pending=state.pending, lo=lo, hi=hi)
        placed = (*state.placed[:lo], state.pending[0], *state.placed[lo:])
        return SortState(placed=placed, pending=state.pending[1:], lo=0, hi=len(placed))

    def state_to_json(self, state: SortState) -> Any:
        """``{"placed": [...], "pending": [...], "lo": i, "hi": j}``."""
        return {
            "placed": list(state.placed),
            "pending": list(state.pending),
            "lo": state.lo,
            "hi": state.hi,
        }

    def state_from_json(self, data: Any) -> SortState:
        """The inverse of :meth:`state_to_json`; raises StateError on a bad shape, or on items
        that are not this task's."""
        if not isinstance(data, dict) or set(data) != {"placed", "pending", "lo", "hi"}:
            raise StateError("a sort state is an object with 'placed', 'pending', 'lo' and 'hi'")
        placed, pending, lo, hi = data["placed"], data["pending"], data["lo"], data["hi"]
        kind = int if self.numeric else str
        if not (
            isinstance(placed, list)
            and isinstance(pending, list)
            and all(type(v) is kind for v in (*placed, *pending))
        ):
            raise StateError(f"'placed' and 'pending' must be lists of {kind.__name__}s")
        if len(placed) + len(pending) != len(self.items) or set(placed) | set(pending) != set(
            self.items
        ):
            raise StateError("'placed' and 'pending' must hold this task's items, each once")
        if not placed or not _is_int(lo) or not _is_int(hi):
            raise StateError("'placed' must not be empty, and 'lo' and 'hi' must be integers")
        if pending and not 0 <= lo < hi <= len(placed):
            raise StateError(f"the window must lie in 0..{len(placed)}, got [{lo}, {hi})")
        if not pending and (lo, hi) != (0, len(placed)):
            raise StateError("a finished sort's window is the whole list")
        return SortState(placed=tuple(placed), pending=tuple(pending), lo=lo, hi=hi)

    def answer_to_json(self, answer: Label) -> Any:
        """``{"first": "A"}`` or ``{"first": "B"}``."""
        return {"first": answer}

    def oracle(self, state: SortState) -> Label | None:
        """``A`` when the item being placed comes first, else ``B``; None once all are placed."""
        if not state.pending:
            return None
        a, b = state.compared
        return "A" if comes_first(a, b, self.descending) else "B"
