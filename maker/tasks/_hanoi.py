"""Towers of Hanoi as the paper ran it: one move per step, the strategy in the prompt.

The state is three pegs, each listed bottom to top (the last element is the top disk), and the
previous move. Each agent sees only the strategy, the previous move and the current state; the
next state is the ``next_state`` the winning answer gave, so a wrong vote propagates honestly.
"""

from __future__ import annotations

import ast
import re
import warnings
from typing import Any, ClassVar

import msgspec

from ..core._errors import ConfigError, RedFlag, StateError
from ..core._task import Prompt, Task

Pegs = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
"""Three pegs, each bottom to top."""

Move = tuple[int, int, int]
"""``(disk, from_peg, to_peg)``."""

MAX_DISKS = 30

CLOCKWISE = 1
"""Disk 1 circles 0 -> 1 -> 2 -> 0: the paper's text, right for an even number of disks."""

COUNTERCLOCKWISE = -1
"""Disk 1 circles 0 -> 2 -> 1 -> 0: right for an odd number of disks."""


class HanoiState(msgspec.Struct, frozen=True):
    """Three pegs (bottom to top) and the move that led here (None at the start)."""

    pegs: Pegs
    previous_move: Move | None = None


class HanoiAnswer(msgspec.Struct, frozen=True):
    """One agent's answer: the move and the state it claims results. Hashable."""

    move: Move
    next_state: Pegs


def direction_for(disks: int) -> int:
    """Which way disk 1 must circle so that a tower of ``disks`` ends on peg 2."""
    return CLOCKWISE if disks % 2 == 0 else COUNTERCLOCKWISE


def legal_moves(pegs: Pegs) -> list[Move]:
    """Every legal move from ``pegs``: a top disk onto an empty peg or a larger top disk.

    Only the tops are looked at, so this is well defined on corrupted (unsorted) pegs too.

    >>> legal_moves(((2, 1), (), ()))
    [(1, 0, 1), (1, 0, 2)]
    """
    moves: list[Move] = []
    three = (pegs[0], pegs[1], pegs[2])
    for src, dsts in _OTHER_PEGS:
        from_peg = three[src]
        if not from_peg:
            continue
        disk = from_peg[-1]
        for dst in dsts:
            to_peg = three[dst]
            if not to_peg or to_peg[-1] > disk:
                moves.append((disk, src, dst))
    return moves


_OTHER_PEGS = ((0, (1, 2)), (1, (0, 2)), (2, (0, 1)))
"""Each peg with the others, in order: the pairs :func:`legal_moves` looks at."""


def move_top(pegs: Pegs, src: int, dst: int) -> Pegs:
    """The pegs after the top disk of ``src`` went onto ``dst``, legal or not."""
    # Pegs are tuples: only the two that change are rebuilt, by slicing rather than via lists.
    out = list(pegs)
    disk = out[src][-1]
    out[src] = out[src][:-1]
    out[dst] = (*out[dst], disk)
    return (out[0], out[1], out[2])


def strategy_answer(state: HanoiState, direction: int) -> HanoiAnswer | None:
    """The strategy's next answer, or None when the strategy has no unique move.

    If the previous move did not move disk 1 (or there is none), disk 1 moves one peg in
    ``direction``; otherwise the only legal move that does not involve disk 1 is made.
    """
    prev = state.previous_move
    pegs = state.pegs
    if prev is None or prev[0] != 1:
        for src, peg in enumerate(pegs):
            if peg and peg[-1] == 1:
                move: Move = (1, src, (src + direction) % 3)
                break
        else:
            # Disk 1 is buried or missing: the state is corrupted and the strategy says nothing.
            return None
    else:
        others = [m for m in legal_moves(pegs) if m[0] != 1]
        if len(others) != 1:
            return None
        move = others[0]
    return HanoiAnswer(move=move, next_state=move_top(pegs, move[1], move[2]))


def state_json(state: HanoiState) -> dict[str, Any]:
    """``{"pegs": [[...], [...], [...]], "previous_move": [d, f, t] or None}``."""
    return {
        "pegs": [list(p) for p in state.pegs],
        "previous_move": None if state.previous_move is None else list(state.previous_move),
    }


