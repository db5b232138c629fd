"""Red-flag rules: which responses are discarded before they vote. Pure, no I/O.

A flagged response is never repaired and never counts. The paper flags responses over 750
output tokens (cut off at the cap) and any the strict parser rejects; users add their own checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._client import Completion
from ._errors import ConfigError, RedFlag
from ._serialise import fields_json

RedFlagCheck = Callable[[Completion], str | None]
"""A user check: return a reason to discard the response, or None to keep it."""

TRUNCATED_REASONS = frozenset({"length", "max_tokens"})


@dataclass(frozen=True, kw_only=True)
class RedFlagRules:
    """Which responses to discard.

    - ``max_output_tokens``: a response with more output tokens is flagged ``too_long``
      (None disables the rule);
    - ``flag_truncated``: a response cut off at the cap (finish reason ``length`` or
      ``max_tokens``) is flagged ``truncated``;
    - ``checks``: user predicates, run in order; each returns a reason or None.

    Parse failures are always flagged, as ``malformed`` unless the parser names another reason.
    """

    max_output_tokens: int | None = 750
    flag_truncated: bool = True
    checks: tuple[RedFlagCheck, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.max_output_tokens is not None and self.max_output_tokens < 1:
            raise ConfigError(
                "red_flags.max_output_tokens", f"must be positive, got {self.max_output_tokens}"
            )

    def describe(self) -> dict[str, Any]:
        """The rules as JSON, for ``run_started``: the fields, a user check (code) by its name."""
        return fields_json(
            self, values={"checks": [getattr(c, "__name__", repr(c)) for c in self.checks]}
        )

    def check(self, completion: Completion) -> RedFlag | None:
        """The red flag a completion raises before parsing, or None."""
        if self.flag_truncated and completion.finish_reason in TRUNCATED_REASONS:
            return RedFlag("truncated", f"finish_reason={completion.finish_reason}")
        if self.max_output_tokens is not None and completion.output_tokens > self.max_output_tokens:
            return RedFlag(
                "too_long", f"{completion.output_tokens} > {self.max_output_tokens} output tokens"
            )
        for rule in self.checks:
            reason = rule(completion)
            if reason:
                return RedFlag(reason)
        return None
