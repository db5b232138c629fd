"""The simulated model's hooks for Towers of Hanoi: read a prompt, answer right or wrong."""

from __future__ import annotations

import random
import re
from itertools import chain

from events import canonical_json

from ..core._simulator import randbelow
from ._hanoi import (
    CLOCKWISE,
    COUNTERCLOCKWISE,
    MAX_DISKS,
    HanoiAnswer,
    HanoiState,
    Move,
    Pegs,
    direction_for,
    legal_moves,
    literal,
    move_top,
    plain_move,
    plain_pegs,
    strategy_answer,
)

_PREVIOUS = re.compile(r"(?m)^Previous move:[ \t]*(None|\[[^\n]*\])[ \t]*$")
_CURRENT = re.compile(r"(?m)^Current State:[ \t]*(\[[^\n]*\])[ \t]*$")
_CLOCKWISE_TEXT = "(0 -> 1 -> 2 -> 0)"
_COUNTERCLOCKWISE_TEXT = "(0 -> 2 -> 1 -> 0)"
_DISK_SETS = tuple(frozenset(range(1, n + 1)) for n in range(MAX_DISKS + 1))

_REASONS = (
    "Following the procedure, disk {d} goes from peg {f} to peg {t}.",
    "The next move takes disk {d} off peg {f} and puts it on peg {t}.",
    "Applying the rule to the previous move, I move disk {d} from peg {f} to peg {t}.",
    "Disk {d} is the disk to move: from peg {f} onto peg {t}.",
    "Checking the tops of the pegs, the move is disk {d}, peg {f} to peg {t}.",
)


def _pegs_text(pegs: Pegs | list[list[int]], compact: bool = False) -> str:
    text = str([list(p) for p in pegs])
    return text.replace(" ", "") if compact else text


def _move_text(move: Move | list[int], compact: bool = False) -> str:
    text = str(list(move))
    return text.replace(" ", "") if compact else text


