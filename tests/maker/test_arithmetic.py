"""The arithmetic chain task, its parser and simulator, and the built-in task registry."""

from __future__ import annotations

import random
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import maker.tasks
from events import canonical_json
from maker.core._errors import ConfigError, RedFlag, UnknownTaskError
from maker.core._simulator import Simulator
from maker.tasks import (
    BUILTIN_SIMULATORS,
    BUILTIN_TASKS,
    Arithmetic,
    ArithmeticSimulator,
    ArithState,
    Hanoi,
    HanoiSimulator,
    PromptTask,
    Sort,
    TaskFile,
    Toposort,
    make_task,
)
from maker.tasks._arithmetic import ArithOp
from maker.tasks._arithmetic_sim import ArithQuestion

SIM = ArithmeticSimulator()


def run_oracle(task: Arithmetic, steps: int) -> ArithState:
    state = task.initial_state()
    for _ in range(steps):
        answer = task.oracle(state)
        assert answer is not None
        state = task.apply(state, answer)
    return state


def parse_or_flag(task: Arithmetic, text: str) -> int | RedFlag:
    """The parsed answer or the red flag; any other exception fails the test."""
    try:
        answer: int = task.parse(text)  # a strict task's answer is the int it read
    except RedFlag as flag:
        return flag
    return answer


# --- the task ------------------------------------------------------------------------------------


def test_defaults_params_and_start() -> None:
    task = Arithmetic()
    assert task.params() == {"steps": 50, "digits": 6, "seed": 0}
    assert task.name == "arithmetic"
    assert task.max_steps() == 50
    start = task.initial_state()
    assert start.index == 0
    assert 100_000 <= start.value <= 999_999
    assert len(task.operations) == 50


def test_operations_are_a_pure_function_of_the_seed() -> None:
    a, b = Arithmetic(steps=40, digits=5, seed=7), Arithmetic(steps=40, digits=5, seed=7)
    assert a.operations == b.operations
    assert a.initial_state() == b.initial_state()
    assert Arithmetic(steps=40, digits=5, seed=8).operations != a.operations
    ops = {op.op for op in Arithmetic(steps=400, seed=3).operations}
    assert ops == {"add", "subtract", "multiply", "divide"}


@pytest.mark.parametrize("seed", range(25))
def test_values_stay_in_range_over_long_chains(seed: int) -> None:
    digits = 1 + seed % 8
    task = Arithmetic(steps=2000, digits=digits, seed=seed)
    state = task.initial_state()
    while not task.is_done(state):
        op = task.operation(state)
        if op.op in ("add", "subtract"):
            assert 1 <= op.operand < 10**digits
        else:
            assert 2 <= op.operand <= 99
        answer = task.oracle(state)
        assert answer is not None
        state = task.apply(state, answer)
        assert 0 <= state.value < 10 ** (2 * digits)
    assert state.index == 2000
    assert task.oracle(state) is None


def test_validation_names_the_field() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"steps": 0}, "steps"),
        ({"steps": True}, "steps"),
        ({"steps": 1.5}, "steps"),
        ({"digits": 0}, "digits"),
        ({"digits": 19}, "digits"),
        ({"seed": -1}, "seed"),
        ({"seed": "1"}, "seed"),
    ]
    for kwargs, field in cases:
        with pytest.raises(ConfigError) as info:
            Arithmetic(**kwargs)
        assert info.value.field == field


def test_prompt_holds_value_and_operation_but_no_step_number() -> None:
    task = Arithmetic(steps=30, digits=4, seed=2)
    state = run_oracle(task, 13)
    prompt = task.prompt(state)
    assert f"Current value: {state.value}\n" in prompt.user
    assert f"Operation: {task.operations[13].describe()}\n" in prompt.user
    assert "result = N" in prompt.system
    assert "exactly one operation" in prompt.system
    assert re.search(r"(?i)\bstep\s*(number|#|\d)", prompt.user) is None
    assert "13" not in prompt.user.replace(str(state.value), "").replace(
        task.operations[13].describe(), ""
    )
    done = run_oracle(task, 30)
    with pytest.raises(ValueError, match="no operation"):
        task.prompt(done)


