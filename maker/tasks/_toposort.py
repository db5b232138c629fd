"""Dependency ordering: a topological sort of a DAG, one node per step.

The graph maps each node (a task to do) to the nodes it must come after. The state is the
order emitted so far. Each step shows what is done and every node not done yet with its
prerequisites, and asks for the next node: one not done whose prerequisites are all done, and
among those the first in ASCII order. That tie rule makes the right answer unique at every
step, so the whole order is the graph's lexicographically smallest topological order, and a
wrong step is detectable.

A wrong answer propagates honestly, as in Hanoi: a node that was not ready yet is emitted
anyway (the final order then breaks a dependency), and a node already done is emitted again
(the run then cannot finish within its budget of one step per node).
"""

from __future__ import annotations

import heapq
import json
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import msgspec

from ..core._errors import ConfigError, RedFlag, StateError
from ..core._task import Prompt, Task

Graph = dict[str, tuple[str, ...]]
"""Each node with the nodes it must come after, sorted."""

MAX_NODES = 1000
MAX_NAME = 64
MAX_SEED = 2**63 - 1
DEFAULT_SIZE = 10

NAME = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_NAME}}}")
"""A node's name: what an answer line can hold without quotes, compared as ASCII."""


class TopoState(msgspec.Struct, frozen=True):
    """The nodes emitted so far, in order."""

    order: tuple[str, ...]


def ready_nodes(graph: Mapping[str, Iterable[str]], done: Iterable[str]) -> list[str]:
    """The nodes not done whose prerequisites are all done, sorted (ASCII order).

    >>> ready_nodes({"a": (), "b": ("a",), "c": ()}, ["a"])
    ['b', 'c']
    """
    finished = set(done)
    return sorted(
        node
        for node, deps in graph.items()
        if node not in finished and all(d in finished for d in deps)
    )


