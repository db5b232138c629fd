"""Command-line options shared by several commands, defined once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..core._task import Task
from ..tasks import BUILTIN_TASKS, PromptTask, make_task

F = TypeVar("F", bound=Callable[..., Any])


def rate_limit_options(function: F) -> F:
    """``--rpm``, ``--tpm`` and ``--timeout``: the scheduler's limits of a command's model."""
    for option in reversed(_RATE_LIMITS):  # decorators apply bottom-up; keep the help order
        function = option(function)
    return function


_RATE_LIMITS = (
    click.option("--rpm", type=click.IntRange(1), help="Cap on requests per minute."),
    click.option("--tpm", type=click.IntRange(1), help="Cap on tokens per minute."),
    click.option(
        "--timeout",
        type=click.FloatRange(0.0, min_open=True),
        default=120.0,
        show_default=True,
        help="Seconds one model call may take.",
    ),
)


prices_option = click.option(
    "--prices",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="JSON or TOML price overrides: {model: {input: USD/Mtok, output: USD/Mtok}}.",
)
"""``--prices FILE``: overrides of the price table."""


task_argument = click.argument(
    "task",
    # The prompt task takes its prompts as data (MCP vote and calibrate, the library), which
    # options cannot carry.
    type=click.Choice(sorted(name for name in BUILTIN_TASKS if name != PromptTask.name)),
)
"""``TASK``: a built-in task whose parameters are options."""


def task_options(command: F) -> F:
    """``--disks``, ``--steps``, ``--digits`` and ``--task-seed``: what builds a built-in task
    (see :func:`build_task`)."""
    for option in reversed(_TASK_OPTIONS):  # decorators apply bottom-up; keep the help order
        command = option(command)
    return command


_TASK_OPTIONS = (
    click.option(
        "--disks", type=click.IntRange(1, 30), help="hanoi: number of disks (default 10)."
    ),
    click.option("--steps", type=click.IntRange(1), help="arithmetic: number of operations."),
    click.option("--digits", type=click.IntRange(1), help="arithmetic: operand digits."),
    click.option("--task-seed", type=int, help="arithmetic: seed of the operation chain."),
)


def build_task(
    task: str,
    *,
    disks: int | None = None,
    steps: int | None = None,
    digits: int | None = None,
    task_seed: int | None = None,
) -> Task[Any, Any]:
    """The built-in task the task options describe; an option of another task is a usage error."""
    params: dict[str, Any] = {}
    if task == "hanoi":
        _only(task, steps=steps, digits=digits, task_seed=task_seed)
        params["disks"] = 10 if disks is None else disks
    else:
        _only(task, disks=disks)
        for name, value in (("steps", steps), ("digits", digits), ("seed", task_seed)):
            if value is not None:
                params[name] = value
    return make_task(task, params)


def _only(task: str, **given: object) -> None:
    extra = [f"--{name.replace('_', '-')}" for name, value in given.items() if value is not None]
    if extra:
        raise click.UsageError(f"{', '.join(extra)} does not apply to the {task} task")
