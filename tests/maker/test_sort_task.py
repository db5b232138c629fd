"""The sort task (binary insertion, one strict comparison per step): its reference path, strict
parser, simulator, the simulated model's statistics on it, and a run from the CLI that replays.

The Monte Carlo checks use 4.5 standard errors of tolerance, as tests/maker/test_sim.py does:
every draw is seeded, so each check is deterministic, and a correct simulator would fail one for
a fresh seed with probability below 1e-5.
"""

from __future__ import annotations

import json
import math
import random
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
    SortState,
    Toposort,
    ToposortSimulator,
    make_task,
)
from maker.tasks._sort import Label
from maker.tasks._sort_sim import SortQuestion

SIM = SortSimulator()
Z = 4.5


def walk(task: Sort) -> list[SortState]:
    """Every state of the reference path, the final one included."""
    states = [task.initial_state()]
    while not task.is_done(states[-1]):
        answer = task.oracle(states[-1])
        assert answer is not None
        states.append(task.apply(states[-1], answer))
    return states


def parse_or_flag(task: Sort, text: str) -> Label | RedFlag:
    """The parsed answer or the red flag; any other exception fails the test."""
    try:
        return task.parse(text)
    except RedFlag as flag:
        return flag


def insertion_bound(n: int) -> int:
    """Binary insertion into a list of m items takes at most ceil(log2(m + 1)) comparisons."""
    return sum(math.ceil(math.log2(m + 1)) for m in range(1, n))


# --- the reference path ----------------------------------------------------------------------

distinct_ints = st.lists(st.integers(-(10**17), 10**17), min_size=2, max_size=40, unique=True)
distinct_strings = st.lists(st.text(max_size=8), min_size=2, max_size=30, unique=True)


@settings(max_examples=150, deadline=None)
@given(items=st.one_of(distinct_ints, distinct_strings), descending=st.booleans())
def test_the_reference_path_sorts_any_items_in_exactly_max_steps(
    items: list[Any], descending: bool
) -> None:
    task = Sort(items=items, order="descending" if descending else "ascending")
    states = walk(task)
    final = states[-1]
    assert list(final.placed) == sorted(items, reverse=descending)
    assert task.is_solved(final)
    assert task.solution() == final.placed
    assert len(states) - 1 == task.max_steps() <= insertion_bound(len(items))
    for state in states[:-1]:
        # Every state the path passes asks a question: a window of at least one comparison.
        assert 0 <= state.lo < state.hi <= len(state.placed)
        a, b = state.compared
        assert a != b
        # The simulator reads the question back from the prompt alone and agrees.
        prompt = task.prompt(state)
        question = SIM.read_prompt(prompt.system, prompt.user)
        assert question == SortQuestion(a=a, b=b, numeric=task.numeric, descending=descending)
        assert SIM.oracle(question) == task.oracle(state)


def test_a_small_run_step_by_step() -> None:
    task = Sort(items=[3, 1, 2])
    s0 = task.initial_state()
    assert (s0.placed, s0.pending, s0.lo, s0.hi) == ((3,), (1, 2), 0, 1)
    assert s0.compared == (1, 3)
    assert task.oracle(s0) == "A"  # 1 before 3
    s1 = task.apply(s0, "A")
    assert (s1.placed, s1.pending, s1.lo, s1.hi) == ((1, 3), (2,), 0, 2)
    assert s1.compared == (2, 3)  # the middle of [0, 2) is position 1
    s2 = task.apply(s1, "A")
    assert (s2.lo, s2.hi) == (0, 1)
    assert s2.compared == (2, 1)
    s3 = task.apply(s2, "B")
    assert (s3.placed, s3.pending) == ((1, 2, 3), ())
    assert task.is_done(s3)
    assert task.oracle(s3) is None
    with pytest.raises(StateError):
        task.apply(s3, "A")
    with pytest.raises(StateError):
        _ = s3.compared


def test_a_wrong_vote_propagates_and_the_result_shows_it() -> None:
    task = Sort(items=[1, 2])
    wrong = task.apply(task.initial_state(), "A")  # 2 said to come before 1
    assert task.is_done(wrong)
    assert wrong.placed == (2, 1)
    assert not task.is_solved(wrong)


