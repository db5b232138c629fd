"""Command-line options shared by several commands, defined once."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from events import is_database_url

from ..core._errors import ConfigError
from ..core._matchers import matcher_spec
from ..core._policy import Hedge, Policy
from ..core._task import Task
from ..tasks import BUILTIN_TASKS, PromptTask, TaskFile, load_task_file, make_task

F = TypeVar("F", bound=Callable[..., Any])


def stacked(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """One decorator applying ``decorators`` so that ``--help`` lists them in the order given
    (decorators apply bottom-up)."""

    def apply(command: F) -> F:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


# -- the model and its scheduler ---------------------------------------------------------------


def model_option(help: str) -> Callable[[F], F]:
    """``--model SPEC``, the simulated model unless given: the one model of a command that runs
    tasks (``maker run``, ``maker serve``); ``help`` says what the model is for."""
    return click.option("--model", default="sim", show_default=True, help=help)


base_url_option = click.option(
    "--base-url",
    help="Server root: http://HOST:PORT/v1 for openai, http://HOST:PORT for anthropic and ollama.",
)
"""``--base-url URL``: where the provider model of ``--model`` is served."""

latency_ms_option = click.option(
    "--latency-ms", type=click.FloatRange(0.0), help="Simulated model: median latency."
)
"""``--latency-ms MS``: the simulated model's median latency, for a command whose model may also
be a provider's."""

concurrency_option = click.option(
    "--concurrency", type=click.IntRange(1), help="Cap on requests in flight."
)
"""``--concurrency N``: the scheduler's cap on a command's model calls in flight (none unless
given)."""