def smallest_order(graph: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """The lexicographically smallest topological order (Kahn's algorithm on a min-heap):
    what a run with every step right emits. Raises ValueError on a cycle.

    >>> smallest_order({"b": ("a",), "a": (), "c": ()})
    ('a', 'b', 'c')
    """
    waiting = {node: len(deps) for node, deps in graph.items()}
    after: dict[str, list[str]] = {node: [] for node in graph}
    for node, deps in graph.items():
        for dep in deps:
            after[dep].append(node)
    heap = [node for node, n in waiting.items() if n == 0]
    heapq.heapify(heap)
    order: list[str] = []
    while heap:
        node = heapq.heappop(heap)
        order.append(node)
        for later in after[node]:
            waiting[later] -= 1
            if waiting[later] == 0:
                heapq.heappush(heap, later)
    if len(order) != len(graph):
        raise ValueError(f"has a cycle (each node before the next): {_cycle(graph, set(order))}")
    return tuple(order)


def is_topological(graph: Mapping[str, Iterable[str]], order: Sequence[str]) -> bool:
    """Whether ``order`` holds every node once, each after all its prerequisites."""
    if len(order) != len(graph) or set(order) != set(graph):
        return False
    position = {node: i for i, node in enumerate(order)}
    return all(position[d] < position[n] for n, deps in graph.items() for d in deps)


def _cycle(graph: Mapping[str, Sequence[str]], placed: set[str]) -> str:
    """A cycle among the nodes Kahn's algorithm could not place, as ``a -> b -> a``."""
    # Every unplaced node has an unplaced prerequisite: following them must come back.
    node = min(n for n in graph if n not in placed)
    seen: dict[str, int] = {}
    path: list[str] = []
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = min(d for d in graph[node] if d not in placed)
    loop = [*path[seen[node] :], node]
    # A dependency edge points at the prerequisite: reversed, the cycle reads in order.
    return " -> ".join(reversed(loop))


def generate_graph(size: int, seed: int) -> Graph:
    """A random DAG of ``size`` nodes named ``t0``, ``t1``, ... (zero-padded), drawn from
    ``random.Random(seed)``: each node depends on up to three nodes earlier in a random
    order, so the alphabetical order of the names is not the dependency order."""
    rng = random.Random(seed)
    width = len(str(size - 1))
    names = [f"t{i:0{width}d}" for i in range(size)]
    order = rng.sample(names, size)
    graph: Graph = {}
    for j, node in enumerate(order):
        deps = rng.sample(order[:j], rng.randint(0, min(3, j)))
        graph[node] = tuple(sorted(deps))
    return dict(sorted(graph.items()))


def _check_name(value: object, where: str) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise ConfigError(
            "graph",
            f"{where} {value!r} is not a name of 1..{MAX_NAME} letters, digits, '_' or '-'",
        )
    return value


def _check_graph(graph: object) -> Graph:
    if not isinstance(graph, Mapping):
        raise ConfigError("graph", f"must be an object of node -> prerequisites, got {graph!r}")
    out: dict[str, tuple[str, ...]] = {}
    for node, deps in graph.items():
        _check_name(node, "node")
        if isinstance(deps, str | bytes) or not isinstance(deps, Sequence):
            raise ConfigError("graph", f"the prerequisites of {node!r} must be a list")
        names = [_check_name(d, f"a prerequisite of {node!r},") for d in deps]
        if len(set(names)) != len(names):
            raise ConfigError("graph", f"the prerequisites of {node!r} repeat a node")
        out[node] = tuple(sorted(names))
    # A prerequisite that is no key is a node with none of its own.
    for deps in list(out.values()):
        for dep in deps:
            out.setdefault(dep, ())
    if not 1 <= len(out) <= MAX_NODES:
        raise ConfigError("graph", f"must have 1..{MAX_NODES} nodes, got {len(out)}")
    graph_out = dict(sorted(out.items()))
    try:
        smallest_order(graph_out)
    except ValueError as exc:
        raise ConfigError("graph", str(exc)) from None
    return graph_out


def _check_int(field: str, value: object, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(field, f"must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(field, f"must be in {lo}..{hi}, got {value}")
    return value


def names_json(names: Iterable[str]) -> str:
    """A JSON list of names, as the prompt writes it."""
    return json.dumps(list(names))


SYSTEM_PROMPT = (
    "You are a careful planner putting tasks in an order that respects their dependencies, "
    "one task at a time.\n"
    "You are given the tasks already done, in order, and every task not done yet with the "
    "tasks it must come after. The next task is one that is not done yet and whose "
    "prerequisites are all done. When several are, it is the first of them in ASCII order: "
    "compare names character by character, where '-' comes before the digits, the digits "
    "before uppercase letters, uppercase letters before '_', and '_' before lowercase "
    "letters; a name that is a prefix of another comes first.\n"
    "You may reason briefly, then end your answer with one line in this EXACT FORMAT:\n"
    "next = NAME\n"
    "where NAME is the task's name exactly as written, without quotes."
)

DONE_LABEL = "Done so far: "
TODO_LABEL = "Not done yet, each with the tasks it must come after: "
QUESTION = "Which task comes next?"

# The word, '=' and the name after it. A quoted or bracketed name reads as an empty one, and
# is a red flag rather than something to guess at.
_NEXT = re.compile(r"(?i)\bnext[ \t]*=[ \t]*([A-Za-z0-9_-]*)")


class Toposort(Task[TopoState, str]):
    """Order the nodes of ``graph`` (each node with the nodes it must come after), or of a
    random DAG of ``size`` nodes drawn from ``seed``, one voted node per step, the ready node
    first in ASCII order at each.

    >>> task = Toposort(graph={"test": ["build"], "build": ["fetch"], "docs": []})
    >>> state = task.initial_state()
    >>> while not task.is_done(state):
    ...     state = task.apply(state, task.oracle(state))
    >>> state.order, task.is_solved(state)
    (('docs', 'fetch', 'build', 'test'), True)
    """

    name: ClassVar[str] = "toposort"

    def __init__(
        self,
        graph: Mapping[str, Sequence[str]] | None = None,
        size: int | None = None,
        seed: int | None = None,
    ) -> None:
        if graph is not None:
            if size is not None or seed is not None:
                field = "size" if size is not None else "seed"
                raise ConfigError(field, "give a graph, or size and seed to draw one; not both")
            self.size: int | None = None
            self.seed: int | None = None
            self.graph: Graph = _check_graph(graph)
            self._given = True
        else:
            self.size = _check_int("size", DEFAULT_SIZE if size is None else size, 1, MAX_NODES)
            self.seed = _check_int("seed", 0 if seed is None else seed, 0, MAX_SEED)
            self.graph = generate_graph(self.size, self.seed)
            self._given = False
        self.nodes = frozenset(self.graph)
        self._solution = smallest_order(self.graph)

    def __repr__(self) -> str:
        if self._given:
            return f"Toposort(graph=<{len(self.graph)} nodes>)"
        return f"Toposort(size={self.size}, seed={self.seed})"

    def params(self) -> dict[str, Any]:
        """``{"graph": {node: [prerequisites]}}`` (every node a key, names sorted) when the
        graph was given, else ``{"size", "seed"}``."""
        if self._given:
            return {"graph": {node: list(deps) for node, deps in self.graph.items()}}
        return {"size": self.size, "seed": self.seed}

    def initial_state(self) -> TopoState:
        """Nothing done."""
        return TopoState(order=())

    def is_done(self, state: TopoState) -> bool:
        """Whether every node has been emitted (in a right order or not: see
        :meth:`is_solved`)."""
        return self.nodes.issubset(state.order)

    def is_solved(self, state: TopoState) -> bool:
        """Whether the order is the one every right step gives (hence a topological order)."""
        return state.order == self._solution

    def solution(self) -> tuple[str, ...]:
        """The lexicographically smallest topological order: a run with every step right."""
        return self._solution

    def max_steps(self) -> int:
        """One step per node: the right order's length, so a repeated node fails the run."""
        return len(self.graph)

    def prompt(self, state: TopoState) -> Prompt:
        """What is done, in order, and every node not done with all its prerequisites (names
        in ASCII order); never the step number."""
        done = set(state.order)
        todo = {node: list(deps) for node, deps in self.graph.items() if node not in done}
        user = f"{DONE_LABEL}{names_json(state.order)}\n{TODO_LABEL}{json.dumps(todo)}\n{QUESTION}"
        return Prompt(system=SYSTEM_PROMPT, user=user)

    def parse(self, text: str) -> str:
        """The name of every ``next = NAME`` line, which must name a node of the graph and
        all agree; anything else raises ``RedFlag("malformed", detail)``. Whether the node is
        ready is not checked: that is voting's job.

        >>> Toposort(graph={"b": ["a"]}).parse("a has no prerequisites.\\nnext = a")
        'a'
        """
        found = _NEXT.findall(text)
        if not found:
            raise RedFlag("malformed", "no next line")
        for name in found:
            if name not in self.nodes:
                shown = repr(name[:20]) if name else "nothing"
                raise RedFlag("malformed", f"next is {shown}, no task of the graph")
        if len(set(found)) > 1:
            raise RedFlag("malformed", "next lines disagree")
        return str(found[0])

    def apply(self, state: TopoState, answer: str) -> TopoState:
        """The voted node, emitted after the others."""
        if self.is_done(state):
            raise StateError("every node is emitted: there is no step to apply")
        return TopoState(order=(*state.order, answer))

    def state_to_json(self, state: TopoState) -> Any:
        """``{"order": [...]}``."""
        return {"order": list(state.order)}

    def state_from_json(self, data: Any) -> TopoState:
        """The inverse of :meth:`state_to_json`; raises StateError on a bad shape or a name
        that is no node of the graph."""
        if not isinstance(data, dict) or set(data) != {"order"}:
            raise StateError("a toposort state is an object with 'order'")
        order = data["order"]
        if not isinstance(order, list) or len(order) > len(self.graph):
            raise StateError(f"'order' must be a list of at most {len(self.graph)} nodes")
        for name in order:
            if not isinstance(name, str) or name not in self.nodes:
                raise StateError(f"'order' holds {name!r}, no node of the graph")
        return TopoState(order=tuple(order))

    def answer_to_json(self, answer: str) -> Any:
        """``{"next": NAME}``."""
        return {"next": answer}

    def oracle(self, state: TopoState) -> str | None:
        """The ready node first in ASCII order; None once every node is emitted."""
        if self.is_done(state):
            return None
        # A DAG's undone nodes always include one whose prerequisites are all done, even after
        # wrong steps: the graph is acyclic, whatever order was emitted.
        return ready_nodes(self.graph, state.order)[0]