def test_generated_items_are_a_pure_function_of_count_and_seed() -> None:
    task = Sort(count=50, seed=7)
    assert task.params() == {"count": 50, "seed": 7, "order": "ascending"}
    assert task.items == Sort(count=50, seed=7).items != Sort(count=50, seed=8).items
    assert len(set(task.items)) == 50
    assert all(isinstance(v, int) for v in task.items)
    assert Sort().params() == {"count": 20, "seed": 0, "order": "ascending"}
    assert Sort().items == Sort(count=20, seed=0).items


def test_prompt_holds_the_rule_and_two_items_only() -> None:
    task = Sort(items=["pear", "fig", "apple"], order="descending")
    state = task.apply(task.initial_state(), "B")
    prompt = task.prompt(state)
    assert prompt.user.splitlines() == [
        "Rule: " + "reverse alphabetical order by Unicode code point, character by character: "
        "at the first position where the two differ, the larger character comes first, and an "
        'item that is a prefix of the other comes last ("apple" before "Zoo", "cart" before '
        '"car").',
        'A: "apple"',
        'B: "fig"',  # pear, fig are placed: the middle of [0, 2) is fig
        "Which of A and B comes first under the rule?",
    ]
    assert "first = A" in prompt.system
    numbers = Sort(items=[10, -5]).prompt(Sort(items=[10, -5]).initial_state()).user
    assert "A: -5\nB: 10" in numbers
    assert "smaller numbers come first" in numbers


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"items": []}, "items"),
        ({"items": [1]}, "items"),
        ({"items": [1, "a"]}, "items"),
        ({"items": [1, True]}, "items"),
        ({"items": [1, 2, 1]}, "items"),
        ({"items": ["a", "a"]}, "items"),
        ({"items": ["x" * 101, "y"]}, "items"),
        ({"items": [10**18, 1]}, "items"),
        ({"items": "ab"}, "items"),
        ({"items": {"a": 1}}, "items"),
        ({"items": [1, 2], "count": 2}, "count"),
        ({"items": [1, 2], "seed": 0}, "seed"),
        ({"count": 1}, "count"),
        ({"count": 1001}, "count"),
        ({"count": 3.0}, "count"),
        ({"seed": -1}, "seed"),
        ({"order": "up"}, "order"),
        ({"disks": 3}, "disks"),
    ],
)
def test_validation_names_the_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_task("sort", params)
    assert info.value.field == field


def test_make_task_round_trips_params() -> None:
    for params in (
        {"count": 5, "seed": 3, "order": "descending"},
        {"items": ["b", "a", "c"], "order": "ascending"},
    ):
        task = make_task("sort", params)
        assert isinstance(task, Sort)
        assert task.params() == params
        again = make_task("sort", task.params())
        assert isinstance(again, Sort)
        assert again.items == task.items


# --- the strict parser -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("first = A", "A"),
        ("B is smaller.\nfirst = B", "B"),
        ("```\nfirst=B\n```", "B"),
        ("**First = A**", "A"),
        ("first = A.", "A"),
        ("first = A\nAgain: first = A", "A"),
    ],
)
def test_parse_reads_a_bare_letter(text: str, label: str) -> None:
    assert Sort(items=[1, 2]).parse(text) == label


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("", "no first line"),
        ("A comes first.", "no first line"),
        ("first: A", "no first line"),
        ("first = a", "first is 'a', not A or B"),
        ("first = 17", "first is '17', not A or B"),
        ('first = "A"', "first is nothing, not A or B"),
        ("first = AB", "first is 'AB', not A or B"),
        ("first = C", "first is 'C', not A or B"),
        ("first = A\nfirst = B", "first lines disagree"),
    ],
)
def test_parse_red_flags(text: str, detail: str) -> None:
    with pytest.raises(RedFlag) as info:
        Sort(items=[1, 2]).parse(text)
    assert (info.value.reason, info.value.detail) == ("malformed", detail)


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.sampled_from("firstFIRST =AaBb\n`*\"'.17"), max_size=40))
def test_parse_of_any_text_is_a_letter_or_a_red_flag(text: str) -> None:
    verdict = parse_or_flag(Sort(items=[1, 2]), text)
    assert verdict in ("A", "B") or isinstance(verdict, RedFlag)


