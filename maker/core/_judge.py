"""The judge of one response: its answer, or the red flag that discards it. Pure, no I/O.

The engine records what the judge found (``sample_received``, then ``red_flagged`` or a vote);
the judging itself depends on nothing but the task, the red-flag rules and the response.
"""

from __future__ import annotations

from typing import Any, TypeVar

from ._client import Completion
from ._errors import RedFlag
from ._redflags import RedFlagRules
from ._task import Task

A = TypeVar("A")


def judge(task: Task[Any, A], rules: RedFlagRules, completion: Completion) -> A | RedFlag:
    """The answer ``completion`` gives, or the :class:`RedFlag` that discards it.

    The rules look first (a truncated or overlong response, a user check), then the task's
    strict parser: a :class:`RedFlag` it raises is a verdict too. Any other exception from the
    parser is a bug in the task and propagates.

    >>> from maker.tasks import Hanoi
    >>> reply = Completion(text="move = [1, 0, 2]", finish_reason="length",
    ...                    input_tokens=10, output_tokens=20, model="sim")
    >>> judge(Hanoi(3), RedFlagRules(), reply).reason
    'truncated'
    """
    flag = rules.check(completion)
    if flag is not None:
        return flag
    try:
        return task.parse(completion.text)
    except RedFlag as exc:
        return exc
