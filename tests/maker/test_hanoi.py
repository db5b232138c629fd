"""Towers of Hanoi as the paper ran it: the task, its strict parser and its simulator."""

from __future__ import annotations

import ast
import random
import re
from collections.abc import Callable
from functools import partial

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from events import canonical_json
from maker.core._errors import ConfigError, RedFlag
from maker.core._simulator import Simulator
from maker.tasks import Hanoi, HanoiAnswer, HanoiSimulator, HanoiState, optimal_moves
from maker.tasks._hanoi import (
    _MOVE_RE,
    _STATE_RE,
    _last_match,
    legal_moves,
    literal,
    move_top,
)

SIM = HanoiSimulator()


def run_oracle(task: Hanoi, steps: int) -> HanoiState:
    state = task.initial_state()
    for _ in range(steps):
        answer = task.oracle(state)
        assert answer is not None
        state = task.apply(state, answer)
    return state


def random_reachable(rng: random.Random, disks: int) -> HanoiState:
    task = Hanoi(disks)
    return run_oracle(task, rng.randrange(task.max_steps() + 1))


def valid(answer: HanoiAnswer, disks: int) -> bool:
    seen = sorted(d for peg in answer.next_state for d in peg)
    return (
        seen == list(range(1, disks + 1))
        and len(answer.move) == 3
        and all(type(v) is int for v in answer.move)
    )


def parse_or_flag(parse: Callable[[str], HanoiAnswer], text: str) -> HanoiAnswer | RedFlag:
    """The parsed answer or the red flag; any other exception fails the test."""
    try:
        return parse(text)
    except RedFlag as flag:
        return flag


# --- the task driven by its own oracle ---------------------------------------------------------


@pytest.mark.parametrize("disks", range(1, 11))
def test_oracle_run_is_the_unique_optimal_solution(disks: int) -> None:
    task = Hanoi(disks)
    state = task.initial_state()
    moves = []
    for _ in range(task.max_steps()):
        assert not task.is_done(state)
        answer = task.oracle(state)
        assert answer is not None
        assert answer.move in legal_moves(state.pegs)
        moves.append(answer.move)
        state = task.apply(state, answer)
        assert state.previous_move == answer.move
    assert task.is_done(state)
    assert moves == optimal_moves(disks)
    assert len(moves) == 2**disks - 1


def test_optimal_moves_small() -> None:
    assert optimal_moves(1) == [(1, 0, 2)]
    example = [(1, 0, 2), (2, 0, 1), (1, 2, 1), (3, 0, 2), (1, 1, 0), (2, 1, 2), (1, 0, 2)]
    assert optimal_moves(3) == example


def test_first_move_for_twenty_disks_goes_to_peg_one() -> None:
    task = Hanoi(20)
    answer = task.oracle(task.initial_state())
    assert answer is not None
    assert answer.move == (1, 0, 1)
    assert task.max_steps() == 1_048_575


def test_oracle_none_on_corrupted_or_finished_state() -> None:
    task = Hanoi(3)
    buried = HanoiState(pegs=((3, 1, 2), (), ()), previous_move=None)
    assert task.oracle(buried) is None
    done = run_oracle(task, task.max_steps())
    assert task.is_done(done)
    assert task.oracle(done) is None


def test_initial_state_params_and_validation() -> None:
    task = Hanoi(4)
    assert task.initial_state() == HanoiState(pegs=((4, 3, 2, 1), (), ()), previous_move=None)
    assert task.params() == {"disks": 4}
    assert task.name == "hanoi"
    assert not task.is_done(task.initial_state())
    assert not task.is_done(HanoiState(pegs=((), (), (4, 3, 1, 2))))
    assert Hanoi(30).max_steps() == 2**30 - 1
    for bad in (0, 31, -1, True, 2.0, "3"):
        with pytest.raises(ConfigError) as info:
            Hanoi(bad)  # type: ignore[arg-type]
        assert info.value.field == "disks"