# --- states and answers as JSON ------------------------------------------------------------------


def test_state_and_answer_json_round_trip() -> None:
    task = Sort(count=9, seed=1)
    for state in walk(task):
        data = task.state_to_json(state)
        assert json.loads(json.dumps(data)) == data
        assert task.state_from_json(data) == state
    assert task.answer_to_json("B") == {"first": "B"}


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        {"placed": [3], "pending": [1, 2], "lo": 0},
        {"placed": [3], "pending": [1, 9], "lo": 0, "hi": 1},
        {"placed": [3], "pending": [1, 1], "lo": 0, "hi": 1},
        {"placed": [3], "pending": [1, "2"], "lo": 0, "hi": 1},
        {"placed": [3], "pending": [1, [2]], "lo": 0, "hi": 1},
        {"placed": [], "pending": [3, 1, 2], "lo": 0, "hi": 0},
        {"placed": [3], "pending": [1, 2], "lo": 1, "hi": 1},
        {"placed": [3], "pending": [1, 2], "lo": 0, "hi": 2},
        {"placed": [3], "pending": [1, 2], "lo": 0, "hi": True},
        {"placed": [1, 2, 3], "pending": [], "lo": 1, "hi": 3},
    ],
)
def test_state_from_json_rejects_bad_shapes(bad: object) -> None:
    with pytest.raises(StateError):
        Sort(items=[3, 1, 2]).state_from_json(bad)


# --- the simulator -----------------------------------------------------------------------------


def test_simulator_satisfies_the_protocol_and_is_built_in() -> None:
    sim: Simulator[SortQuestion, Label] = SIM
    assert sim.task_name == "sort" == Sort.name
    assert any(isinstance(s, SortSimulator) for s in BUILTIN_SIMULATORS)
    assert SIM.state_key(SortQuestion(a=1, b=2, numeric=True, descending=False)) == (
        "[1,2,true,false]"
    )


def test_simulators_ignore_each_others_prompts() -> None:
    sort = Sort(items=["a", "b"]).prompt(Sort(items=["a", "b"]).initial_state())
    others = [
        Hanoi(3).prompt(Hanoi(3).initial_state()),
        Arithmetic().prompt(Arithmetic().initial_state()),
        Toposort().prompt(Toposort().initial_state()),
    ]
    for prompt in others:
        assert SIM.read_prompt(prompt.system, prompt.user) is None
    for sim in (HanoiSimulator(), ArithmeticSimulator(), ToposortSimulator()):
        assert sim.read_prompt(sort.system, sort.user) is None
    # Prompts no Sort makes: equal items, an unknown rule, an item of the other kind.
    question = "Which of A and B comes first under the rule?"
    rule = "Rule: smaller numbers come first (ascending numeric order)."
    for user in (
        f"{rule}\nA: 5\nB: 5\n{question}",
        f"Rule: biggest first.\nA: 5\nB: 6\n{question}",
        f'{rule}\nA: "5"\nB: 6\n{question}',
        f"{rule}\nA: 5\n{question}",
    ):
        assert SIM.read_prompt("", user) is None


@pytest.mark.parametrize("seed", range(20))
def test_rendered_answers_parse_back_and_the_wrong_one_is_the_other_letter(seed: int) -> None:
    rng = random.Random(seed)
    task = Sort(count=10, seed=seed, order="descending" if seed % 2 else "ascending")
    states = walk(task)[:-1]
    state = rng.choice(states)
    prompt = task.prompt(state)
    question = SIM.read_prompt(prompt.system, prompt.user)
    assert question is not None
    right = SIM.oracle(question)
    assert right == task.oracle(state)
    wrong = SIM.wrong_answers(question, random.Random(seed), 5)
    assert wrong == ["B" if right == "A" else "A"]
    assert SIM.wrong_answers(question, random.Random(seed), 0) == []
    for answer in (right, *wrong):
        for _ in range(10):
            assert task.parse(SIM.render(answer, rng)) == answer
    for _ in range(30):
        with pytest.raises(RedFlag):
            task.parse(SIM.render_malformed(question, rng))