def _search_from(start: str, pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    """``pattern.search(text)`` for a pattern whose matches all begin with ``start``: the
    search starts where ``start`` first occurs (the prompt's long rules are not rescanned)."""
    at = text.find(start)
    return None if at < 0 else pattern.search(text, at)


def _disks(pegs: Pegs) -> int:
    return max(chain.from_iterable(pegs), default=0)


def _literal_pegs(text: str) -> Pegs | None:
    try:
        raw = literal(text)
    except ValueError:
        return None
    if not isinstance(raw, list) or len(raw) != 3:
        return None
    if not all(isinstance(p, list) and all(type(d) is int for d in p) for p in raw):
        return None
    return (tuple(raw[0]), tuple(raw[1]), tuple(raw[2]))


def _literal_move(text: str) -> Move | None:
    try:
        raw = literal(text)
    except ValueError:
        return None
    if not isinstance(raw, list) or len(raw) != 3 or not all(type(v) is int for v in raw):
        return None
    return (raw[0], raw[1], raw[2])


class HanoiSimulator:
    """Answers the prompts of :class:`maker.tasks.Hanoi` for the simulated model.

    The number of disks is the largest disk in the prompt's state; the direction disk 1 circles
    is read from the strategy text, and must agree with that number's parity (a prompt whose
    strategy cannot reach peg 2 is not one Hanoi makes, so it is not ours).
    """

    def __init__(self) -> None:
        # The answer lines of the answer rendered last, per compactness: a step's samples
        # mostly render one answer (the right one), and its pegs' text is most of a render.
        self._lines: tuple[HanoiAnswer, dict[bool, tuple[str, str]]] | None = None

    @property
    def task_name(self) -> str:
        """``"hanoi"``."""
        return "hanoi"

    def read_prompt(self, system: str, user: str) -> HanoiState | None:
        """The state in a Hanoi user prompt, or None if the prompt is not Hanoi's."""
        if _CLOCKWISE_TEXT in user:
            direction = CLOCKWISE
        elif _COUNTERCLOCKWISE_TEXT in user:
            direction = COUNTERCLOCKWISE
        else:
            return None
        previous = _search_from("Previous move:", _PREVIOUS, user)
        current = _search_from("Current State:", _CURRENT, user)
        if previous is None or current is None:
            return None
        # Hanoi writes both as plain JSON, read in one call; other text is read as literals.
        pegs = plain_pegs(current.group(1))
        if pegs is None:
            pegs = _literal_pegs(current.group(1))
            if pegs is None:
                return None
        disks = pegs[0] + pegs[1] + pegs[2]
        n = max(disks, default=0)
        # n disks that together are 1..n: each is there exactly once.
        if not 1 <= n <= MAX_DISKS or len(disks) != n or set(disks) != _DISK_SETS[n]:
            return None
        if direction != direction_for(n):
            return None
        prev: Move | None = None
        if previous.group(1) != "None":
            prev = plain_move(previous.group(1)) or _literal_move(previous.group(1))
            if prev is None:
                return None
        return HanoiState(pegs=pegs, previous_move=prev)

    def state_key(self, state: HanoiState) -> str:
        """Canonical JSON of the pegs and previous move."""
        # The JSON of state_json(state), encoded from the tuples themselves.
        return canonical_json({"pegs": state.pegs, "previous_move": state.previous_move})

    def oracle(self, state: HanoiState) -> HanoiAnswer | None:
        """The strategy's next answer, exactly as :meth:`maker.tasks.Hanoi.oracle` gives it."""
        return strategy_answer(state, direction_for(_disks(state.pegs)))

    def wrong_answers(self, state: HanoiState, rng: random.Random, count: int) -> list[HanoiAnswer]:
        """Up to ``count`` distinct wrong answers that the strict parser accepts.

        The kinds are those models make: the right move with the disk put on the wrong peg, at
        the bottom of the right peg, or with the state left unchanged; the right state with a
        garbled move; another legal move (disk 1 the wrong way among them); an illegal move with
        its consistent state. The order is drawn from ``rng``.
        """
        pegs = state.pegs
        right = self.oracle(state)
        candidates: list[HanoiAnswer] = []
        if right is not None:
            d, f, t = right.move
            other = 3 - f - t
            candidates.append(HanoiAnswer(move=right.move, next_state=move_top(pegs, f, other)))
            candidates.append(HanoiAnswer(move=right.move, next_state=pegs))
            bottom = [list(p) for p in pegs]
            bottom[f].pop()
            bottom[t].insert(0, d)
            at_bottom: Pegs = (tuple(bottom[0]), tuple(bottom[1]), tuple(bottom[2]))
            candidates.append(HanoiAnswer(move=right.move, next_state=at_bottom))
            candidates.append(HanoiAnswer(move=(d, t, f), next_state=right.next_state))
            candidates.append(HanoiAnswer(move=(d, f, other), next_state=right.next_state))
        for move in legal_moves(pegs):
            candidates.append(HanoiAnswer(move=move, next_state=move_top(pegs, move[1], move[2])))
        for src in range(3):
            for dst in range(3):
                if src != dst and pegs[src] and pegs[dst] and pegs[dst][-1] < pegs[src][-1]:
                    move = (pegs[src][-1], src, dst)
                    candidates.append(HanoiAnswer(move=move, next_state=move_top(pegs, src, dst)))
        unique = list(dict.fromkeys(c for c in candidates if c != right))
        rng.shuffle(unique)
        return unique[: max(count, 0)]

    def render(self, answer: HanoiAnswer, rng: random.Random) -> str:
        """A line of reasoning, then the ``move =`` and ``next_state =`` lines."""
        d, f, t = answer.move
        reason = _REASONS[randbelow(rng, len(_REASONS))].format(d=d, f=f, t=t)
        compact = rng.random() < 0.2
        move_line, state_line = self._answer_lines(answer, compact)
        style = randbelow(rng, 3)
        if style == 0:
            return f"{reason}\n{move_line}\n{state_line}"
        if style == 1:
            return f"{reason}\n\n```\n{move_line}\n{state_line}\n```"
        return f"{reason}\n```{move_line}```\n```{state_line}```"

    def _answer_lines(self, answer: HanoiAnswer, compact: bool) -> tuple[str, str]:
        last = self._lines
        if last is None or last[0] is not answer:
            last = self._lines = (answer, {})
        lines = last[1].get(compact)
        if lines is None:
            lines = last[1][compact] = (
                f"move = {_move_text(answer.move, compact)}",
                f"next_state = {_pegs_text(answer.next_state, compact)}",
            )
        return lines

    def render_malformed(self, state: HanoiState, rng: random.Random) -> str:
        """A response the strict parser rejects, drawn from the ways answers go wrong."""
        answer = self.oracle(state) or HanoiAnswer(
            move=(1, 0, 1) if state.previous_move is None else state.previous_move,
            next_state=state.pegs,
        )
        d, f, t = answer.move
        pegs = [list(p) for p in answer.next_state]
        reason = rng.choice(_REASONS).format(d=d, f=f, t=t)
        move_line = f"move = {_move_text(answer.move)}"
        kind = rng.randrange(6)
        if kind == 0:
            return f"{reason}\n{move_line}"
        if kind == 1:
            return f"{reason}\n{move_line}\nnext_state = {_pegs_text(pegs)[:-1]}"
        if kind == 2:
            victim = rng.choice([p for p in pegs if p])
            victim.pop(rng.randrange(len(victim)))
            return f"{reason}\n{move_line}\nnext_state = {_pegs_text(pegs)}"
        if kind == 3:
            disk = rng.choice([x for p in pegs for x in p])
            pegs[rng.randrange(3)].append(disk)
            return f"{reason}\n{move_line}\nnext_state = {_pegs_text(pegs)}"
        if kind == 4:
            return rng.choice(
                (
                    "Let me think about the pegs carefully before answering.",
                    "I need to work out which disk is on top of each peg first.",
                    f"The previous move was {state.previous_move}, so the procedure applies.",
                )
            )
        return f"{reason}\nmove = [{d}, {t}]\nnext_state = {_pegs_text(pegs)}"
