"""One error tree: bad input to the library raises a narrow subclass of MakerError (and of
ValueError where the input is a value), never a bare ValueError."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from maker import ConfigError, MakerError, StateError, Tally, backoff_delay, wilson_interval
from maker.core._pricing import Price
from maker.tasks import Arithmetic, Hanoi, PromptTask


def _prompt_state(data: Any) -> Callable[[], object]:
    return lambda: PromptTask([{"system": "", "user": "u"}] * 2).state_from_json(data)


@pytest.mark.parametrize(
    ("call", "kind", "field"),
    [
        (lambda: Tally(k=0), ConfigError, "k"),
        (lambda: Tally(k=2, rule="most"), ConfigError, "rule"),  # type: ignore[arg-type]
        (lambda: Price(1.0, 2.0).cost(-1, 0), ConfigError, "tokens"),
        (lambda: Arithmetic().state_from_json({"value": 1}), StateError, None),
        (lambda: Arithmetic().state_from_json({"value": "x", "index": 0}), StateError, None),
        (_prompt_state(True), StateError, None),
        (_prompt_state(3), StateError, None),
        (lambda: Hanoi(3).state_from_json({"pegs": [[1], [], []]}), StateError, None),
        (lambda: Hanoi(3).state_from_json({"pegs": [1], "previous_move": None}), StateError, None),
        (
            lambda: backoff_delay(0, base_s=1, cap_s=1, retry_after_s=None, draw=0.5),
            ConfigError,
            "attempt",
        ),
        (lambda: wilson_interval(5, 3), ConfigError, "successes"),
    ],
)
def test_bad_input_raises_a_narrow_maker_error(
    call: Callable[[], object], kind: type[MakerError], field: str | None
) -> None:
    with pytest.raises(kind) as info:
        call()
    assert type(info.value) is kind
    assert isinstance(info.value, MakerError)
    assert isinstance(info.value, ValueError)  # callers catching ValueError keep working
    if field is not None:
        assert isinstance(info.value, ConfigError)
        assert info.value.field == field