def test_the_simulated_models_statistics_hold_on_sort_prompts() -> None:
    """p among valid answers and the malformed share, judged by the task's own parser.

    n = 6000 draws; malformed share 0.05: SE = sqrt(0.05 * 0.95 / 6000) = 0.0028, tolerance
    +-0.013. About 5700 valid: SE = sqrt(0.9 * 0.1 / 5700) = 0.0040, tolerance +-0.018. A wrong
    answer rendered as the right one would show p = 1; a comparison with no wrong answer would
    turn its errors into malformed responses (share 0.145); both are many tolerances away.
    """
    config = SimConfig(p=0.9, rivals=2, hard_fraction=0.0, malformed_rate=0.05, overlong_rate=0.0)
    model = SimulatedModel(config)
    cases = [
        (task, state)
        for task in (
            Sort(count=30, seed=1),
            Sort(count=30, seed=2, order="descending"),
            Sort(items=[f"w{i:03d}" for i in random.Random(3).sample(range(1000), 30)]),
        )
        for state in walk(task)[:-1]
    ]
    rng = random.Random(20240607)
    n, flagged, valid, right = 6000, 0, 0, 0
    for seed in range(n):
        task, state = rng.choice(cases)
        prompt = task.prompt(state)
        response = model.respond(prompt.system, prompt.user, max_tokens=5000, seed=seed)
        verdict = parse_or_flag(task, response.completion.text)
        if isinstance(verdict, RedFlag):
            assert response.kind == "malformed"
            flagged += 1
            continue
        assert response.kind == "normal"
        valid += 1
        right += verdict == task.oracle(state)
        assert response.correct == (verdict == task.oracle(state))
    assert abs(flagged / n - 0.05) <= Z * math.sqrt(0.05 * 0.95 / n)
    assert abs(right / valid - 0.9) <= Z * math.sqrt(0.9 * 0.1 / valid)


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


def test_a_run_from_the_cli_decides_every_step_right_and_replays(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log = tmp_path / "sort.db"
    items = [41, 7, 93, 18, 66, 2, 55, 30, 84, 12, 71, 25]
    params = {"items": items, "order": "descending"}
    code, out, err = cli(
        capsys, "run", "--task", "sort", "--params", json.dumps(params), "--p", "0.9",
        "--k", "4", "--seed", "5", "--log", str(log), "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    task = Sort(items=items, order="descending")
    assert (result["status"], result["task"]) == ("succeeded", "sort")
    assert result["task_params"] == params
    assert result["steps"] == task.max_steps()
    assert result["samples"] > result["steps"] * 4  # p = 0.9: some steps were contested

    code, out, err = cli(capsys, "export", str(log), "--format", "jsonl")
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    winners = [json.loads(e["winner"]) for e in events if e["type"] == "step_decided"]
    states = walk(task)
    assert winners == [{"first": task.oracle(s)} for s in states[:-1]]
    last = [e["state"] for e in events if e["type"] == "state_changed"][-1]
    assert task.state_from_json(last) == states[-1]
    assert list(states[-1].placed) == sorted(items, reverse=True)

    code, out, err = cli(capsys, "replay", str(log), "--verify", "--json")
    assert code == 0, err
    verified = json.loads(out)
    assert verified["ok"] is True
    assert verified["checked"] == verified["recorded"] == len(events)


def test_the_built_in_name_takes_task_seed_and_refuses_other_tasks_options(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log = tmp_path / "s.db"
    code, out, err = cli(capsys, "run", "sort", "--task-seed", "4", "--log", str(log), "--json")
    assert code == 0, err
    assert json.loads(out)["task_params"] == {"count": 20, "seed": 4, "order": "ascending"}
    code, _, err = cli(capsys, "run", "sort", "--digits", "3", "--log", str(log))
    assert code == 2
    assert "--digits does not apply to the sort task" in err
