"""Re-execute and resume runs from their logs, through the engine's public API."""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Iterator, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import fields
from typing import Any

import anyio

from events import AnyEvent, CheckedRun, OpenRun, RunStarted, WriterKind, check_run, open_run
from maker.clients import SimConfig, SimulatedModel
from maker.core import Client, Completion, ConfigError, MakerError, Policy, SampleRequest, Task
from maker.engine import (
    Engine,
    EventBatches,
    EventSink,
    Limits,
    Recording,
    RunResult,
    Scheduler,
    VerifyResult,
    is_calibration,
)
from maker.tasks import make_task

from ._fold import summarize_async
from ._readahead import ReadAhead, worth_reading_ahead


async def load_events(path: str | os.PathLike[str], run_id: str | None = None) -> list[AnyEvent]:
    """Every event of one run (the only run when ``run_id`` is None), in seq order.

    All in memory: for small logs and tests. The commands read with :meth:`events.EventLog.read`
    and fold as they go instead.
    """
    async with open_run(path, run_id) as run:
        return [event async for event in run.events]


def task_for(started: RunStarted, *, allow_plugins: Collection[str] = ()) -> Task[Any, Any]:
    """The task a run used, rebuilt from its ``run_started`` event: a built-in one, one an
    installed package registers, or a plugin (``package.module:factory``) that
    ``allow_plugins`` trusts (see :func:`maker.tasks.make_task`).

    A log may come from anyone, and importing the module it names runs that module's code:
    a plugin outside ``allow_plugins`` is refused with :class:`maker.UntrustedPluginError`
    before anything is imported.
    """
    return make_task(started.task, started.task_params, allow_plugins=allow_plugins)


def client_for(started: RunStarted, **options: Any) -> Client:
    """A live client for the model a run used, rebuilt from its ``run_started`` event.

    ``options`` go to the provider's client (base_url, api_key, timeout); keys are never in the
    log, so a provider's key comes from the environment or from here.
    """
    model = started.models[0] if started.models else "sim"
    if model == "sim":
        known = {f.name for f in fields(SimConfig)}
        params = {k: v for k, v in started.model_params.items() if k in known}
        config = SimConfig(**params)
        preset = started.model_params.get("preset")
        if isinstance(preset, str):
            # A preset is recorded by name beside its values; rebuilt by name, the model
            # describes itself as recorded, so a resumed run_started reproduces.
            try:
                named = SimulatedModel(preset=preset)
            except ConfigError:
                named = None
            if named is not None and named.config == config:
                return named
            # The preset's values have changed since the run: rebuild what the run used, under
            # the name it recorded, so its run_started still reproduces.
            renamed = SimulatedModel(config)
            renamed.preset = preset
            return renamed
        return SimulatedModel(config)
    from maker.clients import make_client

    recorded = started.model_params
    for name in ("base_url", "timeout"):
        if name not in options and recorded.get(name) is not None:
            options[name] = recorded[name]
    return make_client(model, **options)


class RecordedModel:
    """Stands in for the recorded model during a verification: same name and settings, and
    no way to reach it (every outcome comes from the log)."""

    def __init__(self, started: RunStarted) -> None:
        self._started = started

    @property
    def model(self) -> str:
        return self._started.models[0] if self._started.models else "sim"

    def describe(self) -> dict[str, Any]:
        return dict(self._started.model_params)

    async def complete(self, request: SampleRequest) -> Completion:
        raise MakerError(f"sample {request.sample_id} is not in the recording")


async def verify_run(
    path: str | os.PathLike[str],
    run_id: str | None = None,
    *,
    task: Task[Any, Any] | None = None,
    policy: Policy | None = None,
    sinks: Sequence[EventSink] = (),
    read_ahead: bool | None = None,
    allow_plugins: Collection[str] = (),
) -> VerifyResult:
    """Re-execute a recorded run and compare it, event for event, with its log.

    ``task`` and ``policy`` default to the ones the log names (a task plugin only when
    ``allow_plugins`` trusts it: see :func:`task_for`); pass changed ones to check that a
    change does not alter behaviour on this run. A log whose integrity check fails is refused
    with :class:`BrokenLogError`, whatever the re-execution found.

    The log is read once, as the re-execution goes, and its integrity (what
    :func:`check_run` checks) is checked in the same pass: memory holds about one step, however
    long the run. ``read_ahead`` has the reading done by a helper process, beside the
    re-execution, with the same results; by default it is, for runs of 50,000 events or more
    when the machine has a core to spare.
    """
    async with open_run(path, run_id) as run, _checked(run, read_ahead) as source:
        recording = Recording.of_run(run.info, _batches(source))
        if task is None:
            task = task_for(recording.started, allow_plugins=allow_plugins)
        scheduler = Scheduler(Limits.from_json(recording.started.limits))
        client = RecordedModel(recording.started)
        async with Engine(log=run.log, client=client, scheduler=scheduler) as engine:
            return await engine.verify(task, recording, policy=policy, sinks=sinks)


