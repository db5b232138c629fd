"""Command-line options shared by several commands, defined once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .tasks import BUILTIN_TASKS, PromptTask

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