# --- prompts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("disks", [3, 4])
def test_prompt_holds_the_papers_pieces(disks: int) -> None:
    task = Hanoi(disks)
    prompt = task.prompt(task.initial_state())
    system, user = prompt.system, prompt.user
    assert "[[3, 2, 1], [], []]" in system
    assert "[[1, 0, 2], [2, 0, 1], [1, 2, 1], [3, 0, 2], [1, 1, 0], [2, 1, 2], [1, 0, 2]]" in system
    assert "0-indexed" in system
    assert "third peg" in system
    assert "move = [disk id, from peg, to peg]" in system
    assert "next_state = [[...], [...], [...]]" in system
    assert "larger disk may not be placed on top of a smaller disk" in system
    assert "Only one disk can be moved at a time" in user
    assert "larger disk may not be placed on top of a smaller disk" in user
    assert "Previous move: None" in user
    assert f"Current State: [{list(range(disks, 0, -1))}, [], []]" in user
    assert "make the only legal move that does not involve moving disk 1" in user
    if disks % 2 == 0:
        assert "move disk 1 clockwise one peg (0 -> 1 -> 2 -> 0)" in user
    else:
        assert "move disk 1 counterclockwise one peg (0 -> 2 -> 1 -> 0)" in user
    assert "single next move" in user
    assert "next state" in user


def test_prompt_has_no_step_number_or_history() -> None:
    task = Hanoi(5)
    state = run_oracle(task, 17)
    prompt = task.prompt(state)
    assert f"Previous move: {list(optimal_moves(5)[16])}" in prompt.user
    assert f"Current State: {[list(p) for p in state.pegs]}" in prompt.user
    for text in (prompt.system, prompt.user):
        assert re.search(r"(?i)\bstep\s*(number|#|\d)", text) is None
        assert "17" not in text
        # Only the previous move appears, never earlier ones.
        assert str(list(optimal_moves(5)[15])) not in prompt.user
    # The prompt is a function of the pegs and previous move alone.
    assert task.prompt(HanoiState(state.pegs, state.previous_move)) == prompt


@pytest.mark.parametrize("seed", range(40))
def test_prompt_round_trips_through_simulator(seed: int) -> None:
    rng = random.Random(seed)
    disks = 1 + seed % 12  # both parities
    task = Hanoi(disks)
    state = random_reachable(rng, disks)
    prompt = task.prompt(state)
    assert SIM.read_prompt(prompt.system, prompt.user) == state
    assert SIM.oracle(state) == task.oracle(state)


def test_read_prompt_rejects_foreign_or_inconsistent_prompts() -> None:
    assert SIM.read_prompt("system", "Current value: 5\nOperation: add 3") is None
    prompt = Hanoi(4).prompt(Hanoi(4).initial_state())
    # An even tower told to circle counterclockwise cannot reach peg 2: not a Hanoi prompt.
    flipped = prompt.user.replace("(0 -> 1 -> 2 -> 0)", "(0 -> 2 -> 1 -> 0)")
    assert SIM.read_prompt(prompt.system, flipped) is None
    missing = prompt.user.replace("[[4, 3, 2, 1], [], []]", "[[4, 3, 1], [], []]")
    assert SIM.read_prompt(prompt.system, missing) is None
    garbage = prompt.user.replace("[[4, 3, 2, 1], [], []]", "[[4, 3, 2, 1], [], ['x']]")
    assert SIM.read_prompt(prompt.system, garbage) is None


# --- the strict parser ---------------------------------------------------------------------------


def test_parse_reads_a_plain_answer() -> None:
    task = Hanoi(3)
    answer = task.parse("reasoning...\nmove = [1, 0, 2]\nnext_state = [[3, 2], [], [1]]")
    assert answer == HanoiAnswer(move=(1, 0, 2), next_state=((3, 2), (), (1,)))
    assert hash(answer) == hash(HanoiAnswer(move=(1, 0, 2), next_state=((3, 2), (), (1,))))


def test_parse_last_match_wins_and_ignores_case_and_newlines() -> None:
    task = Hanoi(3)
    text = (
        "The format is move = [disk id, from peg, to peg].\n"
        "First guess: move = [1, 0, 1]\nnext_state = [[3, 2], [1], []]\n"
        "Wait, counterclockwise.\nMOVE = [1, 0, 2]\nNext_State = [\n  [3, 2],\n  [],\n  [1]\n]"
    )
    assert task.parse(text) == HanoiAnswer(move=(1, 0, 2), next_state=((3, 2), (), (1,)))


