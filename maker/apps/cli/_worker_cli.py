"""``maker submit`` and ``maker worker``: runs queued in a PostgreSQL database, claimed and run
by any number of worker processes (see :mod:`maker.apps.worker`)."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import anyio
import click

from events import is_database_url, redact_url

from ...clients import close_client
from ...core._pricing import PriceTable
from ...engine._scheduler import Limits, Scheduler
from .._http import cancelled_on_sigterm
from .._options import (
    allow_plugin_option,
    build_task,
    prices_option,
    rate_limit_options,
    task_argument,
    task_options,
)
from .._settings import RunSettings, UsageProblem, make_model_client, model_options, run_options

__all__ = ["submit_command", "worker_command"]


def _database(url: str) -> str:
    if not is_database_url(url):
        raise UsageProblem(
            f"--log must be a postgresql:// URL: workers share a database, not a file ({url})"
        )
    return url


_queue_log_option = click.option(
    "--log",
    required=True,
    metavar="URL",
    help="The PostgreSQL database (postgresql://...) that holds the queue and the log.",
)


@click.command("submit")
@task_argument
@_queue_log_option
@task_options
@run_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def submit_command(
    task: str | None,
    log: str,
    disks: int | None,
    steps: int | None,
    digits: int | None,
    task_seed: int | None,
    task_ref: str | None,
    params_json: str | None,
    task_file: Path | None,
    k: int | None,
    target: float | None,
    adaptive: bool,
    prior_p: float,
    k_max: int,
    speculative: int,
    pipeline: int | None,
    hedge: float | None,
    hedge_min_s: float | None,
    matcher: str | None,
    max_samples: int,
    seed: int,
    as_json: bool,
) -> None:
    """Queue a run for the workers of a database; print its run id.

    TASK and its options, and the run options, are those of 'maker run'; the model is the
    worker's ('maker worker --model ...'), and so is the trust a task plugin needs.
    """
    from ..worker import QueuedRun, RunQueue

    url = _database(log)
    the_task = build_task(
        task,
        disks=disks,
        steps=steps,
        digits=digits,
        task_seed=task_seed,
        task_ref=task_ref,
        params_json=params_json,
        task_file=task_file,
    )
    settings = RunSettings(
        k=k,
        target=target,
        adaptive=adaptive,
        prior_p=prior_p,
        k_max=k_max,
        speculative=speculative,
        pipeline=pipeline,
        hedge=hedge,
        hedge_min_s=hedge_min_s,
        max_samples=max_samples,
        seed=seed,
        matcher=matcher,
    )
    settings.check(the_task)
    run = QueuedRun(
        run_id=uuid.uuid4().hex,
        task=the_task.name,
        task_params=the_task.params(),
        settings=settings,
    )

    async def go() -> int:
        async with RunQueue(url, create=True) as queue:
            return await queue.submit(run)

    job = anyio.run(go)
    if as_json:
        out = {"run_id": run.run_id, "job_id": job, "log": redact_url(url)}
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        sys.stdout.write(run.run_id + "\n")


@click.command("worker")
@_queue_log_option
@click.option(
    "--concurrency",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Runs this worker runs at once.",
)
@click.option(
    "--lease",
    "lease_s",
    type=click.FloatRange(0.1),
    default=10.0,
    show_default=True,
    help="Seconds a claim lasts unless renewed (renewed three times a lease): how long a dead "
    "worker's runs wait before another worker resumes them.",
)
@click.option(
    "--drain",
    is_flag=True,
    help="Exit once the queue holds no run, waiting or held by any worker.",
)
@model_options
@rate_limit_options
@prices_option
@allow_plugin_option
def worker_command(
    log: str,
    concurrency: int,
    lease_s: float,
    drain: bool,
    model: str,
    base_url: str | None,
    preset: str | None,
    p: float | None,
    latency_ms: float | None,
    rpm: int | None,
    tpm: int | None,
    timeout: float,
    prices: Path | None,
    allow_plugins: tuple[str, ...],
) -> None:
    """Claim queued runs of a database and run them; resume those a dead worker held.

    Prints a line when it starts and one per run it finishes. Stopped by Ctrl-C or SIGTERM, it
    cancels its runs, puts them back in the queue for another worker to resume at once, and
    exits (0 after SIGTERM, 130 after Ctrl-C). Killed (kill -9, a lost machine), its runs go on
    in another worker once their lease runs out.
    """
    from ..worker import WorkerConfig, work

    url = _database(log)
    client, model_p = make_model_client(model, base_url, preset, p, latency_ms, timeout)
    config = WorkerConfig(
        url=url,
        client=client,
        model=model,
        model_p=model_p,
        # One scheduler for every run of the worker: the model's limits are the worker's.
        scheduler=Scheduler(Limits(rpm=rpm, tpm=tpm, timeout_s=timeout)),
        prices=PriceTable.load(prices) if prices is not None else PriceTable(),
        concurrency=concurrency,
        lease_s=lease_s,
        allow_plugins=allow_plugins,
        drain=drain,
    )

    async def go() -> None:
        try:
            # SIGTERM (a supervisor's stop) leaves as Ctrl-C does: the runs in flight record
            # that they were cancelled and go back in the queue, and the worker exits 0.
            with cancelled_on_sigterm() as stopping:
                await work(config)
            if stopping.cancel_called:
                _say_stopped(config.owner)
        finally:
            await close_client(client)

    try:
        anyio.run(go)
    except KeyboardInterrupt:
        _say_stopped(config.owner)
        raise SystemExit(130) from None


def _say_stopped(owner: object) -> None:
    sys.stdout.write(f"worker {owner} stopped; its unfinished runs are back in the queue\n")
    sys.stdout.flush()