def optimal_moves(n: int) -> list[Move]:
    """The unique optimal solution moving ``n`` disks from peg 0 to peg 2 (2**n - 1 moves).

    >>> optimal_moves(2)
    [(1, 0, 1), (2, 0, 2), (1, 1, 2)]
    """
    moves: list[Move] = []

    def solve(k: int, src: int, dst: int, via: int) -> None:
        if k == 0:
            return
        solve(k - 1, src, via, dst)
        moves.append((k, src, dst))
        solve(k - 1, via, dst, src)

    solve(n, 0, 2, 1)
    return moves


def hanoi_state_at(disks: int, index: int) -> HanoiState:
    """The Hanoi state after ``index`` moves of the optimal solution, in O(disks) time.

    It is the state the oracle reaches from the start in ``index`` steps, previous move
    included, without walking there: a 20-disk calibration needs states up to a million
    moves deep.

    >>> hanoi_state_at(3, 0).pegs
    ((3, 2, 1), (), ())
    >>> state = hanoi_state_at(3, 3)
    >>> state.pegs, state.previous_move
    (((3,), (2, 1), ()), (1, 2, 1))
    """
    total = 2**disks - 1
    if not 0 <= index <= total:
        raise ConfigError("index", f"must be in 0..{total}, got {index}")
    pegs: list[list[int]] = [[], [], []]
    # Moving n disks src -> dst: 2**(n-1) - 1 moves take the n-1 smaller ones to via, one move
    # takes disk n to dst, and as many bring the smaller ones from via onto it.
    src, dst, via = 0, 2, 1
    remaining = index
    for disk in range(disks, 0, -1):
        half = 1 << (disk - 1)
        if remaining < half:
            pegs[src].append(disk)
            dst, via = via, dst
        else:
            pegs[dst].append(disk)
            remaining -= half
            src, via = via, src
    previous = None if index == 0 else _hanoi_move(disks, index - 1)
    return HanoiState(pegs=(tuple(pegs[0]), tuple(pegs[1]), tuple(pegs[2])), previous_move=previous)


def _hanoi_move(disks: int, index: int) -> tuple[int, int, int]:
    """Move number ``index`` (0-based) of the optimal solution."""
    src, dst, via = 0, 2, 1
    remaining = index
    for disk in range(disks, 0, -1):
        half = 1 << (disk - 1)
        if remaining == half - 1:
            return (disk, src, dst)
        if remaining < half - 1:
            dst, via = via, dst
        else:
            remaining -= half
            src, via = via, src
    raise AssertionError("unreachable: index checked by the caller")  # pragma: no cover


def _render_pegs(pegs: Pegs) -> str:
    return str([list(p) for p in pegs])


def _render_move(move: Move) -> str:
    return str(list(move))


# The paper's regexes, verbatim. Neither can match nested brackets inside a list, which is what
# makes an unbalanced or truncated answer a red flag rather than something to guess at.
_MOVE_RE = re.compile(r"(?is)\bmove\b\s*=\s*(\[[^\[\]]*\])")
_STATE_RE = re.compile(
    r"(?is)\bnext_state\b\s*=\s*(\[\s*\[[^\[\]]*\]\s*,\s*\[[^\[\]]*\]\s*,\s*\[[^\[\]]*\]\s*\])"
)
# Text made only of these characters can neither warn nor do anything surprising in
# literal_eval, and it is all a well-formed answer ever holds.
_PLAIN_LITERAL = re.compile(r"[\s0-9,+\-\[\]]*")

# literal_eval compiles its input and costs ~10x more than these regexes; every sample of a
# million-step run is parsed, so the shapes answers almost always take are read directly. They
# accept only text whose literal_eval value is plainly the same (short decimal ints, ASCII
# blanks, no trailing comma); everything else falls through to literal_eval.
_WS = r"[ \t\n]*"
_FLAT_BODY = rf"{_WS}(?:-?(?:0|[1-9][0-9]{{0,17}})(?:{_WS},{_WS}-?(?:0|[1-9][0-9]{{0,17}}))*{_WS})?"
_FLAT = re.compile(rf"\[{_FLAT_BODY}\]")
_THREE_FLAT = re.compile(
    rf"\[{_WS}(\[{_FLAT_BODY}\]){_WS},{_WS}(\[{_FLAT_BODY}\]){_WS},{_WS}(\[{_FLAT_BODY}\]){_WS}\]"
)
_INT = re.compile(r"-?[0-9]+")


_JSON = msgspec.json.Decoder()

