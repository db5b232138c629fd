"""What ``maker run`` is told, defined once for every command that runs or queues runs: the
model options (``--model``, ``--base-url``, ``--preset``, ``--p``, ``--latency-ms``) and the run
options (``--k``, ``--target``, ``--adaptive``, ... ``--seed``), and how they become a client
and a policy.

``maker submit`` takes the run options and ``maker worker`` the model options: a queued run
carries its :class:`RunSettings` as JSON, and the worker that claims it makes the policy with
its own client, exactly as ``maker run`` would have with that client.
"""

from __future__ import annotations

from typing import Any

import click
import msgspec

from ..clients._sim import PRESETS, SimulatedModel, sim_config
from ..core._adaptive import AdaptiveK
from ..core._client import Client
from ..core._errors import ConfigError
from ..core._formulas import k_min
from ..core._matchers import EXACT
from ..core._policy import Hedge, Policy
from ..core._task import Task
from ._options import (
    MATCHER_HELP,
    base_url_option,
    hedge_from,
    latency_ms_option,
    matcher_option,
    model_option,
    pipeline_options,
    pipelining_for,
    stacked,
)

__all__ = [
    "RunSettings",
    "UsageProblem",
    "make_model_client",
    "model_options",
    "run_options",
]


class UsageProblem(Exception):
    """Bad input the user can fix; printed as one line, exit 2."""


_probability = click.FloatRange(0.0, 1.0)

model_options = stacked(
    model_option("sim, openai:NAME, anthropic:NAME or ollama:NAME."),
    base_url_option,
    click.option(
        "--preset",
        type=click.Choice(sorted(PRESETS)),
        help="Simulated model preset (default paper).",
    ),
    click.option(
        "--p",
        "p",
        type=_probability,
        help="sim: P(a valid answer is correct); other models: the assumed p for --target.",
    ),
    latency_ms_option,
)
"""``--model``, ``--base-url``, ``--preset``, ``--p`` and ``--latency-ms``: the model a command
runs its steps with (see :func:`make_model_client`)."""

run_options = stacked(
    click.option("--k", "k", type=click.IntRange(1), help="Vote margin (default 3)."),
    click.option(
        "--target",
        type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
        help="Choose k_min for this probability that the whole run succeeds.",
    ),
    click.option(
        "--adaptive",
        is_flag=True,
        help="Adapt k to the run's own votes so that --target holds (a Beta posterior over p).",
    ),
    click.option(
        "--prior-p",
        type=click.FloatRange(0.5, 1.0, min_open=True, max_open=True),
        default=0.9,
        show_default=True,
        help="--adaptive: the initial guess of p.",
    ),
    click.option(
        "--k-max",
        type=click.IntRange(1),
        default=25,
        show_default=True,
        help="--adaptive: the largest k it may choose.",
    ),
    click.option(
        "--speculative",
        type=click.IntRange(0),
        default=0,
        show_default=True,
        help="Samples kept in flight beyond those that could still matter.",
    ),
    pipeline_options,
    matcher_option(MATCHER_HELP),
    click.option(
        "--max-samples",
        type=click.IntRange(1),
        default=100,
        show_default=True,
        help="Samples a step may request before the run fails.",
    ),
    click.option("--seed", type=int, default=0, show_default=True, help="Seed of the run."),
)
"""``--k`` ... ``--seed``: how a run votes; their values make a :class:`RunSettings`."""


class RunSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The run options as given, before the model is known: ``pipeline`` and ``hedge`` left out
    (None) are chosen by where the model's calls wait, and ``target`` needs the model's p."""

    k: int | None = None
    target: float | None = None
    adaptive: bool = False
    prior_p: float = 0.9
    k_max: int = 25
    speculative: int = 0
    pipeline: int | None = None
    hedge: float | None = None
    hedge_min_s: float | None = None
    max_samples: int = 100
    seed: int = 0
    matcher: str | None = None

    def check(self, task: Task[Any, Any]) -> None:
        """Refuse what no model could make a policy of (before a run is queued)."""
        if self.k is not None and self.target is not None:
            raise UsageProblem("give --k or --target, not both")
        if self.adaptive:
            if self.target is None:
                raise UsageProblem("--adaptive needs --target, the success probability to keep")
            if self.k is not None:
                raise UsageProblem("--adaptive chooses k itself; leave out --k")
        elif self.target is not None and task.max_steps() is None:
            raise UsageProblem(
                f"--target needs a task with a known number of steps; {task.name} has none"
            )
        if self.hedge is not None:  # left out, the model decides; checked with it
            _hedge(self.hedge, self.hedge_min_s)

    def policy(
        self, task: Task[Any, Any], client: Client, model_p: float | None, model: str
    ) -> Policy:
        """The policy ``maker run`` makes of these options with ``client`` (whose p, when
        known, is ``model_p``)."""
        self.check(task)
        pipeline, hedge = pipelining_for(client, self.pipeline, self.hedge)
        adapt: AdaptiveK | None = None
        k = self.k
        if self.adaptive:
            assert self.target is not None
            adapt = AdaptiveK(target=self.target, prior_p=self.prior_p, k_max=self.k_max)
        elif self.target is not None:
            budget = task.max_steps()
            assert budget is not None
            if model_p is None:
                raise UsageProblem(f"--target needs --p, the per-step success rate of {model}")
            k = k_min(model_p, self.target, budget)
        return Policy(
            k=3 if k is None else k,
            max_samples_per_step=max(self.max_samples, self.k_max) if adapt else self.max_samples,
            speculative=self.speculative,
            pipeline=pipeline,
            hedge=_hedge(hedge, self.hedge_min_s),
            adaptive=adapt,
            matcher=self.matcher or EXACT,
        )


def _hedge(quantile: float, min_s: float | None) -> Hedge | None:
    """The policy's hedge from ``--hedge`` and ``--hedge-min-s``, bad values named as flags."""
    if min_s is not None and not quantile:
        raise UsageProblem("--hedge-min-s needs --hedge, the quantile past which to hedge")
    try:
        return hedge_from(quantile, min_s)
    except ConfigError as exc:  # NaN, which click's ranges let through
        flag = "--" + exc.field.replace("_", "-")
        raise UsageProblem(f"{flag}{str(exc).removeprefix(exc.field)}") from None


def make_model_client(
    model: str,
    base_url: str | None,
    preset: str | None,
    p: float | None,
    latency_ms: float | None,
    timeout: float,
) -> tuple[Client, float | None]:
    """The client the model options name, and the p that --target plans with (None when
    unknown)."""
    if model == "sim":
        if base_url is not None:
            raise UsageProblem("--base-url does not apply to the simulated model")
        sim = SimulatedModel(sim_config(preset, p=p, latency_ms=latency_ms))
        return sim, sim.config.p
    given = [name for name, v in (("--preset", preset), ("--latency-ms", latency_ms)) if v]
    if given:
        raise UsageProblem(f"{', '.join(given)} applies only to the simulated model (--model sim)")
    from ..clients import make_client

    return make_client(model, base_url=base_url, timeout=timeout), p
