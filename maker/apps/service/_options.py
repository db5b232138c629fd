"""The options of ``maker serve`` that guard it: its token, the names it answers for, what
requests may ask for and how much the service holds at once.

``maker mcp --http`` takes some of the same options (:func:`guard_options`) and reads its token
the same way (:func:`token_from`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ...core._errors import ConfigError
from ._guard import ServiceLimits, check_token, is_loopback, new_token, quote, read_token_file

F = TypeVar("F", bound=Callable[..., Any])

_DEFAULTS = ServiceLimits()


def service_options(command: F) -> F:
    """``--token-file``, ``--no-auth``, ``--allow-host``, ``--allow-prompts`` and the limits
    (``--max-steps``, ``--max-samples``, ``--max-cost``, ``--max-running``, ``--max-queued``);
    :func:`limits_from` reads the limits back."""
    return guard_options(*_OPTIONS)(command)


def guard_options(*names: str) -> Callable[[F], F]:
    """The options of :func:`service_options` named (``"--max-steps"``, ...), in that order:
    another server command guarded as the service is."""
    chosen = [_OPTIONS[name] for name in names]

    def apply(command: F) -> F:
        for option in reversed(chosen):  # decorators apply bottom-up; keep the help order
            command = option(command)
        return command

    return apply


def token_from(host: str, token_file: Path | None, no_auth: bool) -> tuple[str | None, bool]:
    """The token requests must send, from ``--token-file``, else ``MAKER_TOKEN``, else a new
    one (None: none, with ``--no-auth``, which only a loopback ``host`` may have), and whether
    it was generated here (and so must be shown once). A bad one is a usage error."""
    from_env = os.environ.get("MAKER_TOKEN")
    if no_auth:
        if token_file is not None or from_env:
            given = "--token-file" if token_file is not None else "MAKER_TOKEN"
            raise click.UsageError(f"--no-auth asks for no token, yet {given} gives one")
        if not is_loopback(host):
            raise click.BadParameter(
                f"--no-auth is allowed only on a loopback --host, not {quote(host)}",
                param_hint="--no-auth",
            )
        return None, False
    try:
        if token_file is not None:
            return read_token_file(token_file), False
        if from_env:
            return check_token(from_env.strip()), False
    except ConfigError as exc:
        hint = "--token-file" if token_file is not None else "MAKER_TOKEN"
        raise click.BadParameter(str(exc).split(": ", 1)[-1], param_hint=hint) from None
    return new_token(), True


_OPTIONS: dict[str, Callable[[Any], Any]] = {
    "--token-file": click.option(
        "--token-file",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="File holding the token requests must send (Authorization: Bearer TOKEN);"
        " else MAKER_TOKEN, else a new one, printed at start.",
    ),
    "--no-auth": click.option(
        "--no-auth",
        is_flag=True,
        help="Ask requests for no token: only with a loopback --host.",
    ),
    "--allow-host": click.option(
        "--allow-host",
        "allow_hosts",
        multiple=True,
        metavar="NAME[:PORT]",
        help="Another Host name requests may use (a proxy's); repeatable.",
    ),
    "--allow-prompts": click.option(
        "--allow-prompts",
        is_flag=True,
        help="Let POST /runs run prompt tasks: prompts of the client's choosing.",
    ),
    "--max-steps": click.option(
        "--max-steps",
        type=click.IntRange(1),
        default=_DEFAULTS.max_steps,
        show_default=True,
        help="Largest step budget of a requested run.",
    ),
    "--max-samples": click.option(
        "--max-samples",
        type=click.IntRange(1),
        default=_DEFAULTS.max_samples,
        show_default=True,
        help="Largest max_samples (and k, speculative) of a request.",
    ),
    "--max-cost": click.option(
        "--max-cost",
        type=click.FloatRange(0.0),
        default=_DEFAULTS.max_cost_usd,
        show_default=True,
        help="USD a run may cost at worst (all samples of all steps), when its price is known.",
    ),
    "--max-running": click.option(
        "--max-running",
        type=click.IntRange(1),
        default=_DEFAULTS.max_running,
        show_default=True,
        help="Runs executing at once.",
    ),
    "--max-queued": click.option(
        "--max-queued",
        type=click.IntRange(0),
        default=_DEFAULTS.max_queued,
        show_default=True,
        help="Accepted runs waiting for a place; beyond them, 429.",
    ),
}


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