def test_operation_descriptions() -> None:
    assert ArithOp("add", 482913).describe() == "add 482913"
    assert ArithOp("subtract", 1234).describe() == "subtract 1234"
    assert ArithOp("multiply", 37).describe() == "multiply by 37"
    assert ArithOp("divide", 7).describe() == "divide by 7 (floor division)"
    assert ArithOp("divide", 7).apply(55) == 7  # floor, not rounding
    assert ArithOp("multiply", 37).apply(3) == 111
    assert ArithOp("add", 9).apply(3) == 12
    assert ArithOp("subtract", 8).apply(50) == 42


# --- parsing -------------------------------------------------------------------------------------


def test_parse_last_match_wins() -> None:
    task = Arithmetic(digits=3)
    assert task.parse("result = 5\nno wait\nRESULT=12") == 12
    assert task.parse("The format is result = N. 3 + 4 = 7\nresult = 7") == 7
    assert task.parse("result = -3") == -3


@pytest.mark.parametrize(
    "text",
    ["", "The answer is 12.", "result = ?", "result: 12", "result = 12abc", "result = twelve"],
)
def test_parse_rejects_missing_result(text: str) -> None:
    with pytest.raises(RedFlag) as info:
        Arithmetic(digits=3).parse(text)
    assert info.value.reason == "malformed"
    assert info.value.detail == "no result line"


def test_parse_rejects_absurdly_long_numbers() -> None:
    task = Arithmetic(digits=3)  # at most 4 * 3 + 4 = 16 digits
    assert task.parse("result = " + "9" * 16) == int("9" * 16)
    with pytest.raises(RedFlag) as info:
        task.parse("result = " + "9" * 17)
    assert info.value.detail == "result has 17 digits"
    with pytest.raises(RedFlag):
        task.parse("result = " + "9" * 100_000)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_parse_arbitrary_text_only_red_flags(text: str) -> None:
    outcome = parse_or_flag(Arithmetic(digits=3), text)
    if isinstance(outcome, RedFlag):
        assert outcome.reason == "malformed"
    else:
        assert isinstance(outcome, int)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**12), st.text(alphabet="result =-0123456789x?\n", max_size=20))
def test_parse_mutated_answers_only_red_flag(value: int, noise: str) -> None:
    text = f"result = {value}" + noise
    outcome = parse_or_flag(Arithmetic(digits=3), text)
    if isinstance(outcome, RedFlag):
        assert outcome.reason == "malformed"
    else:
        assert isinstance(outcome, int)


# --- JSON ----------------------------------------------------------------------------------------


def test_state_and_answer_json() -> None:
    task = Arithmetic(steps=10, digits=3, seed=1)
    state = run_oracle(task, 4)
    assert task.state_to_json(state) == {"value": state.value, "index": 4}
    assert task.state_from_json(task.state_to_json(state)) == state
    assert canonical_json(task.answer_to_json(1234)) == '{"result":1234}'
    for bad in (None, {"value": 1}, {"value": "1", "index": 0}, {"value": 1, "index": 11}):
        with pytest.raises(ValueError, match=r"."):
            task.state_from_json(bad)
    with pytest.raises(ValueError, match=r"."):
        task.state_from_json({"value": True, "index": 0})


# --- the simulator -------------------------------------------------------------------------------


def test_simulator_satisfies_the_protocol() -> None:
    sim: Simulator[ArithQuestion, int] = SIM
    assert sim.task_name == "arithmetic" == Arithmetic.name


@pytest.mark.parametrize("seed", range(20))
def test_prompt_round_trips_through_simulator(seed: int) -> None:
    rng = random.Random(seed)
    task = Arithmetic(steps=100, digits=1 + seed % 8, seed=seed)
    state = run_oracle(task, rng.randrange(100))
    prompt = task.prompt(state)
    question = SIM.read_prompt(prompt.system, prompt.user)
    assert question == ArithQuestion(value=state.value, operation=task.operation(state))
    assert SIM.oracle(question) == task.oracle(state)
    assert SIM.state_key(question) == f"{state.value} {task.operation(state).describe()}"