def test_parse_does_not_check_legality() -> None:
    # Legality is voting's job; an illegal but well-formed answer parses.
    answer = Hanoi(3).parse("move = [3, 0, 2]\nnext_state = [[1, 2], [], [3]]")
    assert answer.move == (3, 0, 2)


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("next_state = [[3, 2], [], [1]]", "no move line"),
        ("move = [1, 0, 2]", "no next_state line"),
        ("move = [1, 0, 2]\nnext_state = [[3, 2], [], [1]", "no next_state line"),
        ("move = [1, 0, 2]\nnext_state = [[3, 2], [1]]", "no next_state line"),
        ("move = [1, 0]\nnext_state = [[3, 2], [], [1]]", "move has 2 elements"),
        ("move = [1, 0, 2, 2]\nnext_state = [[3, 2], [], [1]]", "move has 4 elements"),
        ("move = [True, 0, 2]\nnext_state = [[3, 2], [], [1]]", "move holds a non-int"),
        ("move = [1, 0, 2.0]\nnext_state = [[3, 2], [], [1]]", "move holds a non-int"),
        ("move = [1, 0, 'b']\nnext_state = [[3, 2], [], [1]]", "move holds a non-int"),
        ("move = [1 0 2]\nnext_state = [[3, 2], [], [1]]", "move is not a Python literal"),
        ("move = [1, 0, 2]\nnext_state = [[3, 2], [], [x]]", "next_state is not a Python literal"),
        ("move = [1, 0, 2]\nnext_state = [[3, 2], [], [True]]", "next_state holds a non-int"),
        ("move = [1, 0, 2]\nnext_state = [[3, 2], [], [1.0]]", "next_state holds a non-int"),
        ("move = [1, 0, 2]\nnext_state = [[3, 2], [], []]", "next_state misses disk 1"),
        ("move = [1, 0, 2]\nnext_state = [[3, 2], [2], [1]]", "next_state repeats disk 2"),
        ("move = [1, 0, 2]\nnext_state = [[3, 2], [4], [1]]", "next_state has disk 4 outside 1..3"),
        ("move = [1, 0, 2]\nnext_state = [[3, 2], [0], [1]]", "next_state has disk 0 outside 1..3"),
        ("I will move disk 1 to peg 2.", "no move line"),
        ("", "no move line"),
    ],
)
def test_parse_rejections(text: str, detail: str) -> None:
    with pytest.raises(RedFlag) as info:
        Hanoi(3).parse(text)
    assert info.value.reason == "malformed"
    assert info.value.detail == detail


@pytest.mark.parametrize(
    "inner",
    [
        "(" * 500 + "1" + ")" * 500 + ", 0, 2",
        "-" * 200_000 + "1, 0, 2",
        "1" * 5000 + ", 0, 2",
        "1+" * 100_000 + "1, 0, 2",
        "1\x00, 0, 2",
        "'\\d', 0, 2",
        "1if 1 else 2, 0, 2",
    ],
)
def test_parse_survives_huge_and_deep_literals(inner: str) -> None:
    with pytest.raises(RedFlag) as info:
        Hanoi(3).parse(f"move = [{inner}]\nnext_state = [[3, 2], [], [1]]")
    assert info.value.reason == "malformed"


_ANSWER = "move = [1, 0, 2]\nnext_state = [[3, 2], [], [1]]"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_parse_arbitrary_text_only_red_flags(text: str) -> None:
    outcome = parse_or_flag(Hanoi(3).parse, text)
    if isinstance(outcome, RedFlag):
        assert outcome.reason == "malformed"
    else:
        assert valid(outcome, 3)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(_ANSWER)),
            st.integers(0, 3),
            st.sampled_from(list("[](),= 0123456789-_xTrue'\"\n\\")),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_parse_mutated_answers_only_red_flag(edits: list[tuple[int, int, str]]) -> None:
    text = _ANSWER
    for pos, deleted, inserted in edits:
        pos = min(pos, len(text))
        text = text[:pos] + inserted + text[pos + deleted :]
    outcome = parse_or_flag(Hanoi(3).parse, text)
    if isinstance(outcome, RedFlag):
        assert outcome.reason == "malformed"
    else:
        assert valid(outcome, 3)