# The shapes every well-formed answer and prompt has, decoded and type-checked in one C call.
_MOVE_JSON = msgspec.json.Decoder(Move)
_PEGS_JSON = msgspec.json.Decoder(Pegs)
_BIG = 2**62  # ints past this are left to literal(): literal_eval has a digit limit


def plain_move(text: str) -> Move | None:
    """``text`` as a move if it is JSON for three modest ints, else None (then use
    :func:`literal`, which reads every such text the same)."""
    try:
        move = _MOVE_JSON.decode(text)
    except ValueError:  # malformed, mistyped, unencodable, or past int's digit limit
        return None
    if not (-_BIG < move[0] < _BIG and -_BIG < move[1] < _BIG and -_BIG < move[2] < _BIG):
        return None
    return move


def plain_pegs(text: str) -> Pegs | None:
    """``text`` as three pegs if it is JSON for three lists of ints, else None (then use
    :func:`literal`). The ints are not bounded here: callers check the disk set."""
    try:
        return _PEGS_JSON.decode(text)
    except ValueError:  # malformed, mistyped, unencodable, or past int's digit limit
        return None


def _only_ints(value: Any) -> bool:
    """A list holding ints or lists of ints only (no floats, bools or huge numbers)."""
    if type(value) is not list:
        return False
    for item in value:
        if type(item) is list:
            if not all(type(x) is int and -(2**62) < x < 2**62 for x in item):
                return False
        elif not (type(item) is int and -(2**62) < item < 2**62):
            return False
    return True


def literal(text: str) -> Any:
    """``ast.literal_eval`` that raises only ValueError, whatever the text.

    Huge, deep or odd input makes literal_eval raise SyntaxError, MemoryError, RecursionError
    and others, and may emit Syntax/DeprecationWarnings; all become one ValueError here.

    >>> literal("[[3, 2], [], [-1]]")
    [[3, 2], [], [-1]]
    """
    # Plain lists of decimal ints are valid JSON too, and msgspec reads them far faster; it
    # gives up (to the paths below) on anything else, and is trusted only for exact ints.
    # Leading blanks are left to literal_eval: a newline then an indent is its IndentationError.
    if text[:1] == "[":
        try:
            fast = _JSON.decode(text)
        except (msgspec.DecodeError, UnicodeDecodeError):
            pass
        else:
            if _only_ints(fast):
                return fast
    if _FLAT.fullmatch(text):
        return [int(x) for x in _INT.findall(text)]
    three = _THREE_FLAT.fullmatch(text)
    if three:
        return [[int(x) for x in _INT.findall(peg)] for peg in three.groups()]
    try:
        if _PLAIN_LITERAL.fullmatch(text):
            return ast.literal_eval(text)
        # Only odd text gets here, so the process-wide warning filter is touched rarely.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.literal_eval(text)
    except Exception as exc:  # literal_eval's failure modes are not a closed set
        # Caught by the parser, which flags the response: never seen outside this module.
        raise ValueError(type(exc).__name__) from exc


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: int) -> str:
    return str(value) if -(10**6) < value < 10**6 else "a huge number"


def _as_move(value: Any) -> Move:
    """``value`` as a move, or RedFlag: exactly three ints."""
    if not isinstance(value, list | tuple):
        raise RedFlag("malformed", "move is not a list")
    if len(value) != 3:
        raise RedFlag("malformed", f"move has {len(value)} elements")
    if not all(_is_int(v) for v in value):
        raise RedFlag("malformed", "move holds a non-int")
    return (value[0], value[1], value[2])


def _as_pegs(value: Any) -> Pegs:
    """``value`` as three pegs of ints, or RedFlag. Disk sets are not checked here."""
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise RedFlag("malformed", "next_state is not three pegs")
    pegs: list[tuple[int, ...]] = []
    for peg in value:
        if not isinstance(peg, list | tuple):
            raise RedFlag("malformed", "next_state peg is not a list")
        if not all(_is_int(d) for d in peg):
            raise RedFlag("malformed", "next_state holds a non-int")
        pegs.append(tuple(peg))
    return (pegs[0], pegs[1], pegs[2])


def _check_disks(pegs: Pegs, n: int) -> None:
    seen: set[int] = set()
    for peg in pegs:
        for disk in peg:
            if not 1 <= disk <= n:
                raise RedFlag("malformed", f"next_state has disk {_short(disk)} outside 1..{n}")
            if disk in seen:
                raise RedFlag("malformed", f"next_state repeats disk {disk}")
            seen.add(disk)
    for disk in range(1, n + 1):
        if disk not in seen:
            raise RedFlag("malformed", f"next_state misses disk {disk}")


