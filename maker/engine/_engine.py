"""The engine: runs a task step by step, voting each step first-to-ahead-by-k.

The step loop is the only place that records events and decides. Sample workers only call the
model and hand the outcome back through a channel, so the decisions are a pure function of the
task, the policy and the outcomes in the order they were recorded (the determinism contract).
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, NamedTuple, Self, TypeVar

import anyio
import msgspec
from anyio.abc import ObjectReceiveStream, ObjectSendStream, TaskGroup
from anyio.lowlevel import checkpoint

from events import (
    OBSERVATIONAL_TYPES,
    BreakerChanged,
    Event,
    EventLog,
    KChanged,
    RedFlagged,
    RunFinished,
    RunResumed,
    RunStarted,
    RunStatus,
    SampleCancelled,
    SampleFailed,
    SampleReceived,
    SampleRequested,
    SchedulerWaited,
    StateChanged,
    StepDecided,
    StepStarted,
    VoteCounted,
    WriterKind,
    canonical_json,
)

from ..core._adaptive import PEstimate
from ..core._client import Client, Completion, SampleRequest
from ..core._errors import ClientError, ConfigError, MakerError, RedFlag
from ..core._policy import Policy
from ..core._pricing import PriceTable
from ..core._tally import Tally
from ..core._task import Task
from ..core._version import __version__
from ._handle import RunHandle
from ._recording import Divergence, Recording
from ._results import EngineStatistics, RunResult, VerifyResult
from ._scheduler import (
    BreakerChange,
    Limits,
    Scheduler,
    SchedulerObserver,
    Wait,
    backoff_delay,
)

S = TypeVar("S")
A = TypeVar("A")

_OBSERVATIONAL = frozenset(OBSERVATIONAL_TYPES)  # event types are final: no subclasses

EventSink = Callable[[Event], None]
"""A live observer of events (a progress bar, a tracer). Called in seq order; must not block."""


def sample_seed(run_seed: int, sample_id: str) -> int:
    """The seed of one sample's request: a pure function of the run's seed and the sample id."""
    digest = hashlib.blake2b(f"{run_seed}:{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


async def record_failure(
    emit: Callable[..., Awaitable[None]],
    *,
    seed: int,
    request: SampleRequest,
    attempt: int,
    error: ClientError,
    max_attempts: int,
    limits: Limits,
) -> tuple[float | None, str]:
    """Decide and record a failed attempt of a sample: ``(backoff, "")`` to retry after
    ``backoff`` seconds, or ``(None, reason)`` when the run must fail.

    The jitter comes from the run's seed and the attempt, so a replay waits (and decides) the
    same; the engine and calibration share this rule.
    """
    retry = error.retryable and attempt < max_attempts
    delay = 0.0
    if retry:
        draw = random.Random(sample_seed(seed, f"{request.sample_id}#{attempt}"))
        delay = backoff_delay(
            attempt,
            base_s=limits.backoff_base_s,
            cap_s=limits.backoff_cap_s,
            retry_after_s=error.retry_after,
            draw=draw.random(),
        )
    await emit(
        SampleFailed,
        step=request.step,
        sample_id=request.sample_id,
        error_kind=error.kind,
        message=str(error),
        attempt=attempt,
        retryable=error.retryable,
        backoff_s=delay,
        retry_after_s=error.retry_after,
    )
    if retry:
        return delay, ""
    attempts = f"{attempt} attempt" + ("s" if attempt != 1 else "")
    return None, f"sample {request.sample_id} failed after {attempts}: {error.kind}: {error}"


class SampleOutcome(NamedTuple):
    """What one attempt of one sample came to, as the step loop receives it."""

    sample_id: str
    attempt: int
    completion: Completion | None
    error: ClientError | None
    latency_s: float


async def judge_response(
    emit: Callable[..., Awaitable[None]],
    task: Task[Any, Any],
    policy: Policy,
    *,
    step: int,
    sample_id: str,
    completion: Completion,
    latency_s: float,
    cost: float,
) -> Any:
    """Record a response, then read it: its answer, or the :class:`RedFlag` it raised (recorded
    too). The engine and calibration share this; what counts a vote is theirs."""
    await emit(
        SampleReceived,
        step=step,
        sample_id=sample_id,
        text=completion.text,
        model=completion.model,
        latency_s=latency_s,
        input_tokens=completion.input_tokens,
        output_tokens=completion.output_tokens,
        finish_reason=completion.finish_reason,
        temperature_sent=completion.temperature_sent,
        cost_usd=cost,
    )
    flag = policy.red_flags.check(completion)
    if flag is None:
        try:
            return task.parse(completion.text)
        except RedFlag as exc:
            flag = exc
    await emit(RedFlagged, step=step, sample_id=sample_id, reason=flag.reason, detail=flag.detail)
    return flag


async def attempt_sample(
    scheduler: Scheduler,
    client: Client,
    request: SampleRequest,
    attempt: int,
    delay: float,
    emit: Callable[..., None],
) -> SampleOutcome:
    """One attempt of one sample through the scheduler, after ``delay`` seconds of backoff:
    the completion or the transport error, and the seconds the call took.

    A client that breaks its contract (raises anything but :class:`ClientError`) counts as a
    non-retryable transport failure. The engine and calibration share this.
    """
    if delay > 0:
        await scheduler.sleep(delay)
    began = time.perf_counter()
    completion: Completion | None = None
    error: ClientError | None = None
    try:
        completion = await scheduler.call(client, request, EventObserver(emit, request))
    except ClientError as exc:
        error = exc
    except anyio.get_cancelled_exc_class():
        raise
    except Exception as exc:
        error = ClientError(f"{type(exc).__name__}: {exc}", kind="client_bug")
    latency = time.perf_counter() - began
    return SampleOutcome(request.sample_id, attempt, completion, error, latency)


def attempt_sample_now(
    scheduler: Scheduler,
    client: Client,
    request: SampleRequest,
    attempt: int,
    emit: Callable[..., None],
) -> SampleOutcome | None:
    """:func:`attempt_sample` without awaiting, when the scheduler can answer at once (see
    :meth:`Scheduler.call_now`); None when the attempt has to be made by ``attempt_sample``."""
    began = time.perf_counter()
    completion: Completion | None = None
    error: ClientError | None = None
    try:
        completion = scheduler.call_now(client, request, EventObserver(emit, request))
        if completion is None:
            return None
    except ClientError as exc:
        error = exc
    except Exception as exc:
        error = ClientError(f"{type(exc).__name__}: {exc}", kind="client_bug")
    latency = time.perf_counter() - began
    # tuple.__new__ skips the NamedTuple's Python-level __new__: this runs for every sample.
    outcome: SampleOutcome = _new_tuple(
        SampleOutcome, (request.sample_id, attempt, completion, error, latency)
    )
    return outcome


_new_tuple = tuple.__new__

_Builder = Callable[[dict[str, Any], str, int, float], Event]
_BUILDERS: dict[type[Event], _Builder] = {}


def _builder(event_type: type[Event]) -> _Builder:
    """``build(fields, run_id, seq, ts)``: ``event_type(run_id=..., seq=..., ts=..., **fields)``.

    A struct built from a dict of keywords costs four times one built from keywords written
    out (msgspec, measured: 1.8 against 0.4 us for a sample_received), and the live step loop
    builds a dozen events a step. The builder writes the keywords out when ``fields`` holds
    every field but the envelope, as the engine's calls do; any other dict (a field left to its
    default, a misspelt or missing one) is built, or refused, the usual way.
    """
    names = [f.name for f in msgspec.structs.fields(event_type) if f.name not in _ENVELOPE]
    keywords = ", ".join(f"{name}=f[{name!r}]" for name in names)
    source = (
        "def build(f, run_id, seq, ts):\n"
        f"    if len(f) == {len(names)}:\n"
        "        try:\n"
        f"            return CLS(run_id=run_id, seq=seq, ts=ts, {keywords})\n"
        "        except KeyError:\n"
        "            pass\n"
        "    return CLS(run_id=run_id, seq=seq, ts=ts, **f)\n"
    )
    namespace: dict[str, Any] = {"CLS": event_type}
    exec(compile(source, f"<event builder {event_type.__name__}>", "exec"), namespace)
    build: _Builder = namespace["build"]
    return build


_ENVELOPE = frozenset({"run_id", "seq", "ts"})


def _undecided(step: int, samples: int, policy: Policy, tally: Tally) -> str:
    leader, lead = tally.leader()
    votes = tally.votes
    detail = (
        f"{len(votes)} candidates, the leader {votes[leader]} votes ahead by {lead}"
        if leader is not None
        else "no valid vote"
    )
    return (
        f"step {step} undecided after {samples} samples "
        f"(max_samples_per_step={policy.max_samples_per_step}): {detail}"
    )


_E = TypeVar("_E", bound=BaseException)


def _first(group: BaseExceptionGroup[BaseException], kind: type[_E]) -> _E:
    """The first exception of ``kind`` in a (possibly nested) exception group."""
    for exc in group.exceptions:
        if isinstance(exc, kind):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found: _E = _first(exc, kind)
            return found
    raise AssertionError("no such exception in the group")  # pragma: no cover


class _RecordingEnded(Exception):
    """A verification reached the end of the recording (a run that never finished)."""


class _StepFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Counters:
    samples: int = 0
    votes: int = 0
    failures: int = 0
    cancelled: int = 0
    max_in_step: int = 0
    cost: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    red_flags: Counter[str] = field(default_factory=Counter)


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

    ``log`` is an open :class:`events.EventLog` (the caller owns it) or a path (the engine opens
    and closes it, with its writer on a thread, or in a process of its own with
    ``log_writer="process"``: the choice for runs at full speed, see :class:`events.EventLog`).
    ``client`` defaults to the simulated model with the paper's statistics.
    ``clock`` stamps events' ``ts``; it never influences a decision. ``scheduler`` holds the
    per-model limits (concurrency, RPM, TPM, timeouts, breaker); share one between engines to
    share the limits. ``prices`` turns token counts into ``cost_usd`` (Eq 20).
    """

    def __init__(
        self,
        *,
        log: EventLog | str | os.PathLike[str],
        client: Client | None = None,
        clock: Callable[[], float] = time.time,
        sinks: Sequence[EventSink] = (),
        scheduler: Scheduler | None = None,
        prices: PriceTable | None = None,
        log_writer: WriterKind | None = None,
    ) -> None:
        if isinstance(log, EventLog):
            if log_writer is not None:
                raise ConfigError("log_writer", "applies to a log path; an open log has its writer")
            self._log = log
            self._owns_log = False
        else:
            self._log = EventLog(log) if log_writer is None else EventLog(log, writer=log_writer)
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
        self._in_flight = 0
        self._requested = 0
        self._retries = 0
        self._entered = False
        self._tg: TaskGroup | None = None
        self._handles: dict[str, RunHandle] = {}

    @property
    def log(self) -> EventLog:
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
        run = _Run(
            self,
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
            task, recording, policy, (*sinks, handle.publish), verify_only=False, client=client
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
        result: RunResult | None = None
        error: BaseException | None = None
        try:
            with anyio.CancelScope() as scope:
                handle._scope = scope
                if handle._cancel_requested:
                    scope.cancel()  # cancelled before it had its first turn
                try:
                    if resuming:
                        await self._log.attach(run.run_id)
                    result = await self._execute(run)
                except anyio.get_cancelled_exc_class():
                    raise
                except Exception as exc:
                    # A bug in task code (the run recorded it) or a resumed prefix that diverged
                    # (nothing was appended): the handle re-raises it to its owner without
                    # disturbing the other runs in the group.
                    error = exc
                    if isinstance(exc, ExceptionGroup) and exc.subgroup(Divergence) is not None:
                        error = _first(exc, Divergence)
        finally:
            # Cancelled by handle.cancel() or by the enclosing scope: _finish recorded the run
            # as cancelled and built its result.
            final = result if result is not None else run.result
            if final is None and error is None:
                error = MakerError(f"run {run.run_id} was cancelled before it started")
            handle._finish(final, error)
            # A finished run is served from the log: the engine keeps no memory of it.
            self._handles.pop(handle.run_id, None)

    def statistics(self) -> EngineStatistics:
        """Counters for tests and the CLI."""
        return EngineStatistics(
            runs_active=self._runs_active,
            in_flight=self._in_flight,
            requested=self._requested,
            retries=self._retries,
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
        ``"cancelled"`` before the cancellation propagates.
        """
        self._require_entered()
        run = _Run(
            self,
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
        await self._log.attach(recording.run_id)
        run = self._replaying(task, recording, policy, sinks, verify_only=False)
        try:
            return await self._execute(run)
        except* Divergence as group:
            raise _first(group, Divergence) from None

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
        recording.policy_changed = policy is not None
        run = self._replaying(task, recording, policy, sinks, verify_only=True)
        divergence: Divergence | None = None
        try:
            await run.execute()
        except* Divergence as group:
            divergence = _first(group, Divergence)
        except* _RecordingEnded:
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
        """A run that re-executes ``recording`` under its seed and (by default) its policy."""
        return _Run(
            self,
            task,
            policy if policy is not None else Policy.from_json(recording.started.policy),
            recording.started.seed,
            recording.run_id,
            (*self._sinks, *sinks),
            recording=recording,
            verify_only=verify_only,
            client=client,
        )

    def _require_entered(self) -> None:
        if not self._entered:
            raise RuntimeError("use the engine as 'async with Engine(...) as engine'")

    async def _execute(self, run: _Run[Any, Any]) -> RunResult:
        self._runs_active += 1
        try:
            return await run.execute()
        finally:
            self._runs_active -= 1
            with anyio.CancelScope(shield=True):
                await self._log.flush()


class _Run(Generic[S, A]):
    def __init__(
        self,
        engine: Engine,
        task: Task[S, A],
        policy: Policy,
        seed: int,
        run_id: str,
        sinks: tuple[EventSink, ...],
        *,
        recording: Recording | None = None,
        verify_only: bool = False,
        client: Client | None = None,
    ) -> None:
        self.engine = engine
        self.recording = recording
        self.verify_only = verify_only
        self.position = 0  # how many recorded events have been reproduced
        self.resumed = False
        self.result: RunResult | None = None
        self.k = policy.k
        self.estimate = PEstimate(policy.adaptive) if policy.adaptive is not None else None
        if self.estimate is not None and task.max_steps() is None:
            raise ConfigError(
                "adaptive", f"needs a task with a known number of steps ({task.name})"
            )
        self.last_votes: dict[str, int] = {}
        self.last_winner = ""
        self.task = task
        self.policy = policy
        self.seed = seed
        self.run_id = run_id
        self.sinks = sinks
        self.log = engine.log
        self.client = client if client is not None else engine.client
        self.clock = engine._clock
        self.seq = recording.next_seq if recording is not None else 0
        self.counters = _Counters()
        self.steps = 0
        self.state: S = task.initial_state()

    async def emit(self, event_type: type[Event], **fields: Any) -> None:
        """Record an event once the log has room for it: a run waits for a full log."""
        recording = self.recording
        if recording is None:
            # A live run, the common case: what emit_now does, with the fields passed on once
            # (forwarding a dozen keywords through a second call cost as much as the event).
            log = self.log
            if log.full:
                await log.room()
            build = _BUILDERS.get(event_type)
            if build is None:
                build = _BUILDERS[event_type] = _builder(event_type)
            event = build(fields, self.run_id, self.seq, self.clock())
            log.append(event)
            self.seq += 1
            for sink in self.sinks:
                sink(event)
            return
        if not recording.holds(self.position):
            await recording.ready(self.position)  # read the recording on to this step's end
        if recording.pending(self.position):
            self._reproduce(recording, event_type, fields)
            return
        if self.log.full:
            await self.log.room()
        self.emit_now(event_type, **fields)

    def emit_now(self, event_type: type[Event], **fields: Any) -> None:
        """Record an event at once, even past the log's bound: for the scheduler's waits (its
        callbacks cannot wait) and for the last words of a cancelled run."""
        recording = self.recording
        if recording is not None:
            if recording.pending(self.position):
                self._reproduce(recording, event_type, fields)
                return
            if self.verify_only:
                raise _RecordingEnded
            if not self.resumed:
                self.resumed = True
                self.emit_now(RunResumed, replayed=self.position, version=__version__)
        event = event_type(run_id=self.run_id, seq=self.seq, ts=self.clock(), **fields)
        self.log.append(event)
        self.seq += 1
        for sink in self.sinks:
            sink(event)

    def _reproduce(
        self, recording: Recording, event_type: type[Event], fields: dict[str, Any]
    ) -> None:
        """Check an event against the recorded one instead of recording it."""
        if event_type in _OBSERVATIONAL:
            return  # waits are not reproduced; the recorded ones stay in the log
        sinks = self.sinks
        event = recording.reproduce(self.position, event_type, self.run_id, fields, bool(sinks))
        self.position += 1
        if event is not None:
            for sink in sinks:
                sink(event)

    async def execute(self) -> RunResult:
        started = time.perf_counter()
        task, policy = self.task, self.policy
        # Each state is serialised once: the JSON that ends one step starts the next.
        state_json = task.state_to_json(self.state)
        await self.emit(
            RunStarted,
            task=task.name,
            task_params=task.params(),
            policy=policy.describe(),
            models=[self.client.model],
            model_params=self.client.describe(),
            seed=self.seed,
            version=__version__,
            initial_state=state_json,
            limits=self.engine.scheduler.limits_for(self.client.model).describe(),
        )
        status: RunStatus = "succeeded"
        reason = ""
        budget = task.max_steps()
        try:
            if self.estimate is not None:
                await self._adapt(budget)
            while not task.is_done(self.state):
                if budget is not None and self.steps >= budget:
                    raise _StepFailed(f"the task is not done after its budget of {budget} steps")
                answer = await self._vote(self.steps, self.state, state_json)
                self.state = task.apply(self.state, answer)
                state_json = task.state_to_json(self.state)
                await self.emit(StateChanged, step=self.steps, state=state_json)
                self.steps += 1
                if self.estimate is not None:
                    votes = self.last_votes
                    agree = votes.get(self.last_winner, 0)
                    self.estimate.add(agree=agree, disagree=sum(votes.values()) - agree)
                    await self._adapt(budget)
        except _StepFailed as exc:
            status, reason = "failed", exc.reason
        except (Divergence, _RecordingEnded):
            raise
        except anyio.get_cancelled_exc_class():
            if not self.replaying:
                self._finish("cancelled", "cancelled by the caller", started)
            raise
        except Exception as exc:
            if self.replaying:
                raise
            # A bug in task or client code: record the end before the error propagates.
            self._finish("failed", f"{type(exc).__name__}: {exc}", started)
            raise
        return self._finish(status, reason, started)

    def _finish(self, status: RunStatus, reason: str, started: float) -> RunResult:
        c = self.counters
        wall = time.perf_counter() - started
        self.emit_now(
            RunFinished,
            status=status,
            steps=self.steps,
            samples=c.samples,
            red_flags=sum(c.red_flags.values()),
            reason=reason,
            wall_s=wall,
        )
        self.result = RunResult(
            run_id=self.run_id,
            status=status,
            steps=self.steps,
            samples=c.samples,
            votes=c.votes,
            red_flags=sum(c.red_flags.values()),
            red_flags_by_reason=dict(c.red_flags),
            failures=c.failures,
            cancelled_samples=c.cancelled,
            k=self.k,
            wall_s=wall,
            reason=reason,
            final_state=self.task.state_to_json(self.state),
            max_samples_in_step=c.max_in_step,
            cost_usd=c.cost,
            input_tokens=c.input_tokens,
            output_tokens=c.output_tokens,
        )
        return self.result

    async def _vote(self, step: int, state: S, state_json: Any) -> A:
        task, policy, engine = self.task, self.policy, self.engine
        prompt = task.prompt(state)
        await self.emit(StepStarted, step=step, state=state_json)
        tally = Tally(self.k, policy.rule)
        answers: dict[str, A] = {}
        in_flight: dict[str, SampleRequest] = {}
        ordinal = 0
        red_flags = 0
        model = self.client.model
        attempts = _Attempts(self)
        last_answer: A | None = None
        candidate = ""

        def launch(request: SampleRequest, attempt: int, delay: float) -> None:
            in_flight[request.sample_id] = request
            engine._in_flight += 1
            attempts.launch(request, attempt, delay)

        failure: str | None = None
        winner: str | None = None
        try:
            async with attempts:
                while winner is None and failure is None:
                    deficit = tally.needed() + policy.speculative - len(in_flight)
                    while deficit > 0 and ordinal < policy.max_samples_per_step:
                        sample_id = f"{step}:{ordinal}"
                        temperature = policy.temperature_for(ordinal)
                        request = SampleRequest(
                            sample_id=sample_id,
                            step=step,
                            model=model,
                            system=prompt.system,
                            user=prompt.user,
                            temperature=temperature,
                            max_tokens=policy.max_tokens,
                            seed=sample_seed(self.seed, sample_id),
                        )
                        await self.emit(
                            SampleRequested,
                            step=step,
                            sample_id=sample_id,
                            model=model,
                            temperature=temperature,
                            max_tokens=policy.max_tokens,
                        )
                        ordinal += 1
                        self.counters.samples += 1
                        engine._requested += 1
                        launch(request, 1, 0.0)
                        deficit -= 1
                    if not in_flight:
                        failure = _undecided(step, ordinal, policy, tally)
                        break
                    outcome = await attempts.next()
                    if self.recording is not None:
                        self.recording.delivered(outcome.sample_id, outcome.attempt)
                    request = in_flight.pop(outcome.sample_id)
                    engine._in_flight -= 1
                    if outcome.error is not None:
                        failure = await self._failed(request, outcome, launch)
                        continue
                    assert outcome.completion is not None
                    answer = await self._judge(step, outcome.sample_id, outcome.completion, outcome)
                    if answer is None:
                        red_flags += 1
                        continue
                    if answer is not last_answer:
                        # A task may hand back the very answer it read for an earlier sample
                        # (Hanoi does when the answer lines repeat): its key is the same too.
                        last_answer = answer
                        candidate = canonical_json(task.answer_to_json(answer))
                    answers.setdefault(candidate, answer)
                    winner = tally.add(candidate)
                    self.counters.votes += 1
                    await self.emit(
                        VoteCounted,
                        step=step,
                        sample_id=outcome.sample_id,
                        candidate=candidate,
                        tally=tally.votes,
                    )
                if winner is not None:
                    votes = tally.votes
                    self.last_votes, self.last_winner = votes, winner
                    await self.emit(
                        StepDecided,
                        step=step,
                        winner=winner,
                        votes=votes,
                        samples=ordinal,
                        red_flags=red_flags,
                    )
                    self.counters.max_in_step = max(self.counters.max_in_step, ordinal)
                # Whatever is still in flight can no longer matter: stop it and say so.
                if in_flight:
                    attempts.cancel()
                self._cancel_all(step, in_flight)
        except anyio.get_cancelled_exc_class():
            self._cancel_all(step, in_flight, "run_cancelled")
            raise
        if failure is not None:
            raise _StepFailed(failure)
        assert winner is not None
        return answers[winner]

    async def _adapt(self, budget: int | None) -> None:
        """Adaptive k: choose k for the steps ahead from the votes so far; record a change."""
        estimate = self.estimate
        assert estimate is not None
        assert budget is not None
        k = estimate.k(budget)
        if k != self.k or self.steps == 0:
            self.k = k
            await self.emit(
                KChanged,
                step=self.steps,
                k=k,
                p_mean=estimate.mean,
                p_low=estimate.lower,
                agree=estimate.alpha,
                disagree=estimate.beta,
            )

    @property
    def replaying(self) -> bool:
        """Whether events are still being checked against a recording rather than appended."""
        return self.recording is not None and self.recording.pending(self.position)

    def _cancel_all(
        self, step: int, in_flight: dict[str, SampleRequest], reason: str = "decided"
    ) -> None:
        if reason == "run_cancelled" and self.replaying:
            # An interrupted replay records nothing: the log stays as it was.
            self.engine._in_flight -= len(in_flight)
            in_flight.clear()
            return
        for sample_id in in_flight:
            self.emit_now(SampleCancelled, step=step, sample_id=sample_id, reason=reason)
            self.counters.cancelled += 1
        self.engine._in_flight -= len(in_flight)
        in_flight.clear()

    async def _judge(
        self, step: int, sample_id: str, completion: Completion, outcome: SampleOutcome
    ) -> A | None:
        """Record a response and return its answer, or record its red flag and return None."""
        cost = self.engine.prices.cost(
            completion.model, completion.input_tokens, completion.output_tokens
        )
        self.counters.cost += cost
        self.counters.input_tokens += completion.input_tokens
        self.counters.output_tokens += completion.output_tokens
        judged = await judge_response(
            self.emit,
            self.task,
            self.policy,
            step=step,
            sample_id=sample_id,
            completion=completion,
            latency_s=outcome.latency_s,
            cost=cost,
        )
        if isinstance(judged, RedFlag):
            self.counters.red_flags[judged.reason] += 1
            return None
        return judged  # type: ignore[no-any-return]

    async def _failed(
        self,
        request: SampleRequest,
        outcome: SampleOutcome,
        launch: Callable[[SampleRequest, int, float], None],
    ) -> str | None:
        """Record a failed attempt; retry it, or return why the run must fail."""
        error = outcome.error
        assert error is not None
        self.counters.failures += 1
        delay, reason = await record_failure(
            self.emit,
            seed=self.seed,
            request=request,
            attempt=outcome.attempt,
            error=error,
            max_attempts=self.policy.max_attempts,
            limits=self.engine.scheduler.limits_for(self.client.model),
        )
        if delay is None:
            return reason
        self.engine._retries += 1
        launch(request, outcome.attempt + 1, delay)
        return None

    async def _sample(
        self,
        request: SampleRequest,
        attempt: int,
        delay: float,
        send: ObjectSendStream[SampleOutcome],
    ) -> None:
        completion: Completion | None
        error: ClientError | None
        recording = self.recording
        if recording is not None and recording.has(request.sample_id, attempt):
            # A recorded outcome is served again, in its recorded turn: never requested again.
            recorded = await recording.take(request.sample_id, attempt)
            if recorded is not None:
                completion = recorded if isinstance(recorded, Completion) else None
                error = recorded if isinstance(recorded, ClientError) else None
                await send.send(SampleOutcome(request.sample_id, attempt, completion, error, 0.0))
                return
        if recording is not None:
            # Not recorded: it was in flight when the run stopped. Its turn comes after every
            # recorded outcome; a verification has nothing more to serve, so it has reproduced
            # all it can (waiting here instead would wait for ever once every sample still
            # in flight is such a one).
            await recording.take(request.sample_id, attempt)
            if self.verify_only:
                raise _RecordingEnded
        scheduler = self.engine.scheduler
        await send.send(
            await attempt_sample(scheduler, self.client, request, attempt, delay, self.emit_now)
        )


class _Attempts:
    """Makes the attempts of one step's samples and hands their outcomes to the step loop.

    A launched attempt waits until the loop wants an outcome, which is when a sample task would
    first run; then the attempts launched so far are made in launch order, so the calls, and
    the events they record, keep one order however each is made. An attempt the scheduler can
    answer at once (:meth:`Scheduler.call_now`) is made inline; any other runs in a task of a
    task group opened on first need. A step whose samples all answer at once thus needs no
    task, stream or task group, which at zero latency were most of a step's cost. A replay
    serves an attempt its recorded outcome inline alike, when that outcome is the next in the
    recorded order; an attempt whose turn has not come waits for it in a task.
    """

    def __init__(self, run: _Run[Any, Any]) -> None:
        self._run = run
        self._recording = run.recording
        self._at_once = run.recording is None
        self._launched: list[tuple[SampleRequest, int, float]] = []
        # A replay's attempts, not made yet: each is served its recorded outcome inline when
        # that outcome is next in the recording's order; otherwise they go to tasks, which
        # wait for their turns (or go live: the outcome was never recorded).
        self._replayed: dict[tuple[str, int], tuple[SampleRequest, int, float]] = {}
        self._ready: deque[SampleOutcome] = deque()
        # Made with the task group, on first need: most steps at zero latency never need one.
        self._stack: AsyncExitStack | None = None
        self._tg: TaskGroup | None = None
        self._send: ObjectSendStream[SampleOutcome] | None = None
        self._receive: ObjectReceiveStream[SampleOutcome] | None = None
        self._yielded = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if self._stack is None:
            return None
        return await self._stack.__aexit__(exc_type, exc, tb)

    def launch(self, request: SampleRequest, attempt: int, delay: float) -> None:
        """Queue an attempt, made when the loop next asks for an outcome."""
        self._launched.append((request, attempt, delay))

    async def next(self) -> SampleOutcome:
        """The next outcome: of an attempt answered at once, else of the first task to end."""
        if not self._yielded:
            # Once a step, so that a step answered at once still lets the log writer and
            # other runs have their turn, and a cancellation its chance.
            await checkpoint()
            self._yielded = True
        run = self._run
        recording = self._recording
        at_once = self._at_once
        if (
            not at_once
            and recording is not None
            and recording.exhausted
            and not run.verify_only
            and self._tg is None
            and not self._replayed
        ):
            # A resumed run past its recording samples as a live run does, from the first
            # step that has nothing of the recording's in flight.
            self._at_once = at_once = True
        for request, attempt, delay in self._launched:
            if at_once and delay <= 0:
                outcome = attempt_sample_now(
                    run.engine.scheduler, run.client, request, attempt, run.emit_now
                )
                if outcome is not None:
                    self._ready.append(outcome)
                    continue
            elif recording is not None and not at_once:
                self._replayed[(request.sample_id, attempt)] = (request, attempt, delay)
                continue
            await self._start(request, attempt, delay)
        self._launched.clear()
        if self._ready:
            return self._ready.popleft()
        if self._replayed:
            assert recording is not None
            turn = recording.next_turn()
            if turn is not None and self._replayed.pop(turn, None) is not None:
                # The outcome next in the recording's order is this attempt's: served as the
                # attempt's task would serve it, without the task.
                served = recording.take_now(*turn)
                if isinstance(served, Completion):
                    return SampleOutcome(turn[0], turn[1], served, None, 0.0)
                return SampleOutcome(turn[0], turn[1], None, served, 0.0)
            if run.verify_only and recording.exhausted:
                # Nothing recorded is left to serve these attempts (they were in flight when
                # the run stopped): a verification has reproduced all it can.
                raise _RecordingEnded
            for request, attempt, delay in self._replayed.values():
                await self._start(request, attempt, delay)
            self._replayed.clear()
        assert self._receive is not None
        return await self._receive.receive()

    async def _start(self, request: SampleRequest, attempt: int, delay: float) -> None:
        """Make an attempt in a task of this step's group (opened on first need)."""
        if self._tg is None:
            # Buffered, so a finished worker exits at once; what the loop has not read
            # when the step is decided is cancelled with the rest.
            send, receive = anyio.create_memory_object_stream[SampleOutcome](
                max_buffer_size=math.inf
            )
            # Made with the task group: most steps at zero latency never need one.
            stack = self._stack = AsyncExitStack()
            self._send = await stack.enter_async_context(send)
            self._receive = await stack.enter_async_context(receive)
            self._tg = await stack.enter_async_context(anyio.create_task_group())
        assert self._send is not None
        self._tg.start_soon(self._run._sample, request, attempt, delay, self._send)

    def cancel(self) -> None:
        """Stop the attempts still running in tasks."""
        if self._tg is not None:
            self._tg.cancel_scope.cancel()


class EventObserver(SchedulerObserver):
    """Records the scheduler's waits and breaker changes for one sample as events, through the
    ``emit(event_type, **fields)`` of whatever is recording the run."""

    def __init__(self, emit: Callable[..., None], request: SampleRequest) -> None:
        self._emit = emit
        self._request = request

    def waited(self, wait: Wait) -> None:
        self._emit(
            SchedulerWaited,
            step=self._request.step,
            sample_id=self._request.sample_id,
            model=self._request.model,
            reason=wait.reason,
            waited_s=wait.seconds,
        )

    def breaker_changed(self, change: BreakerChange) -> None:
        self._emit(
            BreakerChanged,
            step=self._request.step,
            sample_id=self._request.sample_id,
            model=change.model,
            state=change.state,
            failures=change.failures,
        )
