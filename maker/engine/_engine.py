"""The engine: its lifecycle, the runs it has going, and the entry points that start them.

An engine owns (or borrows) the log, the client, the scheduler and the price table that its
runs share; each run is a :class:`~._run._Run`, the step loop. Runs started in the background
live in the engine's task group, each behind a :class:`RunHandle`.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import anyio
import msgspec
from anyio.abc import TaskGroup

from events import EventLog, Store, WriterKind, open_log

from ..clients._sim import offer_simulator
from ..core._client import Client
from ..core._errors import ConfigError, MakerError, StateError
from ..core._policy import Policy
from ..core._pricing import PriceTable
from ..core._task import Task
from ._handle import RunHandle
from ._recording import Divergence, Recording, _RecordingEnded
from ._results import EngineStatistics, RunResult, VerifyResult
from ._run import EventSink, ReplayAwareSink, _Run
from ._sampling import _Traffic
from ._scheduler import Scheduler

S = TypeVar("S")
A = TypeVar("A")


class Engine:
    """Runs tasks against a model, recording every event in a log.

    >>> import anyio, tempfile, os
    >>> from maker import Engine, Policy, SimulatedModel
    >>> from maker.tasks import Hanoi
    >>> async def main(path: str) -> str:
    ...     async with Engine(log=path, client=SimulatedModel(preset="ideal")) as engine:
    ...         result = await engine.run(Hanoi(3), policy=Policy(k=2), seed=1)
    ...     return f"{result.status} in {result.steps} steps"
    >>> anyio.run(main, os.path.join(tempfile.mkdtemp(), "log.db"))
    'succeeded in 7 steps'

    ``log`` is an open store (an :class:`events.EventLog` or :class:`events.PostgresLog`: the
    caller owns it) or a target the engine opens and closes: a path (a SQLite file, with its
    writer on a thread, or in a process of its own with ``log_writer="process"``: the choice for
    runs at full speed, see :class:`events.EventLog`) or a ``postgresql://`` URL (see
    :func:`events.open_log`).
    ``client`` defaults to the simulated model with the paper's statistics.
    ``clock`` stamps events' ``ts``; it never influences a decision. ``scheduler`` holds the
    per-model limits (concurrency, RPM, TPM, timeouts, breaker); share one between engines to
    share the limits. ``prices`` turns token counts into ``cost_usd`` (Eq 20).

    Leaving ``async with Engine(...)`` waits for every run still going, those of :meth:`start`
    and those awaited with :meth:`run` or :meth:`resume` in other tasks alike, before it closes
    the log; when the block is left by an exception or a cancellation, it cancels them first,
    and each records ``run_finished`` "cancelled" (an awaited :meth:`run` then returns that
    result).
    """

    def __init__(
        self,
        *,
        log: Store | str | os.PathLike[str],
        client: Client | None = None,
        clock: Callable[[], float] = time.time,
        sinks: Sequence[EventSink] = (),
        scheduler: Scheduler | None = None,
        prices: PriceTable | None = None,
        log_writer: WriterKind | None = None,
    ) -> None:
        if not isinstance(log, str | os.PathLike):
            if log_writer is not None:
                raise ConfigError("log_writer", "applies to a log path; an open log has its writer")
            self._log: Store = log
            self._owns_log = False
        else:
            self._log = open_log(log, writer=log_writer)
            self._owns_log = True
        if client is None:
            from ..clients._sim import SimulatedModel

            client = SimulatedModel()
        self.client = client
        self.scheduler = scheduler if scheduler is not None else Scheduler()
        self.prices = prices if prices is not None else PriceTable()
        self._clock = clock
        self._sinks = tuple(sinks)
        self._runs_active = 0
        # Every run going, by identity: its cancel scope, and an event set once it has
        # recorded its end. Leaving the engine waits on them (and cancels them when the body
        # failed), runs awaited in other tasks included, before the log closes.
        self._going: dict[int, tuple[anyio.CancelScope, anyio.Event]] = {}
        self._traffic = _Traffic()
        self._entered = False
        self._tg: TaskGroup | None = None
        self._handles: dict[str, RunHandle] = {}

    @property
    def log(self) -> Store:
        """The event log this engine appends to."""
        return self._log

    async def __aenter__(self) -> Self:
        if self._owns_log:
            await self._log.__aenter__()
        # Runs started with start() live in this group: leaving the engine waits for them, and
        # cancelling the enclosing scope cancels them (each records "cancelled").
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._entered = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._tg is not None:
                tg, self._tg = self._tg, None
                if exc is not None:
                    # The body failed or was cancelled: the background runs end with it, each
                    # recording "cancelled".
                    tg.cancel_scope.cancel()
                # The body's exception is not handed to the group, which would only wrap it in
                # an ExceptionGroup; it propagates as it is once the group has closed.
                await tg.__aexit__(None, None, None)
            # Runs awaited with run()/resume() in other tasks: left alone they would record
            # their end into a closed log. They end as the background runs do: awaited, or
            # cancelled (recording "cancelled") when the body failed.
            while self._going:
                scope, done = next(iter(self._going.values()))
                if exc is not None:
                    scope.cancel()
                await done.wait()
        finally:
            self._entered = False
            if self._owns_log:
                await self._log.__aexit__(exc_type, exc, tb)
            else:
                with anyio.CancelScope(shield=True):
                    await self._log.flush()

    def start(
        self,
        task: Task[S, A],
        *,
        policy: Policy | None = None,
        seed: int = 0,
        run_id: str | None = None,
        sinks: Sequence[EventSink] = (),
        client: Client | None = None,
    ) -> RunHandle:
        """Start a run in the background and return its handle at once.

        The handle gives the run_id, a live event stream (``handle.events()``), the result
        (``await handle.result()``), ``await handle.cancel()`` and statistics. Many runs may
        share one engine, its scheduler and its log; one run's failure or cancellation never
        disturbs another. ``client`` runs this one run on another model than the engine's;
        it still shares the engine's scheduler, so its limits hold across runs.
        """
        self._require_entered()
        assert self._tg is not None
        handle = RunHandle(run_id or uuid.uuid4().hex, self._log)
        run = self._new_run(
            task,
            policy if policy is not None else Policy(),
            seed,
            handle.run_id,
            (*self._sinks, *sinks, handle.publish),
            client=client,
        )
        self._handles[handle.run_id] = handle
        self._tg.start_soon(self._background, run, handle)
        return handle

    def start_resume(
        self,
        task: Task[S, A],
        recording: Recording,
        *,
        policy: Policy | None = None,
        sinks: Sequence[EventSink] = (),
        client: Client | None = None,
    ) -> RunHandle:
        """Continue a recorded run in the background (as :meth:`resume` does) and return its
        handle at once.

        The handle's stream carries the re-executed prefix, then the live run, in seq order.
        The recorded waits and the interruption the run continues from are not re-executed, so
        they are in the log only. The result raises :class:`Divergence`, and nothing is
        appended, if the prefix does not reproduce the log.
        """
        self._require_entered()
        assert self._tg is not None
        if not recording.resumable:
            raise MakerError(f"run {recording.run_id} already finished; there is nothing to resume")
        if recording.run_id in self._handles:
            raise MakerError(f"run {recording.run_id} is already running")
        handle = RunHandle(recording.run_id, self._log)
        run = self._replaying(
            task,
            recording.fresh(),
            policy,
            (*sinks, handle.publish),
            verify_only=False,
            client=client,
        )
        self._handles[handle.run_id] = handle
        self._tg.start_soon(self._background, run, handle, True)
        return handle

    def handle(self, run_id: str) -> RunHandle | None:
        """The handle of a run this engine started and that is still going, or None."""
        return self._handles.get(run_id)

    async def _background(
        self, run: _Run[Any, Any], handle: RunHandle, resuming: bool = False
    ) -> None:
        async def body() -> RunResult:
            if resuming:
                assert run.recording is not None
                await self._attach(run.recording)
            return await self._execute(run)

        try:
            # A bug in task code (the run recorded it) or a resumed prefix that diverged
            # (nothing was appended) goes to the handle's owner without disturbing the other
            # runs in the group; a cancelled run recorded its end and its result.
            await handle.drive(body, lambda: run.result)
        finally:
            # A finished run is served from the log: the engine keeps no memory of it.
            self._handles.pop(handle.run_id, None)

    def statistics(self) -> EngineStatistics:
        """Counters for tests and the CLI."""
        return EngineStatistics(
            runs_active=self._runs_active,
            in_flight=self._traffic.in_flight,
            requested=self._traffic.requested,
            retries=self._traffic.retries,
            appended=self._log.statistics().appended,
        )

    async def run(
        self,
        task: Task[S, A],
        *,
        policy: Policy | None = None,
        seed: int = 0,
        run_id: str | None = None,
        sinks: Sequence[EventSink] = (),
    ) -> RunResult:
        """Run ``task`` to the end and return how it went. Every event goes to the log first.

        If the surrounding scope is cancelled, the run records ``run_finished`` with status
        ``"cancelled"`` before the cancellation propagates. An exception raised by the task's
        code (``prompt``, ``parse``, ``apply``, ...) ends the run as failed, its reason the
        exception's type and message, and is then raised as itself.
        """
        self._require_entered()
        run = self._new_run(
            task,
            policy if policy is not None else Policy(),
            seed,
            run_id or uuid.uuid4().hex,
            (*self._sinks, *sinks),
        )
        return await self._execute(run)

    async def resume(
        self,
        task: Task[S, A],
        recording: Recording,
        *,
        policy: Policy | None = None,
        sinks: Sequence[EventSink] = (),
    ) -> RunResult:
        """Continue a recorded run that crashed or was cancelled, appending to the same run.

        The recorded prefix is re-executed first: every recorded outcome is served again in its
        recorded order (no recorded sample is requested again) and every event must reproduce
        the recorded one, or :class:`Divergence` is raised and nothing is appended. Then a
        ``run_resumed`` event is appended and the run goes on with the live client, its seq
        continuing. ``policy`` defaults to the recorded one (without user red-flag checks).
        """
        self._require_entered()
        if not recording.resumable:
            raise MakerError(f"run {recording.run_id} already finished; there is nothing to resume")
        await self._attach(recording)
        run = self._replaying(task, recording.fresh(), policy, sinks, verify_only=False)
        return await self._execute(run)

    async def _attach(self, recording: Recording) -> None:
        """Hold the run for this engine's log (:class:`events.RunBusyError` if another writer
        has it), and check that nobody continued it since the recording was read."""
        next_seq = await self._log.attach(recording.run_id)
        if next_seq != recording.next_seq:
            raise StateError(
                f"run {recording.run_id} was continued by another writer after it was read "
                f"(the log now ends at seq {next_seq - 1}, the recording at seq "
                f"{recording.next_seq - 1}); resume it again"
            )

    async def verify(
        self,
        task: Task[S, A],
        recording: Recording,
        *,
        policy: Policy | None = None,
        sinks: Sequence[EventSink] = (),
    ) -> VerifyResult:
        """Re-execute a recorded run against its recorded outcomes and compare every event.

        Appends nothing and calls no model. Returns where the first difference is, if any:
        the way to check that a change to the engine, a task, a parser or a policy did not
        change behaviour on old runs. When ``policy`` is given, the recorded policy in
        ``run_started`` is not compared, so the result names the first event whose behaviour
        the new policy changes.
        """
        self._require_entered()
        recording = recording.fresh()  # the caller's recording stays as it was
        run = self._replaying(task, recording, policy, sinks, verify_only=True)
        divergence: Divergence | None = None
        try:
            await run.execute()
        except Divergence as exc:
            divergence = exc
        except _RecordingEnded:
            pass  # a run that never finished: everything recorded was reproduced
        if divergence is not None:
            return VerifyResult(
                recording.run_id, False, run.position, await recording.length(), divergence
            )
        await recording.ready(run.position)
        missing = recording.expected_at(run.position)
        if missing is not None:
            short = Divergence(missing.seq, msgspec.to_builtins(missing), None)
            return VerifyResult(
                recording.run_id, False, run.position, await recording.length(), short
            )
        return VerifyResult(recording.run_id, True, run.position, await recording.length(), None)

    def _replaying(
        self,
        task: Task[S, A],
        recording: Recording,
        policy: Policy | None,
        sinks: Sequence[EventSink],
        *,
        verify_only: bool,
        client: Client | None = None,
    ) -> _Run[S, A]:
        """A run that re-executes ``recording`` under its seed and (by default) its policy.

        Given another policy, a verification leaves run_started's policy out of the
        comparison, to find the first event whose behaviour the new policy changes.
        """
        every = (*self._sinks, *sinks)
        for sink in every:
            if isinstance(sink, ReplayAwareSink):
                sink.replaying(recording.run_id, recording.next_seq - 1)
        return self._new_run(
            task,
            policy if policy is not None else Policy.from_json(recording.started.policy),
            recording.started.seed,
            recording.run_id,
            every,
            recording=recording,
            verify_only=verify_only,
            compare_policy=not (verify_only and policy is not None),
            client=client,
        )

    def _new_run(
        self,
        task: Task[S, A],
        policy: Policy,
        seed: int,
        run_id: str,
        sinks: tuple[EventSink, ...],
        *,
        recording: Recording | None = None,
        verify_only: bool = False,
        compare_policy: bool = True,
        client: Client | None = None,
    ) -> _Run[S, A]:
        """A run on this engine's log, scheduler, prices and clock (and its client, unless
        the run is given one). A simulated client takes up the simulator the task offers."""
        client = client if client is not None else self.client
        offer_simulator(client, task)
        return _Run(
            task=task,
            policy=policy,
            seed=seed,
            run_id=run_id,
            # _Run is typed with the SQLite log's class; it uses only what a Store offers.
            log=cast(EventLog, self._log),
            client=client,
            scheduler=self.scheduler,
            prices=self.prices,
            clock=self._clock,
            sinks=sinks,
            traffic=self._traffic,
            recording=recording,
            verify_only=verify_only,
            compare_policy=compare_policy,
        )

    def _require_entered(self) -> None:
        if not self._entered:
            raise RuntimeError("use the engine as 'async with Engine(...) as engine'")

    async def _execute(self, run: _Run[Any, Any]) -> RunResult:
        self._runs_active += 1
        key, scope, done = id(run), anyio.CancelScope(), anyio.Event()
        self._going[key] = (scope, done)
        try:
            with scope:
                return await run.execute()
            # Only the engine cancels this scope, when it is left after a failure: the run has
            # recorded "cancelled", and its caller gets that result rather than an error.
            if run.result is None:  # cut while it re-executed its log: it appended nothing
                raise MakerError(
                    f"run {run.run_id}: the engine was closed while it replayed its log"
                )
            return run.result
        finally:
            self._runs_active -= 1
            with anyio.CancelScope(shield=True):
                await self._log.flush()
            del self._going[key]
            done.set()
