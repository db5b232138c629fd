"""A worker: claims queued runs and runs them, N at a time, renewing its lease on each.

A worker that is stopped (SIGTERM, Ctrl-C, or its caller's cancellation) cancels its runs,
each of which records ``run_finished`` "cancelled", puts their jobs back in the queue at once and
exits: another worker resumes them from the log straight away. A worker that dies (``kill -9``,
a lost machine) stops renewing; once a run's lease is older
than the lease time, any other worker's claim takes it, and that worker resumes the run from
the log: the recorded prefix is replayed (every recorded sample served again, none requested
again) and the run goes on live, appending to the same run, with the model its log records
(as ``maker resume`` does), whichever model the claiming worker was given.

The log's own guard makes a late claim harmless: a writer holds a session advisory lock on
each run it writes, so a worker whose lease ran out while it was still writing (a stalled
machine, not a dead one) keeps the run, and the claimant is refused
(:class:`events.RunBusyError`) and puts the run back in the queue for later. Two workers never
interleave a run.
"""

from __future__ import annotations

import dataclasses
import sys
import uuid
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

import anyio

from events import (
    BrokenLogError,
    EventLogError,
    LogWriteError,
    NotALogError,
    RunBusyError,
    RunInfo,
    UnknownRunError,
    open_run,
    redact_url,
)
from events._postgres import StoreUnavailableError

from ...core._client import Client
from ...core._errors import MakerError
from ...core._pricing import PriceTable
from ...engine._engine import Engine
from ...engine._scheduler import Scheduler
from ...tasks import make_task
from .._settings import UsageProblem
from ._queue import QueuedRun, RunQueue

if TYPE_CHECKING:
    from pgqueuer.models import Job

__all__ = ["WorkerConfig", "WorkerStopped", "work"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    """How a worker runs: its database, how many runs at once, its lease, its model."""

    url: str
    client: Client
    model: str
    model_p: float | None = None
    scheduler: Scheduler = dataclasses.field(default_factory=Scheduler)
    prices: PriceTable = dataclasses.field(default_factory=PriceTable)
    concurrency: int = 1
    lease_s: float = 10.0
    allow_plugins: Collection[str] = ()
    drain: bool = False
    """Stop once the queue holds no run, waiting or held (the claims of a dead worker
    included: they are resumed first)."""
    owner: uuid.UUID = dataclasses.field(default_factory=uuid.uuid4)


class WorkerStopped(Exception):
    """Why a run went back in the queue: its worker stopped before the run ended."""

    def __init__(self, owner: uuid.UUID) -> None:
        super().__init__(f"worker {owner} stopped before the run ended; it resumes from the log")


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def work(config: WorkerConfig, say: Callable[[str], None] = _say) -> int:
    """Claim and run queued runs until cancelled (or, with ``drain``, until none is left);
    the number of runs this worker finished."""
    held: dict[Any, Job] = {}
    finished = 0
    wake = anyio.Event()

    def poke() -> None:
        wake.set()

    async with RunQueue(config.url, create=True) as queue:
        listener = await queue.listen(lambda: poke())
        try:
            say(
                f"worker {config.owner} claims runs from {redact_url(config.url)}"
                f" ({config.concurrency} at a time, lease {config.lease_s:g} s)"
            )

            async def renew() -> None:
                # Three beats a lease: one lost beat never loses a run.
                while True:
                    await anyio.sleep(config.lease_s / 3)
                    await queue.renew(list(held.values()))

            async def execute(job: Job, run: QueuedRun) -> None:
                nonlocal finished
                try:
                    if await _one(config, queue, job, run, say):
                        finished += 1
                except anyio.get_cancelled_exc_class():
                    # The worker is stopping (SIGTERM, Ctrl-C, a caller's cancellation): the
                    # run recorded run_finished "cancelled" on its way out, and the job goes
                    # back in the queue at once, for another worker to resume from the log
                    # without waiting for this worker's lease to run out.
                    with anyio.CancelScope(shield=True):
                        await queue.retry(job, 0.0, WorkerStopped(config.owner))
                    say(f"run {run.run_id}: stopped with the worker; back in the queue")
                    raise
                finally:
                    held.pop(job.id, None)
                    poke()

            async with anyio.create_task_group() as tg:
                tg.start_soon(renew)
                while True:
                    wake = anyio.Event()  # armed before the claim: a change during it wakes us
                    free = config.concurrency - len(held)
                    if free > 0:
                        for job, run in await queue.claim(config.owner, free, config.lease_s):
                            held[job.id] = job
                            tg.start_soon(execute, job, run)
                    if config.drain and not held and not await queue.outstanding():
                        break
                    # A dead worker's claims notify nobody: look again within half a lease.
                    with anyio.move_on_after(config.lease_s / 2):
                        await wake.wait()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await listener.close(timeout=5)
    return finished


async def _one(
    config: WorkerConfig, queue: RunQueue, job: Job, run: QueuedRun, say: Callable[[str], None]
) -> bool:
    """Run or resume one claimed run; whether it finished here."""
    try:
        how, status, steps = await _execute(config, run)
    except RunBusyError as exc:
        # Its writer is alive: the lease was late, not lost. Back in the queue, for later.
        say(f"run {run.run_id}: held by another writer; back in the queue")
        await queue.retry(job, config.lease_s, exc)
        return False
    except (StoreUnavailableError, LogWriteError):
        # The database failed: the worker stops, and its lease runs out for another to take.
        raise
    except (BrokenLogError, NotALogError, EventLogError, MakerError, UsageProblem) as exc:
        # This run cannot be run as queued (a broken log, a task this worker may not import):
        # the job stays in the queue as failed, with the reason, for a person to look at.
        message = " ".join(str(exc).split())
        sys.stderr.write(f"maker: run {run.run_id} refused: {message}\n")
        sys.stderr.flush()
        await queue.release(job, "failed", exc)
        return False
    await queue.release(job, "successful")
    say(f"run {run.run_id}: {how}, {status} in {steps} steps")
    return True


async def _recorded(url: str, run_id: str) -> RunInfo | None:
    """What the log holds of ``run_id`` (a previous claimant started it), or None."""
    try:
        async with open_run(url, run_id) as found:
            return found.info
    except UnknownRunError:
        return None
    except NotALogError:
        return None  # no run has been written to the database yet


async def _execute(config: WorkerConfig, run: QueuedRun) -> tuple[str, str, int]:
    """Run, resume or report the run: how (``ran``, ``resumed`` or ``had finished``, when its
    worker finished it but died before it could release the job), its status and steps."""
    task = make_task(run.task, run.task_params, allow_plugins=config.allow_plugins)
    info = await _recorded(config.url, run.run_id)
    if info is not None:
        end = info.finished
        if end is not None and end.seq == info.last_seq and end.status != "cancelled":
            return "had finished", end.status, end.steps
        from replay import resume_run

        # With the model the log records, as 'maker resume' does: the replayed run_started
        # must reproduce, so a worker configured otherwise still continues the run as begun.
        result = await resume_run(
            config.url,
            run.run_id,
            task=task,
            scheduler=config.scheduler,
            allow_plugins=config.allow_plugins,
        )
        return "resumed", result.status, result.steps
    policy = run.settings.policy(task, config.client, config.model_p, config.model)
    async with Engine(
        log=config.url, client=config.client, scheduler=config.scheduler, prices=config.prices
    ) as engine:
        result = await engine.run(task, policy=policy, seed=run.settings.seed, run_id=run.run_id)
    return "ran", result.status, result.steps
