"""The prompt task, its answer parser and the one-response validator."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from events import RedFlagged, StepDecided, canonical_json
from maker import (
    Completion,
    ConfigError,
    Engine,
    Policy,
    RedFlag,
    RedFlagRules,
    SimConfig,
    SimulatedModel,
    calibrate,
)
from maker.tasks import (
    BUILTIN_TASKS,
    AnswerParser,
    Arithmetic,
    Hanoi,
    PromptTask,
    Validation,
    estimate_tokens,
    make_task,
    validate_response,
)
from replay import load_events, verify_run

RESULT = r"result\s*=\s*(-?\d+)"
MOVE = r"move\s*=\s*(\[[^\]]*\])"
MOVE_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": {"type": "integer", "minimum": 0},
    "minItems": 3,
    "maxItems": 3,
}


def flag_of(parser: AnswerParser, text: str) -> RedFlag:
    with pytest.raises(RedFlag) as info:
        parser.parse(text)
    return info.value


def answer_or_flag(parser: AnswerParser, text: str) -> Any:
    """The parsed answer or the red flag; any other exception fails the test."""
    try:
        return parser.parse(text)
    except RedFlag as flag:
        return flag


def arithmetic_prompts(steps: int, digits: int = 4, seed: int = 2) -> list[dict[str, Any]]:
    """The prompts of an arithmetic chain along its correct path, with the right results."""
    task = Arithmetic(steps=steps, digits=digits, seed=seed)
    state = task.initial_state()
    out: list[dict[str, Any]] = []
    while not task.is_done(state):
        prompt, answer = task.prompt(state), task.oracle(state)
        assert answer is not None
        out.append({"system": prompt.system, "user": prompt.user, "answer": str(answer)})
        state = task.apply(state, answer)
    return out


def hanoi_prompts(disks: int) -> list[dict[str, Any]]:
    """The prompts of a Hanoi run along the optimal path, with each move as a JSON list."""
    task = Hanoi(disks)
    state = task.initial_state()
    out: list[dict[str, Any]] = []
    while not task.is_done(state):
        prompt, answer = task.prompt(state), task.oracle(state)
        assert answer is not None
        out.append({"system": prompt.system, "user": prompt.user, "answer": list(answer.move)})
        state = task.apply(state, answer)
    return out


# --- the parser: a pattern -----------------------------------------------------------------------


def test_the_last_match_wins() -> None:
    parser = AnswerParser(RESULT)
    assert parser.parse("result = 1\nno, wait: result = 22\n") == "22"
    assert parser.parse("result=-5") == "-5"


def test_the_named_group_wins_over_other_groups() -> None:
    parser = AnswerParser(r"(move|step)\s*:\s*(?P<answer>[a-z]+)(!?)")
    assert parser.parse("move: left! step: right") == "right"


def test_one_group_or_the_whole_match() -> None:
    assert AnswerParser(r"answer is (\w+)").parse("the answer is yes") == "yes"
    assert AnswerParser(r"\d+").parse("3 then 14") == "14"


def test_the_answer_is_stripped() -> None:
    assert AnswerParser(r"answer:(.*)").parse("answer:   a b  ") == "a b"


def test_no_match_and_empty_matches_are_malformed() -> None:
    flag = flag_of(AnswerParser(RESULT), "The result is 4.")
    assert (flag.reason, flag.detail) == ("malformed", "no match for the answer pattern")
    # \d* matches the empty string at the very end, after every digit run.
    assert flag_of(AnswerParser(r"\d*"), "12 and more").reason == "malformed"
    assert flag_of(AnswerParser(r"answer:(.*)"), "answer:   ").reason == "malformed"
    assert flag_of(AnswerParser(r"x(y)?"), "x").reason == "malformed"


# --- the parser: neither -------------------------------------------------------------------------


def test_without_pattern_or_schema_the_answer_is_the_stripped_text() -> None:
    parser = AnswerParser()
    assert parser.parse("  Paris \n") == "Paris"
    for text in ("", "  \n\t"):
        flag = flag_of(parser, text)
        assert (flag.reason, flag.detail) == ("malformed", "empty response")


# --- the parser: a schema ------------------------------------------------------------------------


def test_a_schema_reads_the_whole_response_as_json() -> None:
    parser = AnswerParser(schema={"type": "object"})
    assert parser.parse(' {"b": 1, "a": [true, null]}\n') == {"b": 1, "a": [True, None]}


def test_a_schema_falls_back_to_the_last_json_fence() -> None:
    parser = AnswerParser(schema={"type": "integer"})
    text = "First try:\n```json\n1\n```\nBetter:\n```\n2\n```\nIn code:\n```python\nx = 3\n```\n"
    assert parser.parse(text) == 2
    assert parser.parse("Answer:\n  ```JSON\n  7\n  ```") == 7


def test_not_json_is_malformed() -> None:
    parser = AnswerParser(schema={})
    flag = flag_of(parser, "The answer is 4.")
    assert flag.reason == "malformed"
    assert "no ```json block" in flag.detail
    flag = flag_of(parser, "So:\n```json\n{move: 1}\n```")
    assert flag.reason == "malformed"
    assert flag.detail.startswith("the last ```json block is not JSON")
    assert flag_of(parser, "   ").detail == "empty response"
    # Not JSON as the standard has it: no NaN, no numbers out of range, no repair.
    for text in ("NaN", "1e400", "[1, 2,]", "{'a': 1}"):
        assert flag_of(parser, text).reason == "malformed", text


def test_schema_failures_name_the_path_and_the_reason() -> None:
    parser = AnswerParser(
        schema={
            "type": "object",
            "properties": {"move": MOVE_SCHEMA},
            "required": ["move"],
            "additionalProperties": False,
        }
    )
    assert parser.parse('{"move": [1, 0, 2]}') == {"move": [1, 0, 2]}
    cases = {
        '{"move": [1, "0", 2]}': "$.move[1]: '0' is not of type 'integer'",
        '{"move": [1, 0]}': "$.move: [1, 0] is too short",
        '{"moves": [1, 0, 2]}': "$: 'move' is a required property",
        '{"move": [1, -1, 2]}': "$.move[1]: -1 is less than the minimum of 0",
        "[1, 0, 2]": "$: [1, 0, 2] is not of type 'object'",
    }
    for text, detail in cases.items():
        flag = flag_of(parser, text)
        assert (flag.reason, flag.detail) == ("schema", detail)


def test_a_schema_reason_is_one_short_line() -> None:
    parser = AnswerParser(schema={"type": "object"})
    flag = flag_of(parser, msgspec.json.encode(["line\nbreak " * 200]).decode())
    assert flag.reason == "schema"
    assert "\n" not in flag.detail
    assert len(flag.detail) <= 300


def test_formats_are_annotations_only() -> None:
    # Asserting formats would make flags depend on the optional packages installed.
    assert AnswerParser(schema={"type": "string", "format": "email"}).parse('"nope"') == "nope"


def test_a_pattern_and_a_schema_parse_the_match_as_json() -> None:
    parser = AnswerParser(MOVE, MOVE_SCHEMA)
    assert parser.parse("move = [9, 9, 9]\nI mean move = [1, 0, 2]") == [1, 0, 2]
    flag = flag_of(parser, "move = [1, 0, x]")
    assert flag.reason == "malformed"
    assert flag.detail.startswith("the answer pattern's match is not JSON")
    assert flag_of(parser, "move = [1, 0]").reason == "schema"
    assert flag_of(parser, "no move").detail == "no match for the answer pattern"


def test_json_answers_vote_by_canonical_json() -> None:
    task = PromptTask([{"system": "", "user": "u"}], schema={"type": "object"})
    a, b = task.parse('{"x": 1, "y": [1, 2]}'), task.parse('{ "y": [1,2], "x": 1 }')
    assert canonical_json(task.answer_to_json(a)) == canonical_json(task.answer_to_json(b))


# --- the parser: configuration -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        ({"pattern": "(unclosed"}, "pattern", "not a valid regex"),
        ({"pattern": r"(\d+)-(\d+)"}, "pattern", "none named 'answer'"),
        ({"pattern": 7}, "pattern", "must be a string"),
        ({"schema": {"type": "nope"}}, "schema", "invalid at $.type"),
        ({"schema": {"minimum": "zero"}}, "schema", "invalid at $.minimum"),
        ({"schema": ["not", "an", "object"]}, "schema", "must be an object"),
        ({"schema": {"enum": {1, 2}}}, "schema", "$.enum is a set"),
        ({"schema": {"const": float("nan")}}, "schema", "not a JSON number"),
        ({"schema": {1: "x"}}, "schema", "key 1"),
    ],
)
def test_bad_parser_settings_name_their_field(
    kwargs: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        AnswerParser(**kwargs)
    assert info.value.field == field
    assert words in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("ref", "words"),
    [
        ("https://example.com/answer.json", "none is fetched"),
        ("other.json#/x", "none is fetched"),
        ("#/$defs/missing", "points at nothing"),
        ("#/properties/n/items/7", "points at nothing"),
    ],
)
def test_a_ref_must_resolve_inside_the_schema_before_any_answer_reaches_it(
    ref: str, words: str
) -> None:
    schema = {"type": "object", "properties": {"n": {"$ref": ref}}, "$defs": {"i": {}}}
    with pytest.raises(ConfigError) as info:
        AnswerParser(schema=schema)
    assert info.value.field == "schema"
    assert words in str(info.value)


def test_local_refs_resolve_with_escapes() -> None:
    schema = {
        "$defs": {"a/b": {"type": "integer"}, "pair": {"prefixItems": [{"type": "string"}]}},
        "type": "object",
        "properties": {"n": {"$ref": "#/$defs/a~1b"}, "s": {"$ref": "#/$defs/pair/prefixItems/0"}},
        "enum": [{"$ref": "not a schema, data"}, {"n": 1, "s": "x"}],
    }
    parser = AnswerParser(schema=schema)
    assert parser.parse('{"n": 1, "s": "x"}') == {"n": 1, "s": "x"}
    with pytest.raises(RedFlag) as info:
        parser.parse('{"n": "one", "s": "x"}')
    assert info.value.reason == "schema"


def test_a_schema_without_jsonschema_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jsonschema", None)
    with pytest.raises(ConfigError) as info:
        AnswerParser(schema={"type": "integer"})
    assert info.value.field == "schema"
    assert "pip install 'maker[schema]'" in str(info.value)
    assert AnswerParser(RESULT).parse("result = 3") == "3"  # no schema, no jsonschema needed


def test_the_parser_is_frozen_described_and_hashable() -> None:
    schema = {"type": "array", "items": {"type": "integer"}}
    parser = AnswerParser(MOVE, schema)
    schema["items"] = {"type": "string"}  # the parser keeps its own copy
    assert parser.describe() == {
        "pattern": MOVE,
        "schema": {"type": "array", "items": {"type": "integer"}},
    }
    assert parser.parse("move = [1, 2, 3]") == [1, 2, 3]
    with pytest.raises(AttributeError):
        parser.pattern = "x"  # type: ignore[misc]
    twin = AnswerParser(MOVE, {"items": {"type": "integer"}, "type": "array"})
    assert twin == parser
    assert hash(twin) == hash(parser)
    assert len({parser, twin, AnswerParser()}) == 2
    assert parser.returns_json
    assert not AnswerParser(RESULT).returns_json


# --- the parser: properties ----------------------------------------------------------------------


@given(
    st.lists(st.integers(-(10**30), 10**30), min_size=1, max_size=8),
    st.sampled_from(["\n", " ", "; then ", "\n\nOn reflection, "]),
)
def test_any_sequence_of_results_parses_to_the_last(numbers: list[int], sep: str) -> None:
    text = sep.join(f"result = {n}" for n in numbers)
    assert AnswerParser(RESULT).parse(text) == str(numbers[-1])


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(JSON, st.sampled_from(["json", "", "JSON"]))
def test_any_json_answer_comes_back_with_the_same_canonical_json(value: Any, tag: str) -> None:
    parser = AnswerParser(schema={})
    encoded = msgspec.json.encode(value).decode()
    key = canonical_json(value)
    assert canonical_json(parser.parse(encoded)) == key
    fenced = f"Let me think.\n```{tag}\n{encoded}\n```\nThat is all."
    assert canonical_json(parser.parse(fenced)) == key


PARSERS = (
    AnswerParser(),
    AnswerParser(RESULT),
    AnswerParser(schema={}),
    AnswerParser(MOVE, MOVE_SCHEMA),
    AnswerParser(schema={"type": "object", "required": ["a"]}),
)


@given(st.text())
def test_parsing_anything_answers_or_red_flags(text: str) -> None:
    for parser in PARSERS:
        outcome = answer_or_flag(parser, text)
        if isinstance(outcome, RedFlag):
            assert outcome.reason in ("malformed", "schema")
        else:
            canonical_json(outcome)  # every answer can be a vote candidate


# --- the task ------------------------------------------------------------------------------------


def test_the_task_walks_its_prompts() -> None:
    task = PromptTask(
        [
            {"system": "s0", "user": "u0", "answer": "a"},
            {"system": "s1", "user": "u1"},
        ],
        pattern=r"=\s*(\w+)",
    )
    assert BUILTIN_TASKS["prompt"] is PromptTask
    assert task.name == "prompt"
    assert task.initial_state() == 0
    assert task.max_steps() == 2
    assert [task.prompt(i).user for i in range(2)] == ["u0", "u1"]
    assert (task.oracle(0), task.oracle(1), task.oracle(2)) == ("a", None, None)
    assert [task.is_done(i) for i in range(3)] == [False, False, True]
    assert task.apply(1, "whatever") == 2
    with pytest.raises(ValueError, match="no prompt"):
        task.prompt(2)
    assert task.parse("x = b") == "b"
    assert task.prompts[1].system == "s1"
    assert "2 prompts" in repr(task)


def test_state_from_json_accepts_only_an_index_in_range() -> None:
    task = PromptTask([{"system": "", "user": "u"}] * 3)
    assert [task.state_from_json(task.state_to_json(i)) for i in range(4)] == [0, 1, 2, 3]
    for bad in (-1, 4, True, "1", 1.0, None):
        with pytest.raises(ValueError):  # noqa: PT011 - the message varies with the value
            task.state_from_json(bad)


@pytest.mark.parametrize(
    ("prompts", "options", "field"),
    [
        ([], {}, "prompts"),
        ("not a list", {}, "prompts"),
        ([{"system": "", "user": "u"}, "u"], {}, "prompts[1]"),
        ([{"system": "", "user": "u", "extra": 1}], {}, "prompts[0].extra"),
        ([{"system": "", "user": "u"}, {"system": ""}], {}, "prompts[1].user"),
        ([{"user": "u"}], {}, "prompts[0].system"),
        ([{"system": 1, "user": "u"}], {}, "prompts[0].system"),
        ([{"system": "", "user": "  "}], {}, "prompts[0].user"),
        ([{"system": "", "user": "u", "answer": 4}], {"pattern": RESULT}, "prompts[0].answer"),
        ([{"system": "", "user": "u", "answer": " 4"}], {"pattern": RESULT}, "prompts[0].answer"),
        ([{"system": "", "user": "u", "answer": ""}], {}, "prompts[0].answer"),
        ([{"system": "", "user": "u", "answer": None}], {"schema": {}}, "prompts[0].answer"),
        ([{"system": "", "user": "u", "answer": (1, 2)}], {"schema": {}}, "prompts[0].answer"),
        ([{"system": "", "user": "u", "answer": 10**5000}], {"schema": {}}, "prompts[0].answer"),
        (
            [{"system": "", "user": "u"}] * 2 + [{"system": "", "user": "u", "answer": [1, 2]}],
            {"pattern": MOVE, "schema": MOVE_SCHEMA},
            "prompts[2].answer",
        ),
        ([{"system": "", "user": "u"}], {"pattern": "("}, "pattern"),
        ([{"system": "", "user": "u"}], {"schema": {"type": 3}}, "schema"),
    ],
)
def test_bad_prompts_name_their_field(prompts: Any, options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        PromptTask(prompts, **options)
    assert info.value.field == field


def test_a_known_answer_that_fails_the_schema_says_why() -> None:
    with pytest.raises(ConfigError, match=r"prompts\[0\]\.answer: \$: \[1, 2\] is too short"):
        PromptTask(
            [{"system": "", "user": "u", "answer": [1, 2]}], pattern=MOVE, schema=MOVE_SCHEMA
        )


def _round_trip(task: PromptTask) -> PromptTask:
    params = msgspec.json.decode(msgspec.json.encode(task.params()))
    rebuilt = make_task("prompt", params)
    assert isinstance(rebuilt, PromptTask)
    return rebuilt


def test_make_task_rebuilds_the_task_from_its_params_as_json() -> None:
    for task in (
        PromptTask(arithmetic_prompts(5), pattern=RESULT),
        PromptTask(hanoi_prompts(3), pattern=MOVE, schema=MOVE_SCHEMA),
        PromptTask([{"system": "", "user": "Capital of France?", "answer": "Paris"}]),
        PromptTask(
            [
                {"system": "s", "user": "u", "answer": {"b": [1.5, None], "a": -0.0}},
                {
                    "system": "s",
                    "user": "v",
                },
            ],
            schema={"type": "object", "properties": {"b": {"type": "array"}}},
        ),
    ):
        rebuilt = _round_trip(task)
        assert rebuilt.params() == task.params()
        assert canonical_json(rebuilt.params()) == canonical_json(task.params())
        assert rebuilt.prompts == task.prompts
        assert rebuilt.parser == task.parser
        for i in range(task.max_steps()):
            assert canonical_json(rebuilt.oracle(i)) == canonical_json(task.oracle(i))


def test_params_are_a_copy() -> None:
    task = PromptTask([{"system": "", "user": "u", "answer": [1, 0, 2]}], schema={})
    task.params()["prompts"][0]["answer"].append(9)
    oracle = task.oracle(0)
    assert oracle == [1, 0, 2]
    oracle.append(9)
    assert task.oracle(0) == [1, 0, 2]


def test_make_task_refuses_unknown_and_missing_params() -> None:
    with pytest.raises(ConfigError) as info:
        make_task("prompt", {})
    assert info.value.field == "prompts"
    with pytest.raises(ConfigError) as info:
        make_task("prompt", {"prompts": [{"system": "", "user": "u"}], "k": 3})
    assert info.value.field == "k"


TEXT = st.text(min_size=1).filter(lambda s: s.strip() == s and bool(s))


@given(
    st.lists(
        st.tuples(st.text(), st.text().filter(lambda s: bool(s.strip())), st.none() | TEXT),
        min_size=1,
        max_size=5,
    )
)
def test_any_text_prompts_round_trip_through_json(
    items: list[tuple[str, str, str | None]],
) -> None:
    prompts: list[dict[str, Any]] = []
    for system, user, answer in items:
        entry: dict[str, Any] = {"system": system, "user": user}
        if answer is not None:
            entry["answer"] = answer
        prompts.append(entry)
    task = PromptTask(prompts)
    assert task.params() == {"prompts": prompts, "pattern": None, "schema": None}
    assert _round_trip(task).params() == task.params()


# --- the task on the engine, calibration and replay ----------------------------------------------


@pytest.mark.anyio
async def test_a_run_on_the_simulated_model_decides_the_known_answers(tmp_path: Path) -> None:
    task = PromptTask(arithmetic_prompts(8), pattern=RESULT)
    path = tmp_path / "run.db"
    async with Engine(log=path, client=SimulatedModel(preset="ideal")) as engine:
        result = await engine.run(task, policy=Policy(k=2), seed=3)
    assert result.ok, result.reason
    assert (result.steps, result.final_state, result.red_flags) == (8, 8, 0)
    events = await load_events(path)
    winners = [e.winner for e in events if isinstance(e, StepDecided)]
    assert winners == [canonical_json(task.oracle(i)) for i in range(8)]
    verified = await verify_run(path)
    assert verified.ok, verified.divergence
    assert verified.checked == len(events)


@pytest.mark.anyio
async def test_a_noisy_run_with_json_answers_replays_exactly(tmp_path: Path) -> None:
    task = PromptTask(hanoi_prompts(3), pattern=MOVE, schema=MOVE_SCHEMA)
    noisy = SimConfig(p=0.85, malformed_rate=0.1, overlong_rate=0.05, hard_fraction=0.0)
    path = tmp_path / "noisy.db"
    async with Engine(log=path, client=SimulatedModel(noisy)) as engine:
        result = await engine.run(task, policy=Policy(k=3, speculative=1), seed=7)
    assert result.ok, result.reason
    events = await load_events(path)
    assert any(isinstance(e, RedFlagged) for e in events)
    winners = [e.winner for e in events if isinstance(e, StepDecided)]
    assert winners == [canonical_json(task.oracle(i)) for i in range(task.max_steps())]
    verified = await verify_run(path)
    assert verified.ok, verified.divergence


@pytest.mark.anyio
async def test_calibration_on_known_answers_measures_p(tmp_path: Path) -> None:
    task = PromptTask(arithmetic_prompts(40, digits=5, seed=9), pattern=RESULT)
    model = SimulatedModel(SimConfig(p=0.9, hard_fraction=0.0, malformed_rate=0.0))
    ideal = SimulatedModel(preset="ideal", name="ideal")
    report = await calibrate(task, [model, ideal], samples=300, seed=1, log=tmp_path / "c.db")
    measured, perfect = report.models
    assert measured.n == 300
    assert measured.p is not None
    assert measured.p_low < 0.9 < measured.p_high
    assert perfect.correct == perfect.valid == perfect.n == 300
    assert report.task == "prompt"
    assert report.task_params == task.params()


# --- validate_response ---------------------------------------------------------------------------


def test_every_flag_is_reported_in_order() -> None:
    def shouting(completion: Completion) -> str | None:
        return "shouting" if completion.text.isupper() else None

    rules = RedFlagRules(max_output_tokens=100, checks=(shouting,))
    checked = validate_response(
        "RESULT IS FOUR",
        parser=AnswerParser(RESULT),
        output_tokens=101,
        finish_reason="max_tokens",
        rules=rules,
    )
    assert not checked.ok
    assert checked.reasons == ("truncated", "too_long", "shouting", "malformed")
    assert [f.detail for f in checked.flags[:2]] == [
        "finish_reason=max_tokens",
        "101 > 100 output tokens",
    ]
    assert checked.answer is None
    assert (checked.output_tokens, checked.tokens_estimated) == (101, False)


def test_a_long_response_still_shows_its_answer() -> None:
    text = "x" * 3001 + "\nresult = 12"
    checked = validate_response(text, parser=AnswerParser(RESULT))
    assert checked.reasons == ("too_long",)
    assert checked.answer == "12"
    assert checked.output_tokens == estimate_tokens(text) == 754
    assert checked.tokens_estimated
    assert checked.flags[0].detail == "754 > 750 output tokens (estimated from the text's length)"


def test_a_clean_response_is_ok_and_serializes() -> None:
    parser = AnswerParser(schema={"type": "object"})
    checked = validate_response('{"a": 1}', parser=parser, output_tokens=5, finish_reason="stop")
    assert checked == Validation(flags=(), answer={"a": 1}, output_tokens=5, tokens_estimated=False)
    assert checked.ok
    assert checked.to_json() == {
        "ok": True,
        "flags": [],
        "answer": {"a": 1},
        "output_tokens": 5,
        "tokens_estimated": False,
    }
    failed = validate_response("[1]", parser=parser, finish_reason="length")
    assert msgspec.json.decode(msgspec.json.encode(failed.to_json())) == {
        "ok": False,
        "flags": [
            {"reason": "truncated", "detail": "finish_reason=length"},
            {"reason": "schema", "detail": "$: [1] is not of type 'object'"},
        ],
        "answer": None,
        "output_tokens": 1,
        "tokens_estimated": True,
    }


def test_rules_that_are_off_do_not_flag() -> None:
    rules = RedFlagRules(max_output_tokens=None, flag_truncated=False)
    checked = validate_response(
        "result = 1",
        parser=AnswerParser(RESULT),
        output_tokens=10**6,
        finish_reason="length",
        rules=rules,
    )
    assert checked.ok


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"output_tokens": -1}, "output_tokens"),
        ({"output_tokens": True}, "output_tokens"),
        ({"output_tokens": 1.5}, "output_tokens"),
        ({"finish_reason": 3}, "finish_reason"),
        ({"parser": "not a parser"}, "parser"),
    ],
)
def test_bad_validation_arguments_name_their_field(kwargs: dict[str, Any], field: str) -> None:
    options: dict[str, Any] = {"parser": AnswerParser()} | kwargs
    with pytest.raises(ConfigError) as info:
        validate_response("text", **options)
    assert info.value.field == field


@given(
    st.text(),
    st.none() | st.integers(0, 2000),
    st.none() | st.sampled_from(["stop", "length", "max_tokens", "end_turn"]),
)
def test_validation_agrees_with_the_engine(
    text: str, output_tokens: int | None, finish_reason: str | None
) -> None:
    """Ok exactly when the engine's rules and parse would let the response vote."""
    parser = AnswerParser(RESULT)
    rules = RedFlagRules()
    checked = validate_response(
        text, parser=parser, output_tokens=output_tokens, finish_reason=finish_reason, rules=rules
    )
    completion = Completion(
        text=text,
        finish_reason=finish_reason or "",
        input_tokens=0,
        output_tokens=checked.output_tokens,
        model="",
    )
    first = rules.check(completion)
    if first is None:
        parsed = answer_or_flag(parser, text)
        first = parsed if isinstance(parsed, RedFlag) else None
    assert checked.ok == (first is None)
    if first is not None:
        assert checked.reasons[0] == first.reason
    assert len(set(checked.reasons)) == len(checked.reasons)