def test_simulators_ignore_each_others_prompts() -> None:
    hanoi = Hanoi(3).prompt(Hanoi(3).initial_state())
    arith = Arithmetic().prompt(Arithmetic().initial_state())
    assert SIM.read_prompt(hanoi.system, hanoi.user) is None
    assert HanoiSimulator().read_prompt(arith.system, arith.user) is None
    assert SIM.read_prompt("", "Current value: 5\nOperation: divide by 0 (floor division)") is None


@pytest.mark.parametrize("seed", range(20))
def test_render_wrong_and_malformed(seed: int) -> None:
    rng = random.Random(seed)
    task = Arithmetic(steps=60, digits=1 + seed % 8, seed=seed)
    state = run_oracle(task, rng.randrange(60))
    question = ArithQuestion(value=state.value, operation=task.operation(state))
    right = task.oracle(state)
    assert right is not None
    for _ in range(10):
        assert task.parse(SIM.render(right, rng)) == right
    wrong = SIM.wrong_answers(question, random.Random(seed), 8)
    assert wrong == SIM.wrong_answers(question, random.Random(seed), 8)
    assert len(wrong) >= 2
    assert len(set(wrong)) == len(wrong)
    assert right not in wrong
    assert all(w >= 0 for w in wrong)
    for answer in wrong:
        assert task.parse(SIM.render(answer, rng)) == answer
    for _ in range(20):
        with pytest.raises(RedFlag):
            task.parse(SIM.render_malformed(question, rng))


def test_wrong_answers_are_small_slips() -> None:
    question = ArithQuestion(value=1200, operation=ArithOp("add", 34))
    wrong = set(SIM.wrong_answers(question, random.Random(0), 100))
    assert {1233, 1235, 1224, 1244, 1134, 1334, 2234, 2134, 1324, 1243} <= wrong
    assert 1234 not in wrong
    zero = ArithQuestion(value=1, operation=ArithOp("subtract", 1))
    assert all(w > 0 for w in SIM.wrong_answers(zero, random.Random(0), 100))


# --- the registry --------------------------------------------------------------------------------


def test_public_face() -> None:
    assert maker.tasks.__all__ == sorted(maker.tasks.__all__, key=lambda n: (not n.isupper(), n))
    for name in maker.tasks.__all__:
        assert hasattr(maker.tasks, name)
    assert dict(BUILTIN_TASKS) == {
        "arithmetic": Arithmetic,
        "hanoi": Hanoi,
        "prompt": PromptTask,
        "sort": Sort,
        "taskfile": TaskFile,
        "toposort": Toposort,
    }
    # A prompt task asks other tasks' prompts: the simulators of those tasks answer them. A task
    # file's simulator comes with the task (Task.simulator), since it answers what the file says.
    assert {s.task_name for s in BUILTIN_SIMULATORS} == set(BUILTIN_TASKS) - {"prompt", "taskfile"}


def test_make_task_builds_and_round_trips_params() -> None:
    task = make_task("hanoi", {"disks": 5})
    assert isinstance(task, Hanoi)
    assert task.disks == 5
    arith = make_task("arithmetic", {"steps": 7, "seed": 3})
    assert arith.params() == {"steps": 7, "digits": 6, "seed": 3}
    assert make_task("arithmetic", arith.params()).params() == arith.params()


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("hanoi", {}, "disks"),
        ("hanoi", {"disks": 3, "pegs": 4}, "pegs"),
        ("hanoi", {"disks": "3"}, "disks"),
        ("hanoi", {"disks": 0}, "disks"),
        ("arithmetic", {"steps": -1}, "steps"),
        ("arithmetic", {"digits": None}, "digits"),
        ("arithmetic", {"speed": 1}, "speed"),
        ("arithmetic", [], "params"),
    ],
)
def test_make_task_errors_name_the_field(name: str, params: Any, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_task(name, params)
    assert info.value.field == field


def test_make_task_unknown_name() -> None:
    with pytest.raises(UnknownTaskError, match="known tasks: arithmetic, hanoi") as info:
        make_task("chess", {})
    assert info.value.name == "chess"