async def resume_run(
    path: str | os.PathLike[str],
    run_id: str | None = None,
    *,
    task: Task[Any, Any] | None = None,
    client: Client | None = None,
    policy: Policy | None = None,
    scheduler: Scheduler | None = None,
    sinks: Sequence[EventSink] = (),
    read_ahead: bool | None = None,
    log_writer: WriterKind | None = None,
    allow_plugins: Collection[str] = (),
) -> RunResult:
    """Continue a crashed or cancelled run in its log; report a finished run unchanged.

    A log whose integrity check fails is refused with :class:`BrokenLogError`.

    The task, the live client, the policy and the scheduler's limits default to the ones the
    log records (a task plugin only when ``allow_plugins`` trusts it: see :func:`task_for`);
    a provider's key comes from the environment (it is never in the log). The recorded prefix
    is read from the log as it is re-executed, and a finished run is folded as it is read,
    each checked in the same pass: neither holds the whole run in memory, and nothing is
    appended before the whole recorded run has passed its check. ``read_ahead`` is as for
    :func:`verify_run`; ``log_writer`` is where the continued run's log writer runs (see
    :class:`maker.Engine`).
    """
    async with open_run(path, run_id) as run, _checked(run, read_ahead) as source:
        recording = Recording.of_run(run.info, _batches(source))
        if not recording.resumable:
            return await _finished_result(source)
        if task is None:
            task = task_for(recording.started, allow_plugins=allow_plugins)
        client = client if client is not None else client_for(recording.started)
        if scheduler is None:
            scheduler = Scheduler(Limits.from_json(recording.started.limits))
        engine = Engine(log=path, client=client, scheduler=scheduler, log_writer=log_writer)
        async with engine:
            return await engine.resume(task, recording, policy=policy, sinks=sinks)


@asynccontextmanager
async def _checked(run: OpenRun, read_ahead: bool | None) -> AsyncIterator[CheckedRun | ReadAhead]:
    """The events of ``run``, read in the pass that checks the run's integrity; refused if the
    run holds no chain.

    A broken run is refused with :class:`BrokenLogError` however far its reader got: what
    the body raised (a divergence found before the damage was read, say) gives way to it.
    """
    log, info = run.log, run.info
    if is_calibration(info.started):
        # A broken log is refused as broken all the same. The check reads the whole run with
        # plain sqlite3: on a worker thread, not the event loop's.
        await anyio.to_thread.run_sync(check_run, log.path, info.run_id)
        raise MakerError(
            f"run {info.run_id} is a calibration: its steps are independent samples, "
            "not a chain to replay or resume"
        )
    if read_ahead is None:
        read_ahead = worth_reading_ahead(info.last_seq + 1)
    reader = ReadAhead if read_ahead else CheckedRun
    source = reader(log.path, info.run_id, last_seq=info.last_seq)
    # Opening (which reads the run's head, or starts the helper process), reading, checking what
    # was left unread and closing block: each is done on a worker thread (the reading a batch
    # at a time, see _batches).
    try:
        await anyio.to_thread.run_sync(source.__enter__)
        try:
            yield source
        except Exception:
            # Raises BrokenLogError in place of what was raised, if the run is broken.
            await anyio.to_thread.run_sync(source.finish)
            raise
        await anyio.to_thread.run_sync(source.finish)  # whatever was left unread is checked too
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(source.__exit__, None, None, None)


async def _in_thread(events: Iterator[AnyEvent]) -> AsyncGenerator[AnyEvent, None]:
    """A plain iterator of events, read on a worker thread a batch at a time: its reading
    (SQLite and the checks, or a helper process's pipe) never holds up the event loop."""
    while batch := await anyio.to_thread.run_sync(_batch, events):
        for event in batch:
            yield event


def _batch(events: Iterator[AnyEvent]) -> list[AnyEvent]:
    return list(itertools.islice(events, _BATCH))


def _batches(events: Iterator[AnyEvent]) -> EventBatches:
    """The checked read as a recording reads it: a batch at a time on a worker thread."""
    return EventBatches(functools.partial(_batch, events))


_BATCH = 1024


async def _finished_result(source: CheckedRun | ReadAhead) -> RunResult:
    async with aclosing(_in_thread(source)) as events:
        summary = await summarize_async(events, per_step=False)
    if summary.status not in ("succeeded", "failed", "cancelled"):
        raise ConfigError("run", f"run {summary.run_id} has status {summary.status!r}")
    return RunResult(
        run_id=summary.run_id,
        status=summary.status,  # type: ignore[arg-type]
        steps=summary.steps,
        samples=summary.samples,
        votes=summary.votes,
        red_flags=sum(summary.red_flags.values()),
        red_flags_by_reason=dict(summary.red_flags),
        failures=summary.failures,
        cancelled_samples=summary.cancelled,
        k=summary.k,
        wall_s=summary.wall_s or 0.0,
        reason=summary.reason,
        final_state=summary.final_state,
        max_samples_in_step=summary.max_samples_per_step,
        cost_usd=summary.cost_usd,
        input_tokens=summary.input_tokens,
        output_tokens=summary.output_tokens,
    )
