"""The options of ``maker serve`` that guard it: its token, the names it answers for, what
requests may ask for and how much the service holds at once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ._guard import ServiceLimits

F = TypeVar("F", bound=Callable[..., Any])

_DEFAULTS = ServiceLimits()


def service_options(command: F) -> F:
    """``--token-file``, ``--no-auth``, ``--allow-host``, ``--allow-prompts`` and the limits
    (``--max-steps``, ``--max-samples``, ``--max-cost``, ``--max-running``, ``--max-queued``);
    :func:`limits_from` reads the limits back."""
    for option in reversed(_OPTIONS):  # decorators apply bottom-up; keep the help order
        command = option(command)
    return command


_OPTIONS = (
    click.option(
        "--token-file",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="File holding the token requests must send (Authorization: Bearer TOKEN);"
        " else MAKER_TOKEN, else a new one, printed at start.",
    ),
    click.option(
        "--no-auth",
        is_flag=True,
        help="Ask requests for no token: only with a loopback --host.",
    ),
    click.option(
        "--allow-host",
        "allow_hosts",
        multiple=True,
        metavar="NAME[:PORT]",
        help="Another Host name requests may use (a proxy's); repeatable.",
    ),
    click.option(
        "--allow-prompts",
        is_flag=True,
        help="Let POST /runs run prompt tasks: prompts of the client's choosing.",
    ),
    click.option(
        "--max-steps",
        type=click.IntRange(1),
        default=_DEFAULTS.max_steps,
        show_default=True,
        help="Largest step budget of a requested run.",
    ),
    click.option(
        "--max-samples",
        type=click.IntRange(1),
        default=_DEFAULTS.max_samples,
        show_default=True,
        help="Largest max_samples (and k, speculative) of a request.",
    ),
    click.option(
        "--max-cost",
        type=click.FloatRange(0.0),
        default=_DEFAULTS.max_cost_usd,
        show_default=True,
        help="USD a run may cost at worst (all samples of all steps), when its price is known.",
    ),
    click.option(
        "--max-running",
        type=click.IntRange(1),
        default=_DEFAULTS.max_running,
        show_default=True,
        help="Runs executing at once.",
    ),
    click.option(
        "--max-queued",
        type=click.IntRange(0),
        default=_DEFAULTS.max_queued,
        show_default=True,
        help="Accepted runs waiting for a place; beyond them, 429.",
    ),
)


def limits_from(
    *, max_steps: int, max_samples: int, max_cost: float, max_running: int, max_queued: int
) -> ServiceLimits:
    """The :class:`ServiceLimits` the options give."""
    return ServiceLimits(
        max_steps=max_steps,
        max_samples=max_samples,
        max_cost_usd=max_cost,
        max_running=max_running,
        max_queued=max_queued,
    )