def literal_eval_or_error(text: str) -> object:
    try:
        return ast.literal_eval(text)
    except Exception:  # literal_eval's failures are not a closed set
        return "error"


def literal_or_error(text: str) -> object:
    try:
        return literal(text)
    except ValueError:
        return "error"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="[]0123456789,-+ \n\t", max_size=40))
@example("\n []")  # literal_eval: a newline then an indent is an IndentationError
def test_literal_agrees_with_literal_eval_on_plain_text(text: str) -> None:
    assert literal_or_error(text) == literal_eval_or_error(text)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_literal_agrees_with_literal_eval_on_lists(data: st.DataObject) -> None:
    blank = st.sampled_from(["", " ", "  ", "\n", "\t", " \n "])

    def flat(values: list[int]) -> str:
        parts = [data.draw(blank) + str(v) + data.draw(blank) for v in values]
        trailing = data.draw(st.sampled_from(["", ","])) if values else ""
        return "[" + data.draw(blank) + ",".join(parts) + trailing + "]"

    ints = st.lists(st.integers(-(10**25), 10**25) | st.integers(-3, 30), max_size=5)
    pegs = [flat(data.draw(ints)) for _ in range(data.draw(st.integers(1, 4)))]
    for text in (pegs[0], "[" + ",".join(pegs) + data.draw(blank) + "]"):
        assert literal_or_error(text) == literal_eval_or_error(text)


def flag_or(read: Callable[[], object]) -> object:
    try:
        return read()
    except RedFlag as flag:
        return ("flag", flag.reason, flag.detail)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_parse_reads_and_flags_as_its_general_path_does(data: st.DataObject) -> None:
    # parse reads plain JSON answers itself (_read_plain): it must never differ from the
    # general path, neither in the answer nor in a red flag's detail.
    task = Hanoi(data.draw(st.integers(1, 6)))
    # Half the time the texts are plain answers, perhaps with one odd value, so that both
    # paths get their share.
    plain_only = data.draw(st.booleans())
    blank = st.sampled_from(["", "", " ", "\n", "\t", "\r", " \n "])
    odd = st.sampled_from(["1.0", "True", "true", "+1", "01", "0x1", "9" * 5000, "-0", "1e2"])
    value = st.integers(-3, 9).map(str) | st.integers(-(10**25), 10**25).map(str) | odd

    def listed(items: list[str]) -> str:
        body = ",".join(data.draw(blank) + item + data.draw(blank) for item in items)
        trailing = "" if plain_only or not items else data.draw(st.sampled_from(["", ","]))
        return "[" + data.draw(blank) + body + trailing + "]"

    if plain_only:
        move = listed(
            [str(v) for v in data.draw(st.lists(st.integers(-3, 9), min_size=3, max_size=3))]
        )
        disks = [str(d) for d in range(task.disks, 0, -1)]
        if data.draw(st.integers(0, 3)) == 0:
            disks[data.draw(st.integers(0, task.disks - 1))] = data.draw(value)
        a, b = sorted(data.draw(st.lists(st.integers(0, task.disks), min_size=2, max_size=2)))
        pegs = [disks[:a], disks[a:b], disks[b:]]
    else:
        move = listed(data.draw(st.lists(value, min_size=2, max_size=4)))
        pegs = data.draw(st.lists(st.lists(value, max_size=4), min_size=2, max_size=4))
    state = listed([listed(peg) for peg in pegs])
    general = flag_or(lambda: task._read_general(move, state))
    plain = task._read_plain(move, state)
    if plain is not None:
        assert plain == general
    text = f"move = {move}\nnext_state = {state}"
    moves, states = _MOVE_RE.findall(text), _STATE_RE.findall(text)
    if moves and states:
        assert (moves[-1], states[-1]) == (move, state)
        assert flag_or(lambda: task.parse(text)) == general