def _bracket_prefix(text: str) -> str | None:
    """The bracketed literal at the start of ``text`` (after blanks), closed if it was cut off."""
    text = text.lstrip()
    if not text.startswith("["):
        return None
    depth = 0
    end = len(text)
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth == 0:
                return text[: i + 1]
        elif not (ch.isdigit() or ch.isspace() or ch in ",+-"):
            # Prose ends a cut-off list; what came before is all we repair.
            end = i
            break
    body = text[:end].rstrip().rstrip(",")
    return body + "]" * depth


def _last_match(pattern: re.Pattern[str], word: str, text: str, lowered: str | None) -> str | None:
    """Group 1 of the last match of ``pattern`` in ``text`` (``pattern.findall(text)[-1]``), or
    None: for :data:`_MOVE_RE` and :data:`_STATE_RE`, whose matches begin with ``word`` in any
    case.

    Their matches never overlap (a match's only letters are its word; a word inside its
    brackets would need a bracket of its own), so the last one is the one that starts
    rightmost. In ASCII text a match can start only where the lowered text holds ``word``:
    those few places are tried from the right, instead of scanning every character for a
    case-insensitive word boundary. Other text (where ``(?i)`` also folds letters like the
    long s) takes ``findall``. ``lowered`` is ``text.lower()`` for ASCII text, else None.
    """
    if lowered is not None:
        at = lowered.rfind(word)
        while at >= 0:
            found = pattern.match(text, at)  # \b still sees the character before ``at``
            if found is not None:
                return found.group(1)
            # ``word`` cannot overlap itself, so the next one ends before this one starts.
            at = lowered.rfind(word, 0, at)
        return None
    matches = pattern.findall(text)
    return matches[-1] if matches else None


_MOVE_START = re.compile(r"(?is)\bmove\b\s*=")
_STATE_START = re.compile(r"(?is)\bnext_state\b\s*=")


def _last_repaired(pattern: re.Pattern[str], text: str) -> str | None:
    for match in reversed(list(pattern.finditer(text))):
        found = _bracket_prefix(text[match.end() :])
        if found is not None:
            return found
    return None


PROMPT_RULES = (
    "- Only one disk can be moved at a time.\n"
    "- Only the top disk from any stack can be moved.\n"
    "- A larger disk may not be placed on top of a smaller disk."
)


