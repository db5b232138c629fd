"""Red-flag rules and the policy's validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maker import Completion, ConfigError, Policy, RedFlagRules


def completion(text: str = "x", finish: str = "stop", tokens: int = 10) -> Completion:
    return Completion(
        text=text, finish_reason=finish, input_tokens=1, output_tokens=tokens, model="m"
    )


@given(
    finish=st.sampled_from(["stop", "length", "max_tokens", "end_turn", "tool_use", ""]),
    tokens=st.integers(min_value=0, max_value=5000),
    limit=st.one_of(st.none(), st.integers(min_value=1, max_value=4000)),
    flag_truncated=st.booleans(),
)
def test_rules_flag_exactly_truncated_then_overlong(
    finish: str, tokens: int, limit: int | None, flag_truncated: bool
) -> None:
    rules = RedFlagRules(max_output_tokens=limit, flag_truncated=flag_truncated)
    flag = rules.check(completion(finish=finish, tokens=tokens))
    truncated = flag_truncated and finish in ("length", "max_tokens")
    too_long = limit is not None and tokens > limit
    if truncated:
        assert flag is not None
        assert flag.reason == "truncated"
    elif too_long:
        assert flag is not None
        assert flag.reason == "too_long"
        assert str(limit) in flag.detail
    else:
        assert flag is None


def test_the_paper_threshold_is_750_tokens() -> None:
    rules = RedFlagRules()
    assert rules.check(completion(tokens=750)) is None
    flag = rules.check(completion(tokens=751))
    assert flag is not None
    assert flag.reason == "too_long"


def test_user_checks_run_in_order_after_the_builtin_rules() -> None:
    seen: list[str] = []

    def first(c: Completion) -> str | None:
        seen.append("first")
        return "has_todo" if "TODO" in c.text else None

    def second(c: Completion) -> str | None:
        seen.append("second")
        return "empty" if not c.text.strip() else None

    rules = RedFlagRules(checks=(first, second))
    flag = rules.check(completion(text="TODO"))
    assert flag is not None
    assert flag.reason == "has_todo"
    assert seen == ["first"]
    flag = rules.check(completion(text="  "))
    assert flag is not None
    assert flag.reason == "empty"
    assert rules.check(completion(text="ok", tokens=900)) is not None  # built-in first
    assert rules.describe()["checks"] == ["first", "second"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"k": 0}, "k"),
        ({"rule": "most"}, "rule"),
        ({"temperature": -0.1}, "temperature"),
        ({"first_temperature": float("nan")}, "first_temperature"),
        ({"max_tokens": 700}, "max_tokens"),
        ({"max_samples_per_step": 2, "k": 3}, "max_samples_per_step"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"speculative": -1}, "speculative"),
    ],
)
def test_invalid_policy_fails_at_once_naming_the_field(
    kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Policy(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_red_flag_rules_validate_their_threshold() -> None:
    with pytest.raises(ConfigError, match="max_output_tokens"):
        RedFlagRules(max_output_tokens=0)


def test_policy_defaults_follow_the_paper() -> None:
    policy = Policy()
    assert (policy.k, policy.rule, policy.first_temperature, policy.temperature) == (
        3, "ahead", 0.0, 0.1,
    )  # fmt: skip
    assert policy.red_flags.max_output_tokens == 750
    assert policy.max_tokens > 750
    assert [policy.temperature_for(i) for i in range(3)] == [0.0, 0.1, 0.1]
    described = policy.describe()
    assert described["red_flags"]["max_output_tokens"] == 750
