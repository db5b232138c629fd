"""The toposort task (one DAG node per step, the ready node first in ASCII order): its reference
path, strict parser, simulator, the simulated model's statistics on it, and a run from the CLI
that replays.

The Monte Carlo checks use 4.5 standard errors of tolerance, as tests/maker/test_sim.py does:
every draw is seeded, so each check is deterministic, and a correct simulator would fail one for
a fresh seed with probability below 1e-5.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maker.apps.cli._cli import main
from maker.clients._sim import SimConfig, SimulatedModel
from maker.core._errors import ConfigError, RedFlag, StateError
from maker.core._simulator import Simulator
from maker.tasks import (
    BUILTIN_SIMULATORS,
    Arithmetic,
    ArithmeticSimulator,
    Hanoi,
    HanoiSimulator,
    Sort,
    SortSimulator,
    Toposort,
    ToposortSimulator,
    TopoState,
    make_task,
)
from maker.tasks._toposort import is_topological, ready_nodes, smallest_order
from maker.tasks._toposort_sim import TopoQuestion

SIM = ToposortSimulator()
Z = 4.5

BUILD = {"test": ["build"], "build": ["fetch", "configure"], "docs": [], "configure": ["fetch"]}
"""A small project: fetch and configure before build, build before test; docs any time."""


def walk(task: Toposort) -> list[TopoState]:
    """Every state of the reference path, the final one included."""
    states = [task.initial_state()]
    while not task.is_done(states[-1]):
        answer = task.oracle(states[-1])
        assert answer is not None
        states.append(task.apply(states[-1], answer))
    return states


def parse_or_flag(task: Toposort, text: str) -> str | RedFlag:
    """The parsed answer or the red flag; any other exception fails the test."""
    try:
        return task.parse(text)
    except RedFlag as flag:
        return flag


# --- the reference path ----------------------------------------------------------------------

# Names whose ASCII order is not their order by eye: case, '_' and '-', digits, prefixes.
NAMES = ["a", "b", "B", "a1", "a10", "a2", "_x", "-y", "Z9", "z", "ab", "A"]


@st.composite
def dags(draw: st.DrawFn, max_nodes: int = 6) -> dict[str, list[str]]:
    """A DAG on some of NAMES: edges only from earlier to later in a drawn hidden order."""
    nodes = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=max_nodes, unique=True))
    graph: dict[str, list[str]] = {}
    for j, node in enumerate(nodes):
        graph[node] = sorted(draw(st.sets(st.sampled_from(nodes[:j]))) if j else set())
    return graph


@settings(max_examples=100, deadline=None)
@given(graph=dags())
def test_the_reference_path_is_the_smallest_topological_order(
    graph: dict[str, list[str]],
) -> None:
    task = Toposort(graph=graph)
    states = walk(task)
    order = states[-1].order
    assert len(states) - 1 == task.max_steps() == len(graph)
    assert task.is_solved(states[-1])
    # By brute force: every order of the nodes, those respecting every dependency, the least.
    valid = [
        p
        for p in itertools.permutations(sorted(graph))
        if all(p.index(d) < p.index(n) for n, deps in graph.items() for d in deps)
    ]
    assert order == min(valid) == task.solution()
    for state in states[:-1]:
        # The simulator reads the step back from the prompt alone and agrees.
        prompt = task.prompt(state)
        question = SIM.read_prompt(prompt.system, prompt.user)
        assert question is not None
        assert SIM.oracle(question) == task.oracle(state)


@settings(max_examples=25, deadline=None)
@given(size=st.integers(1, 200), seed=st.integers(0, 2**63 - 1))
def test_generated_graphs_are_dags_whose_path_is_topological(size: int, seed: int) -> None:
    task = Toposort(size=size, seed=seed)
    assert len(task.graph) == size
    order = walk(task)[-1].order
    assert is_topological(task.graph, order)
    assert order == smallest_order(task.graph)
    assert Toposort(size=size, seed=seed).graph == task.graph


def test_a_small_run_step_by_step() -> None:
    task = Toposort(graph=BUILD)
    assert task.graph == {
        "build": ("configure", "fetch"),
        "configure": ("fetch",),
        "docs": (),
        "fetch": (),
        "test": ("build",),
    }
    assert [task.oracle(s) for s in walk(task)] == [
        "docs", "fetch", "configure", "build", "test", None,
    ]  # fmt: skip
    done = walk(task)[-1]
    with pytest.raises(StateError):
        task.apply(done, "docs")


def test_wrong_votes_propagate_and_the_result_shows_them() -> None:
    task = Toposort(graph=BUILD)
    # A node emitted before its prerequisites: the run ends, out of order.
    state = task.initial_state()
    for name in ("build", "docs", "fetch", "configure", "test"):
        state = task.apply(state, name)
    assert task.is_done(state)
    assert not task.is_solved(state)
    assert not is_topological(task.graph, state.order)
    # A node emitted twice: after one step per node the run is not done (its budget fails it).
    state = task.apply(task.initial_state(), "docs")
    state = task.apply(state, "docs")
    while len(state.order) < task.max_steps():
        answer = task.oracle(state)
        assert answer is not None
        state = task.apply(state, answer)
    assert not task.is_done(state)
    assert task.oracle(state) is not None


def test_prompt_shows_what_is_done_and_what_is_not_only() -> None:
    task = Toposort(graph=BUILD)
    state = walk(task)[2]
    assert task.prompt(state).user.splitlines() == [
        'Done so far: ["docs", "fetch"]',
        'Not done yet, each with the tasks it must come after: {"build": ["configure", '
        '"fetch"], "configure": ["fetch"], "test": ["build"]}',
        "Which task comes next?",
    ]
    assert "next = NAME" in task.prompt(state).system


def test_ready_nodes_and_cycles() -> None:
    assert ready_nodes(BUILD, ["fetch"]) == ["configure", "docs"]
    with pytest.raises(ValueError, match=r"a -> c -> b -> a"):
        smallest_order({"a": ("b",), "b": ("c",), "c": ("a",), "d": ()})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"graph": {"a": ["b"], "b": ["a"]}}, "cycle"),
        ({"graph": {"a": ["a"]}}, "cycle"),
        ({"graph": {}}, "1..1000 nodes"),
        ({"graph": []}, "must be an object"),
        ({"graph": {"a": "b"}}, "must be a list"),
        ({"graph": {"a": ["b", "b"]}}, "repeat"),
        ({"graph": {"a b": []}}, "not a name"),
        ({"graph": {"a": ["b.c"]}}, "not a name"),
        ({"graph": {"a": [1]}}, "not a name"),
        ({"graph": {"x" * 65: []}}, "not a name"),
    ],
)
def test_a_bad_graph_is_refused_naming_it(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        make_task("toposort", params)
    assert info.value.field == "graph"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"graph": {"a": []}, "size": 3}, "size"),
        ({"graph": {"a": []}, "seed": 3}, "seed"),
        ({"size": 0}, "size"),
        ({"size": 1001}, "size"),
        ({"size": "3"}, "size"),
        ({"seed": -1}, "seed"),
        ({"edges": []}, "edges"),
    ],
)
def test_validation_names_the_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_task("toposort", params)
    assert info.value.field == field


def test_prerequisites_that_are_no_key_are_nodes_and_params_round_trip() -> None:
    task = make_task("toposort", {"graph": {"test": ["build"]}})
    assert isinstance(task, Toposort)
    assert task.params() == {"graph": {"build": [], "test": ["build"]}}
    again = make_task("toposort", task.params())
    assert isinstance(again, Toposort)
    assert again.graph == task.graph
    assert Toposort().params() == {"size": 10, "seed": 0}
    assert make_task("toposort", {"size": 7, "seed": 2}).params() == {"size": 7, "seed": 2}


# --- the strict parser -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("next = docs", "docs"),
        ("docs is ready.\n```\nnext=fetch\n```", "fetch"),
        ("**Next = build**", "build"),
        ("next = test.", "test"),
        ("next = docs\nSo: next = docs", "docs"),
    ],
)
def test_parse_reads_a_name_of_the_graph(text: str, name: str) -> None:
    assert Toposort(graph=BUILD).parse(text) == name


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("", "no next line"),
        ("The next task is docs.", "no next line"),
        ("next: docs", "no next line"),
        ("next_state = docs", "no next line"),
        ("next = Docs", "next is 'Docs', no task of the graph"),
        ("next = deploy", "next is 'deploy', no task of the graph"),
        ('next = "docs"', "next is nothing, no task of the graph"),
        ("next = [docs]", "next is nothing, no task of the graph"),
        ("next = docs\nnext = fetch", "next lines disagree"),
    ],
)
def test_parse_red_flags(text: str, detail: str) -> None:
    with pytest.raises(RedFlag) as info:
        Toposort(graph=BUILD).parse(text)
    assert (info.value.reason, info.value.detail) == ("malformed", detail)


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.sampled_from("nextNEXT =docsfih\n`*\"'[]_-"), max_size=40))
def test_parse_of_any_text_is_a_node_or_a_red_flag(text: str) -> None:
    task = Toposort(graph=BUILD)
    verdict = parse_or_flag(task, text)
    assert verdict in task.nodes or isinstance(verdict, RedFlag)


# --- states and answers as JSON ------------------------------------------------------------------


def test_state_and_answer_json_round_trip() -> None:
    task = Toposort(size=12, seed=4)
    for state in walk(task):
        data = task.state_to_json(state)
        assert json.loads(json.dumps(data)) == data
        assert task.state_from_json(data) == state
    assert task.answer_to_json("t03") == {"next": "t03"}
    # A recorded wrong run (a node twice) is a state the task can hold, to resume it.
    assert task.state_from_json({"order": ["t03", "t03"]}).order == ("t03", "t03")


@pytest.mark.parametrize(
    "bad",
    [None, [], {"order": "docs"}, {"order": ["deploy"]}, {"order": [1]}, {"order": ["docs"] * 6}],
)
def test_state_from_json_rejects_bad_shapes(bad: object) -> None:
    with pytest.raises(StateError):
        Toposort(graph=BUILD).state_from_json(bad)


# --- the simulator -----------------------------------------------------------------------------


def test_simulator_satisfies_the_protocol_and_is_built_in() -> None:
    sim: Simulator[TopoQuestion, str] = SIM
    assert sim.task_name == "toposort" == Toposort.name
    assert any(isinstance(s, ToposortSimulator) for s in BUILTIN_SIMULATORS)
    question = TopoQuestion(done=("a",), todo=(("b", ("a",)),))
    assert SIM.state_key(question) == '[["a"],[["b",["a"]]]]'


def test_simulators_ignore_each_others_prompts() -> None:
    topo = Toposort(graph=BUILD).prompt(Toposort(graph=BUILD).initial_state())
    others = [
        Hanoi(3).prompt(Hanoi(3).initial_state()),
        Arithmetic().prompt(Arithmetic().initial_state()),
        Sort().prompt(Sort().initial_state()),
    ]
    for prompt in others:
        assert SIM.read_prompt(prompt.system, prompt.user) is None
    for sim in (HanoiSimulator(), ArithmeticSimulator(), SortSimulator()):
        assert sim.read_prompt(topo.system, topo.user) is None
    # Prompts no Toposort makes: nothing ready, a done node still to do, bad JSON or names.
    head = "Done so far: "
    todo = "Not done yet, each with the tasks it must come after: "
    question = "Which task comes next?"
    for user in (
        f'{head}[]\n{todo}{{"a": ["b"], "b": ["a"]}}\n{question}',
        f'{head}["a"]\n{todo}{{"a": []}}\n{question}',
        f'{head}[]\n{todo}{{"a": [}}\n{question}',
        f'{head}[]\n{todo}{{"a b": []}}\n{question}',
        f"{head}[]\n{question}",
    ):
        assert SIM.read_prompt("", user) is None


@pytest.mark.parametrize("seed", range(20))
def test_rendered_answers_parse_back_and_wrong_ones_differ(seed: int) -> None:
    rng = random.Random(seed)
    task = Toposort(size=15, seed=seed)
    states = walk(task)[:-1]
    state = rng.choice(states[1:])  # something done: a repeat is among the wrong answers
    prompt = task.prompt(state)
    question = SIM.read_prompt(prompt.system, prompt.user)
    assert question is not None
    right = SIM.oracle(question)
    assert right == task.oracle(state)
    wrong = SIM.wrong_answers(question, random.Random(seed), 10)
    assert wrong == SIM.wrong_answers(question, random.Random(seed), 10)
    assert SIM.wrong_answers(question, random.Random(seed), 2) == wrong[:2]
    assert len(wrong) >= 1
    assert len(set(wrong)) == len(wrong)
    assert right not in wrong
    assert state.order[-1] in wrong  # the last node done, said again
    for answer in (right, *wrong):
        for _ in range(10):
            assert task.parse(SIM.render(answer, rng)) == answer
    for _ in range(30):
        with pytest.raises(RedFlag):
            task.parse(SIM.render_malformed(question, rng))


def test_wrong_answers_are_the_slips_a_model_makes() -> None:
    task = Toposort(graph=BUILD)
    state = walk(task)[2]  # docs and fetch done: configure is next, build waits for it
    prompt = task.prompt(state)
    question = SIM.read_prompt(prompt.system, prompt.user)
    assert question is not None
    wrong = set(SIM.wrong_answers(question, random.Random(0), 100))
    # build with its missing prerequisite overlooked, test too; fetch and docs done again.
    assert wrong == {"build", "test", "docs", "fetch"}


def test_the_simulated_models_statistics_hold_on_toposort_prompts() -> None:
    """p among valid answers, the malformed share, and wrong votes on at most ``rivals`` fixed
    answers per step, judged by the task's own parser.

    n = 6000 draws; malformed share 0.05: SE = sqrt(0.05 * 0.95 / 6000) = 0.0028, tolerance
    +-0.013. About 5700 valid: SE = sqrt(0.9 * 0.1 / 5700) = 0.0040, tolerance +-0.018. A wrong
    answer that parsed as the right one would show p = 1, and steps without wrong answers would
    raise the malformed share; both are many tolerances away.
    """
    config = SimConfig(p=0.9, rivals=2, hard_fraction=0.0, malformed_rate=0.05, overlong_rate=0.0)
    model = SimulatedModel(config)
    cases = [
        (task, state)
        for task in (Toposort(size=40, seed=1), Toposort(size=40, seed=2), Toposort(graph=BUILD))
        for state in walk(task)[:-1]
    ]
    rng = random.Random(20240608)
    n, flagged, valid, right = 6000, 0, 0, 0
    wrong_by_state: dict[int, set[str]] = defaultdict(set)
    for seed in range(n):
        index = rng.randrange(len(cases))
        task, state = cases[index]
        prompt = task.prompt(state)
        response = model.respond(prompt.system, prompt.user, max_tokens=5000, seed=seed)
        verdict = parse_or_flag(task, response.completion.text)
        if isinstance(verdict, RedFlag):
            assert response.kind == "malformed"
            flagged += 1
            continue
        assert response.kind == "normal"
        valid += 1
        correct = verdict == task.oracle(state)
        assert response.correct == correct
        right += correct
        if not correct:
            wrong_by_state[index].add(verdict)
    assert abs(flagged / n - 0.05) <= Z * math.sqrt(0.05 * 0.95 / n)
    assert abs(right / valid - 0.9) <= Z * math.sqrt(0.9 * 0.1 / valid)
    assert max(len(w) for w in wrong_by_state.values()) == 2  # the rivals, fixed per state


# --- from the command line -------------------------------------------------------------------


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    else:  # pragma: no cover - main always exits
        code = 0
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("params", [{"graph": BUILD}, {"size": 25, "seed": 6}])
def test_a_run_from_the_cli_decides_every_step_right_and_replays(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, params: dict[str, Any]
) -> None:
    log = tmp_path / "topo.db"
    code, out, err = cli(
        capsys, "run", "--task", "toposort", "--params", json.dumps(params), "--p", "0.9",
        "--k", "4", "--seed", "3", "--log", str(log), "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    task = make_task("toposort", params)
    assert isinstance(task, Toposort)
    assert (result["status"], result["task"]) == ("succeeded", "toposort")
    assert result["task_params"] == task.params()
    assert result["steps"] == task.max_steps()

    code, out, err = cli(capsys, "export", str(log), "--format", "jsonl")
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    winners = [json.loads(e["winner"]) for e in events if e["type"] == "step_decided"]
    assert winners == [{"next": name} for name in task.solution()]
    last = [e["state"] for e in events if e["type"] == "state_changed"][-1]
    assert task.is_solved(task.state_from_json(last))

    code, out, err = cli(capsys, "replay", str(log), "--verify", "--json")
    assert code == 0, err
    verified = json.loads(out)
    assert verified["ok"] is True
    assert verified["checked"] == verified["recorded"] == len(events)


def test_the_built_in_name_takes_task_seed_and_a_bad_graph_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log = tmp_path / "t.db"
    code, out, err = cli(capsys, "run", "toposort", "--task-seed", "8", "--log", str(log), "--json")
    assert code == 0, err
    assert json.loads(out)["task_params"] == {"size": 10, "seed": 8}
    code, _, err = cli(
        capsys, "run", "--task", "toposort", "--params", '{"graph": {"a": ["b"], "b": ["a"]}}',
        "--log", str(log),
    )  # fmt: skip
    assert code != 0
    assert err.strip().splitlines() == [
        "maker: error: graph: has a cycle (each node before the next): a -> b -> a"
    ]