_WORDS = ["move", "MoVe", "amove", "move_", "next_state", "NEXT_STATE", "Next_Statement"]
# The long s and the Kelvin sign: (?i) folds them onto "s" and "k".
_ODD = ["next_\u017ftate", "\u017f", "\u212a", "é"]
_FRAGMENTS = st.sampled_from(
    [*_WORDS, *_ODD, " = ", "=", " ", "\n", "\t", "[", "]", "[[", "]]", ", ", "1", "0, 2", "_", "x"]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_FRAGMENTS, max_size=30).map("".join))
@example("move = [1]\nmove = [2]")
@example("amove = [1] move = [2] Move=[3]x")
@example("next_\u017ftate = [[1], [], []] é move = [1, 0, 2]")
def test_parse_finds_the_last_match_of_the_papers_regexes(text: str) -> None:
    # parse looks for the last match from the right, where the lowered text holds the word;
    # it must find exactly what the paper's regexes find, in any case and any script.
    for pattern, word in ((_MOVE_RE, "move"), (_STATE_RE, "next_state")):
        matches = pattern.findall(text)
        lowered = text.lower() if text.isascii() else None
        assert _last_match(pattern, word, text, lowered) == (matches[-1] if matches else None)


@given(st.lists(st.sampled_from(range(8)), max_size=12))
def test_parse_reads_each_text_as_a_fresh_task_does(order: list[int]) -> None:
    # parse keeps the answer it read last, for the next sample with the same answer lines:
    # whatever the order of texts, each reads as it does on a fresh task.
    texts = [
        "Disk 1 moves.\nmove = [1, 0, 2]\nnext_state = [[3, 2], [], [1]]",
        "So:\n```move = [1,0,2]```\n```next_state = [[3,2],[],[1]]```",
        "move = [1, 0, 2]\nnext_state = [[3, 2], [], [1]]",
        "move = [1, 0, 1]\nnext_state = [[3, 2], [], [1]]",
        "move = [1, 0, 2]\nnext_state = [[3, 2], [1], []]",
        "move = [1, 0, 2]\nnext_state = [[3, 2], [], [1, 1]]",
        "move = [1, 0, 2]",
        "move = [1, 0, 2]\nnext_state = [[3, 2], [], [1],]",
    ]
    task = Hanoi(3)
    for i in order:
        assert flag_or(partial(task.parse, texts[i])) == flag_or(partial(Hanoi(3).parse, texts[i]))


def test_repairing_parser_accepts_what_the_strict_one_rejects() -> None:
    task = Hanoi(3)
    cut = "move = [1, 0, 2]\nnext_state = [[3, 2], [], [1]"
    with pytest.raises(RedFlag):
        task.parse(cut)
    assert task.parse_repairing(cut) == HanoiAnswer(move=(1, 0, 2), next_state=((3, 2), (), (1,)))
    truncated = "move = [2, 0, 1\nnext_state = [[3], [2], [\nthen I stopped"
    assert task.parse_repairing(truncated) == HanoiAnswer(
        move=(2, 0, 1), next_state=((3,), (2,), ())
    )
    # It does not check disk sets either.
    lossy = "move = [1, 0, 2]\nnext_state = [[3], [], [1]]"
    with pytest.raises(RedFlag):
        task.parse(lossy)
    assert task.parse_repairing(lossy).next_state == ((3,), (), (1,))
    # A well-formed answer reads the same both ways.
    assert task.parse_repairing(_ANSWER) == task.parse(_ANSWER)
    for nothing in (
        "no answer at all",
        "move = [1, 0, 2]",
        "move = [1, 0]\nnext_state = [[], [], []]",
    ):
        with pytest.raises(RedFlag):
            task.parse_repairing(nothing)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_repairing_parser_only_red_flags(text: str) -> None:
    outcome = parse_or_flag(Hanoi(3).parse_repairing, "move = [1, 0, 2]\nnext_state = " + text)
    if isinstance(outcome, RedFlag):
        assert outcome.reason == "malformed"
    else:
        assert len(outcome.next_state) == 3


# --- JSON ----------------------------------------------------------------------------------------