rate_limit_options = stacked(
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
"""``--rpm``, ``--tpm`` and ``--timeout``: the scheduler's limits of a command's model."""


prices_option = click.option(
    "--prices",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="JSON or TOML price overrides: {model: {input: USD/Mtok, output: USD/Mtok}}.",
)
"""``--prices FILE``: overrides of the price table."""


# -- pipelining and hedging -------------------------------------------------------------------

_POLICY = Policy()
_HEDGE = Hedge()

DEFAULT_PIPELINE = _POLICY.pipeline
"""The pipeline depth a run has unless told: :class:`Policy`'s, never restated."""

DEFAULT_HEDGE_QUANTILE = 0.0 if _POLICY.hedge is None else _POLICY.hedge.quantile
"""The hedging quantile a run has unless told (0: off): :class:`Policy`'s."""


def hedge_from(quantile: float | None, min_s: float | None = None) -> Hedge | None:
    """The :class:`Hedge` that a quantile and a floor describe, as ``maker run --hedge Q
    --hedge-min-s S``, the service's ``hedge`` and ``hedge_min_s`` and the MCP ``run`` tool's
    give them: None (no hedging) when ``quantile`` is 0 or None, else ``Hedge(quantile=...)``
    with ``min_s`` when given and Hedge's other fields at their defaults. A bad value raises
    :class:`ConfigError` naming the field (``hedge``, ``hedge_min_s``).

    >>> hedge_from(0) is None, hedge_from(0.9).quantile, hedge_from(0.9, 0.5).min_s
    (True, 0.9, 0.5)
    >>> hedge_from(None, 0.5)
    Traceback (most recent call last):
    ...
    maker.core._errors.ConfigError: hedge_min_s: applies only with hedge (a quantile in (0, 1))
    """
    if min_s is not None and not (math.isfinite(min_s) and min_s >= 0.0):
        raise ConfigError("hedge_min_s", f"must be a number of seconds >= 0, got {min_s}")
    if not quantile:  # 0 or None; NaN is truthy, and refused below
        if min_s is not None:
            raise ConfigError("hedge_min_s", "applies only with hedge (a quantile in (0, 1))")
        return None
    if not (math.isfinite(quantile) and 0.0 < quantile < 1.0):
        raise ConfigError("hedge", f"must be 0 (off) or a quantile in (0, 1), got {quantile}")
    return Hedge(quantile=float(quantile), min_s=_HEDGE.min_s if min_s is None else float(min_s))


pipeline_option = click.option(
    "--pipeline",
    type=click.IntRange(0),
    default=DEFAULT_PIPELINE,
    show_default=True,
    metavar="DEPTH",
    help="Steps voted ahead of the oldest undecided one, each from the state its "
    "predecessor's leading answer implies (0: off).",
)
"""``--pipeline DEPTH``: the policy's ``pipeline``, its default the policy's."""

hedge_option = click.option(
    "--hedge",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    default=DEFAULT_HEDGE_QUANTILE,
    show_default=True,
    metavar="QUANTILE",
    help="Send one more sample beside one in flight longer than this quantile of the "
    "run's latencies (0: off).",
)
"""``--hedge QUANTILE``: the policy's ``hedge`` (see :func:`hedge_from`), its default the
policy's."""

AUTO_PIPELINE = 4
"""The depth ``maker run`` pipelines with unless told, when its model waits for answers."""
AUTO_HEDGE_QUANTILE = 0.95
"""The quantile ``maker run`` hedges at unless told, when its model waits for answers."""


def pipelining_for(client: object, pipeline: int | None, hedge: float | None) -> tuple[int, float]:
    """``maker run``'s depth and hedge quantile: as given, or, left out, on where calls wait.

    A model that waits for its answers (a provider, the simulated model with latency) gets
    :data:`AUTO_PIPELINE` and :data:`AUTO_HEDGE_QUANTILE`: on the latency benchmark they cut the
    wall time well below a step at a time for a few per cent more samples. One that answers at
    once (the simulated model at zero latency) gains nothing from either, and votes one step at
    a time. The run records what it used.

    >>> from maker import SimConfig, SimulatedModel
    >>> pipelining_for(SimulatedModel(), None, None)
    (0, 0.0)
    >>> pipelining_for(SimulatedModel(SimConfig(latency_ms=20)), None, None)
    (4, 0.95)
    >>> pipelining_for(SimulatedModel(SimConfig(latency_ms=20)), 0, None)
    (0, 0.95)
    """
    waits = not getattr(client, "in_process", False)
    if pipeline is None:
        pipeline = AUTO_PIPELINE if waits else 0
    if hedge is None:
        hedge = AUTO_HEDGE_QUANTILE if waits else 0.0
    return pipeline, hedge


pipeline_options = stacked(
    click.option(
        "--pipeline",
        type=click.IntRange(0),
        default=None,
        metavar="DEPTH",
        help="Steps voted ahead of the oldest undecided one, each from the state its "
        "predecessor's leading answer implies (0: off).  [default: "
        f"{AUTO_PIPELINE} for a model that waits for its answers, 0 for one that answers "
        "at once]",
    ),
    click.option(
        "--hedge",
        type=click.FloatRange(0.0, 1.0, max_open=True),
        default=None,
        metavar="QUANTILE",
        help="Send one more sample beside one in flight longer than this quantile of the "
        f"run's latencies (0: off).  [default: {AUTO_HEDGE_QUANTILE} for a model that waits "
        "for its answers, 0 for one that answers at once]",
    ),
    click.option(
        "--hedge-min-s",
        type=click.FloatRange(0.0),
        metavar="SECONDS",
        help=f"--hedge: the least in-flight time that is hedged.  [default: {_HEDGE.min_s}]",
    ),
)
"""``--pipeline DEPTH``, ``--hedge QUANTILE`` and ``--hedge-min-s SECONDS``: how ``maker run``
overlaps steps and hedges stragglers; left out, on where calls wait (see
:func:`pipelining_for`), and made into a policy's ``pipeline`` and ``hedge`` with
:func:`hedge_from`."""


# -- matchers ------------------------------------------------------------------------------------


def _matcher(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A spec's canonical form, or one line saying what is wrong with it."""
    if value is None:
        return None
    try:
        return matcher_spec(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc).removeprefix(f"{exc.field}: ")) from None


def matcher_option(help: str) -> Callable[[F], F]:
    """``--matcher SPEC``: which answers vote together (see :class:`maker.Matcher`), checked
    when the command line is read; ``help`` says for what."""
    return click.option("--matcher", metavar="SPEC", callback=_matcher, help=help)


MATCHER_HELP = (
    "Answers that agree in meaning vote together: text, case, unicode, space, number[:rel=R,"
    "abs=A], json[:sets=/PATH;...], python[:path=/PTR], embedding[:threshold=T]; join parts "
    "with + (default exact: canonical JSON)."
)
"""The help of ``maker run --matcher``."""


# -- servers and logs --------------------------------------------------------------------------


class LogTarget(click.Path):
    """A log: a file's path (a :class:`~pathlib.Path`, checked as ``click.Path`` checks it), or
    a ``postgresql://`` URL, handed on as the string it is (a path would fold its ``//``)."""

    name = "log"

    def __init__(self) -> None:
        super().__init__(dir_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if is_database_url(value):
            return value
        return super().convert(value, param, ctx)


def log_option(help: str) -> Callable[[F], F]:
    """``--log FILE``, required: the event log a command appends its runs to (a SQLite file or
    a ``postgresql://`` URL); ``help`` says which runs."""
    return click.option("--log", type=LogTarget(), required=True, help=help)


def listen_options(port: int) -> Callable[[F], F]:
    """``--host`` (the loopback interface unless given) and ``--port`` (``port`` unless given):
    where a server command listens."""
    return stacked(
        click.option(
            "--host", default="127.0.0.1", show_default=True, help="Interface to listen on."
        ),
        click.option(
            "--port",
            type=click.IntRange(0, 65535),
            default=port,
            show_default=True,
            help="0: any free.",
        ),
    )


log_run_arguments = stacked(
    click.argument("file", type=LogTarget()),
    click.option("--run", "run_id", help="Run id, or a unique prefix; optional for one-run logs."),
)
"""``FILE`` and ``--run ID``: the event log a command reads (a file or a ``postgresql://`` URL),
and which of its runs."""


# -- tasks -----------------------------------------------------------------------------------

task_argument = click.argument(
    "task",
    required=False,
    # The prompt task takes its prompts as data (MCP vote and calibrate, the library), which
    # options cannot carry.
    type=click.Choice(
        sorted(name for name in BUILTIN_TASKS if name not in (PromptTask.name, TaskFile.name))
    ),
)
"""``[TASK]``: a built-in task whose parameters are options; or ``--task`` names one."""

task_options = stacked(
    click.option(
        "--disks", type=click.IntRange(1, 30), help="hanoi: number of disks (default 10)."
    ),
    click.option("--steps", type=click.IntRange(1), help="arithmetic: number of operations."),
    click.option("--digits", type=click.IntRange(1), help="arithmetic: operand digits."),
    click.option(
        "--task-seed",
        type=int,
        help="arithmetic: seed of the operation chain; sort, toposort: of the items, the graph.",
    ),
    click.option(
        "--task",
        "task_ref",
        metavar="REF",
        help="Instead of TASK, a task of one's own: package.module:factory (imported from "
        "PYTHONPATH, the installed packages or the working directory), or a name an installed "
        "package registers (entry points 'maker.tasks'); a built-in name works too.",
    ),
    click.option(
        "--params",
        "params_json",
        metavar="JSON",
        help="--task: the factory's keyword arguments, a JSON object.",
    ),
    click.option(
        "--task-file",
        "task_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Instead of TASK, a TOML task file (prompt, parse, update a JSON state); the log "
        "records its content, so it is not needed to replay.",
    ),
)
"""``--disks``, ``--steps``, ``--digits`` and ``--task-seed`` (a built-in ``TASK``'s), and
``--task REF`` with ``--params JSON`` (any task :func:`maker.tasks.make_task` resolves), and
``--task-file FILE`` (:func:`maker.tasks.load_task_file`): what builds the task (see
:func:`build_task`)."""

allow_plugin_option = click.option(
    "--allow-plugin",
    "allow_plugins",
    multiple=True,
    metavar="REF",
    envvar="MAKER_ALLOW_PLUGINS",
    show_envvar=True,
    help="Trust this task plugin (package.module:factory, a module, or a package) when a log "
    "or a request names it: importing it runs its code. Repeatable.",
)
"""``--allow-plugin REF``: the task plugins a command may import when data names them (a log's
``run_started``, a request); see :func:`maker.tasks.plugin_allowed`. ``MAKER_ALLOW_PLUGINS``
gives them too, separated by spaces."""


def build_task(
    task: str | None,
    *,
    disks: int | None = None,
    steps: int | None = None,
    digits: int | None = None,
    task_seed: int | None = None,
    task_ref: str | None = None,
    params_json: str | None = None,
    task_file: Path | None = None,
) -> Task[Any, Any]:
    """The task the task options describe: a built-in ``TASK`` from its options, ``--task``
    with ``--params``, or ``--task-file``. An option of another task is a usage error."""
    if task_file is not None:
        given = [name for name, value in (("TASK", task), ("--task", task_ref)) if value]
        if given:
            raise click.UsageError(f"give --task-file or {given[0]}, not both")
        _only(
            "--task-file",
            disks=disks,
            steps=steps,
            digits=digits,
            task_seed=task_seed,
            params=params_json,
        )
        return load_task_file(task_file)
    if task_ref is not None:
        if task is not None:
            raise click.UsageError(f"give TASK or --task, not both ({task}, {task_ref})")
        _only("--task", disks=disks, steps=steps, digits=digits, task_seed=task_seed)
        return make_task(task_ref, _params(params_json))
    if task is None:
        raise click.UsageError(
            "give a TASK (hanoi, arithmetic), --task package.module:factory or --task-file FILE"
        )
    if params_json is not None:
        raise click.UsageError("--params goes with --task; a built-in TASK takes its options")
    params: dict[str, Any] = {}
    if task == "hanoi":
        _only(f"the {task} task", steps=steps, digits=digits, task_seed=task_seed)
        params["disks"] = 10 if disks is None else disks
    elif task == "arithmetic":
        _only(f"the {task} task", disks=disks)
        for name, value in (("steps", steps), ("digits", digits), ("seed", task_seed)):
            if value is not None:
                params[name] = value
    else:
        # sort and toposort draw their items or graph from --task-seed; given ones, and the
        # sizes, go in --task NAME --params JSON.
        _only(f"the {task} task", disks=disks, steps=steps, digits=digits)
        if task_seed is not None:
            params["seed"] = task_seed
    return make_task(task, params)


def _params(text: str | None) -> dict[str, Any]:
    """``--params``: a JSON object, or a usage error saying what it is instead."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--params") from None
    if not isinstance(value, dict):
        raise click.BadParameter(
            f"must be a JSON object, got {type(value).__name__}", param_hint="--params"
        )
    return value


def _only(what: str, **given: object) -> None:
    extra = [f"--{name.replace('_', '-')}" for name, value in given.items() if value is not None]
    if extra:
        raise click.UsageError(f"{', '.join(extra)} does not apply to {what}")
