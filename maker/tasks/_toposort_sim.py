"""The simulated model's hooks for dependency ordering: read a prompt, answer right or wrong."""

from __future__ import annotations

import random
import re

import msgspec

from events import canonical_json

from ..core._simulator import randbelow
from ._toposort import DONE_LABEL, NAME, QUESTION, TODO_LABEL, ready_nodes

_DONE = re.compile(rf"(?m)^{re.escape(DONE_LABEL)}(.*)$")
_TODO = re.compile(rf"(?m)^{re.escape(TODO_LABEL)}(.*)$")
_NAMES = msgspec.json.Decoder(list[str])
_TODO_JSON = msgspec.json.Decoder(dict[str, list[str]])

_REASONS = (
    "Checking each task's prerequisites against the done list, {x} is the first ready task.",
    "The tasks whose prerequisites are all done come first; in ASCII order that is {x}.",
    "Going through the remaining tasks in order, {x} has nothing left to wait for.",
    "Every prerequisite of {x} is done, and no ready task comes before it.",
)


class TopoQuestion(msgspec.Struct, frozen=True):
    """What one toposort prompt shows: the nodes done, in order, and every node not done
    with its prerequisites."""

    done: tuple[str, ...]
    todo: tuple[tuple[str, tuple[str, ...]], ...]


class ToposortSimulator:
    """Answers the prompts of :class:`maker.tasks.Toposort` for the simulated model."""

    @property
    def task_name(self) -> str:
        """``"toposort"``."""
        return "toposort"

    def read_prompt(self, system: str, user: str) -> TopoQuestion | None:
        """What is done and what is not in a toposort prompt, or None if it is not one."""
        # Every toposort prompt asks this: other tasks' prompts are turned away at once.
        if QUESTION not in user or TODO_LABEL not in user:
            return None
        done_line, todo_line = _DONE.search(user), _TODO.search(user)
        if done_line is None or todo_line is None:
            return None
        try:
            done = _NAMES.decode(done_line.group(1))
            todo = _TODO_JSON.decode(todo_line.group(1))
        except msgspec.DecodeError:
            return None
        names = [*done, *todo, *(d for deps in todo.values() for d in deps)]
        if not all(NAME.fullmatch(n) for n in names) or set(done) & set(todo):
            return None
        if not ready_nodes(todo, done):  # a prompt no DAG gives: nothing can come next
            return None
        return TopoQuestion(
            done=tuple(done), todo=tuple((n, tuple(deps)) for n, deps in sorted(todo.items()))
        )

    def state_key(self, state: TopoQuestion) -> str:
        """Canonical JSON of what is done and what is not."""
        return canonical_json([state.done, state.todo])

    def oracle(self, state: TopoQuestion) -> str:
        """The ready node first in ASCII order, as :meth:`maker.tasks.Toposort.oracle` gives."""
        return ready_nodes(dict(state.todo), state.done)[0]

    def wrong_answers(self, state: TopoQuestion, rng: random.Random, count: int) -> list[str]:
        """Up to ``count`` distinct wrong nodes, all of the graph, so that they parse.

        The kinds are those a model makes: another ready node (the tie rule misread); a node
        not ready yet whose missing prerequisites were overlooked, the fewest missing first;
        a node already done, the last one most of all. The order is drawn from ``rng``.
        """
        todo = dict(state.todo)
        done = set(state.done)
        right = self.oracle(state)
        ready = ready_nodes(todo, done)
        waiting = [n for n in todo if n not in set(ready)]
        blocked = sorted(waiting, key=lambda n: (sum(d not in done for d in todo[n]), n))
        candidates = [*ready[1:3], *blocked[:3], *reversed(state.done[-2:])]
        unique = [c for c in dict.fromkeys(candidates) if c != right]
        rng.shuffle(unique)
        return unique[: max(count, 0)]

    def render(self, answer: str, rng: random.Random) -> str:
        """A line of reasoning, then ``next = NAME`` in one of a few layouts."""
        reason = _REASONS[randbelow(rng, len(_REASONS))].format(x=answer)
        style = randbelow(rng, 3)
        if style == 0:
            return f"{reason}\nnext = {answer}"
        if style == 1:
            return f"{reason}\n\n```\nnext = {answer}\n```"
        return f"{reason}\n**next = {answer}**"

    def render_malformed(self, state: TopoQuestion, rng: random.Random) -> str:
        """A response the strict parser rejects, drawn from the ways answers go wrong: no
        answer line, a quoted or bracketed name, a name of no task, or two lines that
        disagree."""
        right = self.oracle(state)
        known = {*state.done, *(n for n, _ in state.todo)}
        others = sorted(known - {right})
        stranger = "unknown-task"
        while stranger in known:
            stranger += "-x"
        kinds = [
            "Let me check which prerequisites are done before answering.",
            f"The next task is {right}.",
            f"next: {right}",
            f'next = "{right}"',
            f"next = [{right}]",
            f"next = {stranger}",
            "next = ?",
        ]
        if others:
            other = others[randbelow(rng, len(others))]
            kinds.append(f"next = {right}\nOn second thought:\nnext = {other}")
        return kinds[randbelow(rng, len(kinds))]