def test_state_and_answer_json() -> None:
    task = Hanoi(3)
    state = run_oracle(task, 3)
    data = task.state_to_json(state)
    assert data == {"pegs": [[3], [2, 1], []], "previous_move": [1, 2, 1]}
    assert task.state_from_json(data) == state
    start = task.initial_state()
    assert task.state_to_json(start) == {"pegs": [[3, 2, 1], [], []], "previous_move": None}
    assert task.state_from_json(task.state_to_json(start)) == start
    answer = task.oracle(state)
    assert answer is not None
    assert canonical_json(task.answer_to_json(answer)) == (
        '{"move":[3,0,2],"next_state":[[],[2,1],[3]]}'
    )


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        {"pegs": [[3, 2, 1], []], "previous_move": None},
        {"pegs": [[3, 2, 1], [], []]},
        {"pegs": [[3, 2, 1], [], [True]], "previous_move": None},
        {"pegs": [[3, 2, 1], [], ["1"]], "previous_move": None},
        {"pegs": [[3, 2, 1], [], []], "previous_move": [1, 0]},
        {"pegs": [[3, 2, 1], [], []], "previous_move": "none"},
        {"pegs": [[3, 2, 1], [], []], "previous_move": None, "extra": 1},
    ],
)
def test_state_from_json_rejects_bad_shapes(bad: object) -> None:
    with pytest.raises(ValueError, match=r"."):
        Hanoi(3).state_from_json(bad)


# --- the simulator -------------------------------------------------------------------------------


def test_simulator_satisfies_the_protocol() -> None:
    sim: Simulator[HanoiState, HanoiAnswer] = SIM
    assert sim.task_name == "hanoi" == Hanoi.name
    state = Hanoi(3).initial_state()
    assert SIM.state_key(state) == '{"pegs":[[3,2,1],[],[]],"previous_move":null}'


@pytest.mark.parametrize("seed", range(30))
def test_rendered_oracle_answers_parse_back_exactly(seed: int) -> None:
    rng = random.Random(seed)
    disks = 1 + seed % 9
    task = Hanoi(disks)
    state = random_reachable(rng, disks)
    right = task.oracle(state)
    if right is None:
        return
    for _ in range(20):
        assert task.parse(SIM.render(right, rng)) == right


@pytest.mark.parametrize("seed", range(30))
def test_wrong_answers_parse_differ_and_are_deterministic(seed: int) -> None:
    rng = random.Random(seed)
    disks = 1 + seed % 9
    task = Hanoi(disks)
    state = random_reachable(rng, disks)
    right = task.oracle(state)
    wrong = SIM.wrong_answers(state, random.Random(seed), 10)
    assert wrong == SIM.wrong_answers(state, random.Random(seed), 10)
    assert len(wrong) >= (3 if right is not None else 1)
    assert len(set(wrong)) == len(wrong)
    assert right not in wrong
    assert SIM.wrong_answers(state, random.Random(seed), 2) == wrong[:2]
    for answer in wrong:
        assert task.parse(SIM.render(answer, rng)) == answer


def test_wrong_answers_include_the_classic_slips() -> None:
    task = Hanoi(4)
    state = run_oracle(task, 4)  # the previous move moved disk 3, so disk 1 moves next
    right = task.oracle(state)
    assert right is not None
    d, f, t = right.move
    assert d == 1
    other = 3 - f - t
    wrong = set(SIM.wrong_answers(state, random.Random(0), 100))
    # Disk 1 the wrong way round, with its consistent state.
    assert HanoiAnswer(move=(1, f, other), next_state=move_top(state.pegs, f, other)) in wrong
    # The right move with the disk put on the wrong peg, or the state not updated.
    assert HanoiAnswer(move=right.move, next_state=move_top(state.pegs, f, other)) in wrong
    assert HanoiAnswer(move=right.move, next_state=state.pegs) in wrong
    # The right state with a garbled move.
    assert HanoiAnswer(move=(1, t, f), next_state=right.next_state) in wrong
    assert SIM.wrong_answers(state, random.Random(0), 0) == []


@pytest.mark.parametrize("seed", range(60))
def test_render_malformed_is_always_a_red_flag(seed: int) -> None:
    rng = random.Random(seed)
    disks = 1 + seed % 10
    task = Hanoi(disks)
    state = random_reachable(rng, disks)
    for _ in range(10):
        with pytest.raises(RedFlag):
            task.parse(SIM.render_malformed(state, rng))