class Hanoi(Task[HanoiState, HanoiAnswer]):
    """Towers of Hanoi with ``disks`` disks, moved from peg 0 to peg 2 one voted step at a time.

    >>> task = Hanoi(3)
    >>> state = task.initial_state()
    >>> for _ in range(task.max_steps()):
    ...     state = task.apply(state, task.oracle(state))
    >>> task.is_done(state), state.pegs
    (True, ((), (), (3, 2, 1)))
    """

    name: ClassVar[str] = "hanoi"

    def __init__(self, disks: int) -> None:
        if not _is_int(disks):
            raise ConfigError("disks", f"must be an integer, got {disks!r}")
        if not 1 <= disks <= MAX_DISKS:
            raise ConfigError("disks", f"must be in 1..{MAX_DISKS}, got {disks}")
        self.disks = disks
        self.direction = direction_for(disks)
        self._disk_set = frozenset(range(1, disks + 1))
        self._last_read: tuple[str, str, HanoiAnswer] | None = None
        self._system: str | None = None

    def __repr__(self) -> str:
        return f"Hanoi(disks={self.disks})"

    def params(self) -> dict[str, Any]:
        """``{"disks": n}``."""
        return {"disks": self.disks}

    def initial_state(self) -> HanoiState:
        """Every disk on peg 0, no previous move."""
        return HanoiState(pegs=(tuple(range(self.disks, 0, -1)), (), ()))

    def is_done(self, state: HanoiState) -> bool:
        """Whether every disk is on peg 2, in order."""
        return (
            not state.pegs[0]
            and not state.pegs[1]
            and state.pegs[2] == tuple(range(self.disks, 0, -1))
        )

    def max_steps(self) -> int:
        """2**n - 1: the optimal solution's length, so any wrong step fails the run."""
        return int(2**self.disks - 1)

    def system_prompt(self) -> str:
        """The system prompt: rules, goal, the 3-disk example and the exact answer format."""
        # Built once: every step sends it, and one string object keeps its hash (a model that
        # caches by prompt hashes 1.3 KB a step otherwise).
        if self._system is None:
            self._system = self._system_text()
        return self._system

    def _system_text(self) -> str:
        return (
            "You are a helpful assistant. Solve this puzzle for me.\n"
            f"There are three pegs and {self.disks} disks of different sizes stacked on the "
            "first peg. The disks are numbered from 1 (smallest) to "
            f"{self.disks} (largest). Disk moves in this puzzle should follow:\n"
            "1. Only one disk can be moved at a time.\n"
            "2. Each move consists of taking the upper disk from one stack and placing it on "
            "top of another stack.\n"
            "3. A larger disk may not be placed on top of a smaller disk.\n"
            "The goal is to move the entire stack to the third peg.\n"
            "Example: With 3 disks numbered 1 (smallest), 2, and 3 (largest), the initial state "
            "is [[3, 2, 1], [], []], and a solution might be:\n"
            "moves = [[1, 0, 2], [2, 0, 1], [1, 2, 1], [3, 0, 2], [1, 1, 0], [2, 1, 2], "
            "[1, 0, 2]]\n"
            "This means: Move disk 1 from peg 0 to peg 2, then move disk 2 from peg 0 to peg 1, "
            "and so on.\n"
            "Requirements:\n"
            "- The positions are 0-indexed (the leftmost peg is 0).\n"
            "- Ensure your answer includes a single next move in this EXACT FORMAT:\n"
            "```move = [disk id, from peg, to peg]```\n"
            "- Ensure your answer includes the next state resulting from applying the move to "
            "the current state in this EXACT FORMAT:\n"
            "```next_state = [[...], [...], [...]]```"
        )

    def prompt(self, state: HanoiState) -> Prompt:
        """The paper's prompts: the strategy, the previous move and the current state only."""
        if self.direction == CLOCKWISE:
            circle = "clockwise one peg (0 -> 1 -> 2 -> 0)"
        else:
            circle = "counterclockwise one peg (0 -> 2 -> 1 -> 0)"
        previous = "None" if state.previous_move is None else _render_move(state.previous_move)
        user = (
            "Rules:\n"
            f"{PROMPT_RULES}\n"
            "For all moves, follow the standard Tower of Hanoi procedure:\n"
            f"If the previous move did not move disk 1, move disk 1 {circle}.\n"
            "If the previous move did move disk 1, make the only legal move that does not "
            "involve moving disk 1.\n"
            "Use these clear steps to find the next move given the previous move and current "
            "state.\n"
            f"Previous move: {previous}\n"
            f"Current State: {_render_pegs(state.pegs)}\n"
            "Based on the previous move and current state, find the single next move that "
            "follows the procedure and the resulting next state."
        )
        return Prompt(system=self.system_prompt(), user=user)

    def parse(self, text: str) -> HanoiAnswer:
        """The paper's strict parser; any failure raises ``RedFlag("malformed", detail)``.

        The last ``move = [...]`` and the last ``next_state = [[...], [...], [...]]`` are used.
        Both must be Python literals; the move must be three ints and the next state three
        lists of ints holding 1..n exactly once. Legality is not checked: that is voting's job.

        >>> Hanoi(2).parse("move = [1, 0, 1]\\nnext_state = [[2], [1], []]")
        HanoiAnswer(move=(1, 0, 1), next_state=((2,), (1,), ()))
        """
        lowered = text.lower() if text.isascii() else None
        move_text = _last_match(_MOVE_RE, "move", text, lowered)
        if move_text is None:
            raise RedFlag("malformed", "no move line")
        state_text = _last_match(_STATE_RE, "next_state", text, lowered)
        if state_text is None:
            raise RedFlag("malformed", "no next_state line")
        # A step's samples mostly give one answer in differently worded texts: the answer
        # read last is reused when its two lines come again (answers are immutable).
        last = self._last_read
        if last is not None and last[0] == move_text and last[1] == state_text:
            return last[2]
        # Nearly every answer is plain JSON holding each disk once: that is read and checked
        # in one pass. Anything else takes the general path, which names each red flag.
        answer = self._read_plain(move_text, state_text)
        if answer is None:
            answer = self._read_general(move_text, state_text)
        self._last_read = (move_text, state_text, answer)
        return answer

    def _read_plain(self, move_text: str, state_text: str) -> HanoiAnswer | None:
        """The answer if both texts are plain JSON and the disks are 1..n once each, else
        None. Whatever it accepts, :meth:`_read_general` reads the same."""
        move = plain_move(move_text)
        if move is None:
            return None
        pegs = plain_pegs(state_text)
        if pegs is None:
            return None
        disks = pegs[0] + pegs[1] + pegs[2]
        # n disks that together are 1..n: each is there exactly once.
        if len(disks) != self.disks or set(disks) != self._disk_set:
            return None
        return HanoiAnswer(move=move, next_state=pegs)

    def _read_general(self, move_text: str, state_text: str) -> HanoiAnswer:
        try:
            move_value = literal(move_text)
        except ValueError:
            raise RedFlag("malformed", "move is not a Python literal") from None
        move = _as_move(move_value)
        try:
            state_value = literal(state_text)
        except ValueError:
            raise RedFlag("malformed", "next_state is not a Python literal") from None
        pegs = _as_pegs(state_value)
        _check_disks(pegs, self.disks)
        return HanoiAnswer(move=move, next_state=pegs)

    def parse_repairing(self, text: str) -> HanoiAnswer:
        """The paper's calibration-only "repairing" parser. Never use it to run a task.

        It takes the last ``move =`` and ``next_state =``, closes unbalanced brackets, and does
        not check the disk set. The paper found it admits more correlated errors than the strict
        :meth:`parse`, since responses that lose track of their format tend to be wrong
        together. It still raises ``RedFlag("malformed", ...)`` when nothing can be extracted.
        """
        move_text = _last_repaired(_MOVE_START, text)
        if move_text is None:
            raise RedFlag("malformed", "no move line")
        state_text = _last_repaired(_STATE_START, text)
        if state_text is None:
            raise RedFlag("malformed", "no next_state line")
        try:
            move_value = literal(move_text)
            state_value = literal(state_text)
        except ValueError:
            raise RedFlag("malformed", "not a Python literal even after repair") from None
        return HanoiAnswer(move=_as_move(move_value), next_state=_as_pegs(state_value))

    def apply(self, state: HanoiState, answer: HanoiAnswer) -> HanoiState:
        """The voted ``next_state``, with the voted move as the previous move."""
        return HanoiState(pegs=answer.next_state, previous_move=answer.move)

    def state_to_json(self, state: HanoiState) -> Any:
        """``{"pegs": [[...], [...], [...]], "previous_move": [d, f, t] or None}``."""
        return state_json(state)

    def state_from_json(self, data: Any) -> HanoiState:
        """The inverse of :meth:`state_to_json`; raises ValueError on a bad shape."""
        if not isinstance(data, dict) or set(data) != {"pegs", "previous_move"}:
            raise StateError("a Hanoi state is an object with 'pegs' and 'previous_move'")
        pegs = data["pegs"]
        if (
            not isinstance(pegs, list)
            or len(pegs) != 3
            or not all(isinstance(p, list) and all(_is_int(d) for d in p) for p in pegs)
        ):
            raise StateError(f"'pegs' must be three lists of ints, got {pegs!r}")
        prev = data["previous_move"]
        if prev is not None and (
            not isinstance(prev, list) or len(prev) != 3 or not all(_is_int(v) for v in prev)
        ):
            raise StateError(f"'previous_move' must be null or three ints, got {prev!r}")
        return HanoiState(
            pegs=(tuple(pegs[0]), tuple(pegs[1]), tuple(pegs[2])),
            previous_move=None if prev is None else (prev[0], prev[1], prev[2]),
        )

    def answer_to_json(self, answer: HanoiAnswer) -> Any:
        """``{"move": [d, f, t], "next_state": [[...], [...], [...]]}``."""
        return {"move": list(answer.move), "next_state": [list(p) for p in answer.next_state]}

    def oracle(self, state: HanoiState) -> HanoiAnswer | None:
        """The strategy's next answer; None when it has no unique move (a corrupted state)."""
        return strategy_answer(state, self.direction)

    def oracle_state(self, index: int) -> HanoiState:
        """The state after ``index`` moves of the optimal solution, in O(disks) time: a
        20-disk calibration samples states up to a million moves deep."""
        return hanoi_state_at(self.disks, index)
