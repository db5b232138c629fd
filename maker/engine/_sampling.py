"""Sampling: how one sample of a step is requested, attempted, retried, judged and abandoned.

Every run's loop (a voting chain, a verification, a resumption, a calibration) samples through
a :class:`_Sampler`. Its workers only call the model and hand the outcome back; the sampler
records what each outcome comes to in the loop's turn, so the recorded order is the order of
the decisions (the determinism contract).
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import time
from collections import Counter, deque
from collections.abc import Collection, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, NamedTuple, Protocol, Self, TypedDict, TypeVar

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream, TaskGroup
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectSendStream
from msgspec import UNSET

from events import (
    BreakerChanged,
    Event,
    RedFlagged,
    SampleCancelled,
    SampleFailed,
    SampleReceived,
    SampleRequested,
    SchedulerWaited,
)

from ..core._client import Client, Completion, SampleRequest
from ..core._errors import ClientError, MakerError, RedFlag
from ..core._judge import judge
from ..core._policy import Hedge, Policy
from ..core._pricing import PriceTable
from ..core._task import Prompt, Task
from ._recording import HEDGE_TURN, Recording, _RecordingEnded
from ._scheduler import BreakerChange, Scheduler, SchedulerObserver, Wait, backoff_delay

A = TypeVar("A")


def sample_seed(run_seed: int, sample_id: str) -> int:
    """The seed of one sample's request: a pure function of the run's seed and the sample id."""
    digest = hashlib.blake2b(f"{run_seed}:{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class _Seeds:
    """:func:`sample_seed` for one run's seed, its hash's prefix taken once: a copy of a hash
    state is cheaper than a new string and a new hash per sample.

    >>> _Seeds(7)("3:1") == sample_seed(7, "3:1")
    True
    """

    __slots__ = ("_prefix",)

    def __init__(self, run_seed: int) -> None:
        self._prefix = hashlib.blake2b(f"{run_seed}:".encode(), digest_size=8)

    def __call__(self, sample_id: str) -> int:
        digest = self._prefix.copy()
        digest.update(sample_id.encode())
        return int.from_bytes(digest.digest(), "big") >> 1


class _StepFailed(Exception):
    """The run cannot go on, for ``reason`` (recorded in ``run_finished``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _unwrapped(
    group: BaseExceptionGroup[BaseException], preferred: BaseException | None
) -> BaseException:
    """The exception to raise in place of a task group's ``group``: ``preferred`` (what the
    group's host raised) when the group holds it, else the first exception the group holds.

    anyio's task groups wrap whatever is raised in them, the host's own exception included.
    """
    leaves = list(_leaves(group))
    if preferred is not None and any(leaf is preferred for leaf in leaves):
        return preferred
    return leaves[0]


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


class _Envelope(TypedDict):
    """What every event of a run carries besides its own fields (see :class:`events.Event`)."""

    run_id: str
    seq: int
    ts: float


class _Recorder(Protocol):
    """What sampling needs of the run it samples for: the run records every event."""

    run_id: str
    seq: int
    """The seq of the run's next event."""

    def clock(self) -> float:
        """The time stamp of the run's next event."""

    def envelope(self) -> _Envelope:
        """The envelope of the run's next event."""

    async def emit(self, event: Event) -> None:
        """Record an event once the log has room for it."""

    def emit_now(self, event: Event) -> None:
        """Record an event at once (the scheduler's callbacks cannot wait)."""

    @property
    def replaying(self) -> bool:
        """Whether events are still checked against a recording rather than appended."""


@dataclass
class _Counters:
    """One run's totals, as its result reports them."""

    samples: int = 0
    votes: int = 0
    failures: int = 0
    cancelled: int = 0
    misspeculated: int = 0
    misspeculated_steps: int = 0
    hedged: int = 0
    max_in_step: int = 0
    cost: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    red_flags: Counter[str] = field(default_factory=Counter)


class _Traffic:
    """An engine's samples across its runs: in flight now, requested and retried so far."""

    __slots__ = ("in_flight", "requested", "retries")

    def __init__(self) -> None:
        self.in_flight = 0
        self.requested = 0
        self.retries = 0


class _Outcome(NamedTuple):
    """What one attempt of one sample came to, as the loop receives it."""

    sample_id: str
    attempt: int
    completion: Completion | None
    error: ClientError | None
    latency_s: float


_new_tuple = tuple.__new__


class _Observer(SchedulerObserver):
    """Records the scheduler's waits and breaker changes for one sample as events."""

    def __init__(self, recorder: _Recorder, request: SampleRequest) -> None:
        self._recorder = recorder
        self._request = request

    def waited(self, wait: Wait) -> None:
        recorder, request = self._recorder, self._request
        recorder.emit_now(
            SchedulerWaited(
                **recorder.envelope(),
                step=request.step,
                sample_id=request.sample_id,
                model=request.model,
                reason=wait.reason,
                waited_s=wait.seconds,
            )
        )

    def breaker_changed(self, change: BreakerChange) -> None:
        recorder, request = self._recorder, self._request
        recorder.emit_now(
            BreakerChanged(
                **recorder.envelope(),
                step=request.step,
                sample_id=request.sample_id,
                model=change.model,
                state=change.state,
                failures=change.failures,
            )
        )


async def _attempt(
    scheduler: Scheduler,
    client: Client,
    request: SampleRequest,
    attempt: int,
    delay: float,
    recorder: _Recorder,
) -> _Outcome:
    """One attempt of one sample through the scheduler, after ``delay`` seconds of backoff:
    the completion or the transport error, and the seconds the call took.

    A client that breaks its contract (raises anything but :class:`ClientError`) counts as a
    non-retryable transport failure.
    """
    if delay > 0:
        await scheduler.sleep(delay)
    began = time.perf_counter()
    completion: Completion | None = None
    error: ClientError | None = None
    try:
        completion = await scheduler.call(client, request, _Observer(recorder, request))
    except ClientError as exc:
        error = exc
    except anyio.get_cancelled_exc_class():
        raise
    except Exception as exc:
        error = ClientError(f"{type(exc).__name__}: {exc}", kind="client_bug")
    latency = time.perf_counter() - began
    return _Outcome(request.sample_id, attempt, completion, error, latency)


def _attempt_now(
    scheduler: Scheduler,
    client: Client,
    request: SampleRequest,
    attempt: int,
    recorder: _Recorder,
) -> _Outcome | None:
    """:func:`_attempt` without awaiting, when the scheduler can answer at once (see
    :meth:`Scheduler.call_now`); None when the attempt has to be made by ``_attempt``."""
    began = time.perf_counter()
    completion: Completion | None = None
    error: ClientError | None = None
    try:
        completion = scheduler.call_now(client, request, _Observer(recorder, request))
        if completion is None:
            return None
    except ClientError as exc:
        error = exc
    except Exception as exc:
        error = ClientError(f"{type(exc).__name__}: {exc}", kind="client_bug")
    latency = time.perf_counter() - began
    # tuple.__new__ skips the NamedTuple's Python-level __new__: this runs for every sample.
    outcome: _Outcome = _new_tuple(
        _Outcome, (request.sample_id, attempt, completion, error, latency)
    )
    return outcome


class HedgeDue:
    """What :meth:`_Sampler.next` hands back for a sample in flight past the hedging threshold
    (live), or where the log records a hedge of it (a replay): the loop may hedge it."""

    __slots__ = ("in_flight_s", "threshold_s")

    def __init__(self, in_flight_s: float, threshold_s: float) -> None:
        self.in_flight_s = in_flight_s
        self.threshold_s = threshold_s


class _Watch:
    """A live run's stragglers: which sample attempts, running in tasks, have been in flight
    past the hedging threshold, told to the loop through the outcomes' stream.

    The threshold is the :class:`Hedge` quantile of the latencies observed so far (of attempts
    that ran in tasks), at least ``min_s``; during the warm-up, twice the slowest seen. Only
    a live run has one: a replay sends its hedges where the log has them.
    """

    _WINDOW = 1024  # latencies kept: a long run's threshold follows its recent calls
    _EVERY = 16  # the quantile is recomputed every this many observations

    def __init__(self, hedge: Hedge, send: MemoryObjectSendStream[_Outcome]) -> None:
        self._hedge = hedge
        self._send = send
        self._seen: deque[float] = deque(maxlen=self._WINDOW)
        self._count = 0
        self._slowest = 0.0
        self._threshold: float | None = None
        self._heap: list[tuple[float, str, float]] = []  # (deadline, sample id, started)
        self._watched: dict[str, float] = {}  # sample id -> when its attempt started
        self._unset: list[tuple[str, float]] = []  # watched before any latency was seen
        self._told: dict[str, float] = {}  # sample id -> the threshold it was told to pass
        self._wake = anyio.Event()

    @property
    def threshold(self) -> float | None:
        """Seconds in flight after which a sample straggles; None before a latency is seen."""
        return self._threshold

    def observe(self, latency: float) -> None:
        """An attempt that ran in a task answered (or failed) after ``latency`` seconds."""
        hedge = self._hedge
        self._seen.append(latency)
        self._count += 1
        if self._count < hedge.warmup:
            self._slowest = max(self._slowest, latency)
            self._threshold = max(hedge.min_s, 2.0 * self._slowest)
        elif self._count == hedge.warmup or self._count % self._EVERY == 0:
            ordered = sorted(self._seen)
            at = min(len(ordered) - 1, int(hedge.quantile * len(ordered)))
            self._threshold = max(hedge.min_s, ordered[at])
        if self._unset:
            threshold = self._threshold
            assert threshold is not None
            for sample_id, started in self._unset:
                if self._watched.get(sample_id) == started:
                    self._push(sample_id, started, threshold)
            self._unset.clear()

    def watch(self, sample_id: str) -> None:
        """An attempt of ``sample_id`` starts in a task now."""
        started = time.perf_counter()
        self._watched[sample_id] = started
        threshold = self._threshold
        if threshold is None:
            # Nothing observed yet to measure a straggler by: it gets its deadline with the
            # first latency seen (a run's first step may straggle too).
            self._unset.append((sample_id, started))
            return
        self._push(sample_id, started, threshold)

    def _push(self, sample_id: str, started: float, threshold: float) -> None:
        heap = self._heap
        heapq.heappush(heap, (started + threshold, sample_id, started))
        if heap[0][1] == sample_id:
            self._wake.set()

    def unwatch(self, sample_id: str) -> None:
        """The sample's attempt ended, or the sample was abandoned."""
        self._watched.pop(sample_id, None)

    def refire(self, sample_ids: Collection[str]) -> None:
        """Tell the loop again about these samples, if still in flight past the threshold (the
        loop passed them over when they were not yet holding up the run)."""
        threshold = self._threshold
        if threshold is None:
            return
        now = time.perf_counter()
        for sample_id in sample_ids:
            started = self._watched.get(sample_id)
            if started is not None and now - started >= threshold:
                self._tell(sample_id, now - started, threshold)

    def told(self, sample_id: str) -> float:
        """The threshold the loop was told ``sample_id`` passed (0.0 if it was not)."""
        return self._told.pop(sample_id, 0.0)

    def _tell(self, sample_id: str, in_flight: float, threshold: float) -> None:
        self._told[sample_id] = threshold
        outcome: _Outcome = _new_tuple(_Outcome, (sample_id, HEDGE_TURN, None, None, in_flight))
        self._send.send_nowait(outcome)

    async def run(self) -> None:
        """Tell the loop of each watched attempt still in flight at its deadline."""
        heap = self._heap
        while True:
            if not heap:
                await self._wake.wait()
                self._wake = anyio.Event()
                continue
            deadline, sample_id, started = heap[0]
            delay = deadline - time.perf_counter()
            if delay > 0:
                with anyio.move_on_after(delay):
                    await self._wake.wait()
                if self._wake.is_set():
                    self._wake = anyio.Event()
                continue
            heapq.heappop(heap)
            if self._watched.get(sample_id) == started:
                self._tell(sample_id, time.perf_counter() - started, deadline - started)


class _Attempts:
    """Makes the attempts of a loop's samples and hands their outcomes back, in one scope.

    A launched attempt waits until the loop wants an outcome, which is when a sample task would
    first run; then the attempts launched so far are made in launch order, so the calls, and
    the events they record, keep one order however each is made. An attempt the scheduler can
    answer at once (:meth:`Scheduler.call_now`) is made inline; any other runs in a task of a
    task group opened on first need. A step whose samples all answer at once thus needs no
    task, stream or task group, which at zero latency were most of a step's cost. A replay
    serves every attempt its recorded outcome inline alike, in the recorded order, reading on
    for it when it lies further on; what the recording does not hold goes live once every
    recorded outcome is served.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        client: Client,
        recorder: _Recorder,
        recording: Recording | None,
        verify_only: bool,
        hedge: Hedge | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._client = client
        self._recorder = recorder
        self._recording = recording
        self._verify_only = verify_only
        self._hedge = hedge
        self._at_once = recording is None
        self._launched: list[tuple[SampleRequest, int, float]] = []
        # A replay's attempts, not made yet: each is served its recorded outcome inline when
        # that outcome is next in the recording's order. Those the recording holds no outcome
        # for (in flight when the run stopped) go live once every recorded one is served.
        self._replayed: dict[tuple[str, int], tuple[SampleRequest, int, float]] = {}
        self._ready: deque[_Outcome] = deque()
        # Made with the task group, on first need: most steps at zero latency never need one.
        self._stack: AsyncExitStack | None = None
        self._tg: TaskGroup | None = None
        self._send: MemoryObjectSendStream[_Outcome] | None = None
        self._receive: ObjectReceiveStream[_Outcome] | None = None
        self._scopes: dict[str, anyio.CancelScope] = {}  # attempts running in tasks
        self._watch: _Watch | None = None
        self._watch_scope: anyio.CancelScope | None = None
        self._yielded = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        self._tg = None  # closed: cancel() has nothing left to stop
        if self._watch_scope is not None:
            self._watch_scope.cancel()
        if stack is None:
            return None
        try:
            return await stack.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # The task group wraps what the loop raised (a task's bug, a divergence) and what
            # a worker raised: the loop's caller is owed the exception itself.
            raise _unwrapped(group, exc) from None

    def threshold_of(self, sample_id: str) -> float:
        """The hedging threshold a straggler was found past (0.0 in a replay, whose hedges come
        from the log)."""
        return 0.0 if self._watch is None else self._watch.told(sample_id)

    def launch(self, request: SampleRequest, attempt: int, delay: float) -> None:
        """Queue an attempt, made when the loop next asks for an outcome."""
        self._launched.append((request, attempt, delay))

    def rearm(self) -> None:
        """Let the next :meth:`next` yield to other tasks again, as a new step's first does."""
        self._yielded = False

    async def next(self) -> _Outcome:
        """The next outcome: of an attempt answered at once, else of the first task to end.

        An outcome with attempt :data:`HEDGE_TURN` says a sample straggles (live) or that the
        log records a hedge of it here (a replay).
        """
        if not self._yielded:
            # Once a step, so that a step answered at once still lets the log writer and
            # other runs have their turn, and a cancellation its chance.
            await checkpoint()
            self._yielded = True
        recording = self._recording
        if not self._at_once and recording is not None and recording.exhausted:
            self._go_live()
        at_once = self._at_once
        for request, attempt, delay in self._launched:
            if at_once and delay <= 0:
                outcome = _attempt_now(
                    self._scheduler, self._client, request, attempt, self._recorder
                )
                if outcome is not None:
                    self._ready.append(outcome)
                    continue
            elif not at_once:
                self._replayed[(request.sample_id, attempt)] = (request, attempt, delay)
                continue
            await self._start(request, attempt, delay)
        self._launched.clear()
        if self._ready:
            return self._ready.popleft()
        if not self._at_once:
            assert recording is not None
            served = await self._served(recording)
            if served is not None:
                return served
            if self._launched:
                return await self.next()  # gone live: make what the recording did not hold
        assert self._receive is not None
        return await self._receive.receive()

    async def _served(self, recording: Recording) -> _Outcome | None:
        """A replay's next outcome, served from the recording inline; None once the recording
        has nothing more to serve (a resumption then goes live)."""
        while True:
            turn = recording.next_turn()
            if turn is None:
                if not recording.exhausted:
                    await recording.read_outcome()
                    continue
                if self._verify_only:
                    # Nothing recorded is left to serve the attempts still in flight (they
                    # were when the run stopped): a verification has reproduced all it can.
                    raise _RecordingEnded
                self._go_live()
                return None
            sample_id, attempt = turn
            if attempt == HEDGE_TURN:
                return _Outcome(sample_id, attempt, None, None, 0.0)
            if self._replayed.pop(turn, None) is None:
                raise MakerError(
                    f"the recording's next outcome is of sample {sample_id} attempt {attempt}, "
                    "which the re-execution has not requested"
                )
            served = recording.take_now(sample_id, attempt)
            if isinstance(served, Completion):
                return _Outcome(sample_id, attempt, served, None, 0.0)
            return _Outcome(sample_id, attempt, None, served, 0.0)

    def _go_live(self) -> None:
        """The recording is served whole: what is still to be sampled is the live model's, the
        attempts in flight when the run stopped first, in the order they were launched."""
        self._at_once = True
        if self._replayed:
            self._launched[:0] = self._replayed.values()
            self._replayed.clear()

    async def _start(self, request: SampleRequest, attempt: int, delay: float) -> None:
        """Make an attempt in a task of this scope's group (opened on first need)."""
        if self._tg is None:
            # Buffered, so a finished worker exits at once; what the loop has not read
            # when the step is decided is cancelled with the rest.
            send, receive = anyio.create_memory_object_stream[_Outcome](max_buffer_size=math.inf)
            stack = self._stack = AsyncExitStack()
            self._send = await stack.enter_async_context(send)
            self._receive = await stack.enter_async_context(receive)
            self._tg = await stack.enter_async_context(anyio.create_task_group())
        assert self._send is not None
        if self._hedge is not None and self._watch is None:
            watch = self._watch = _Watch(self._hedge, self._send)
            self._tg.start_soon(self._run_watch, watch)
        scope = anyio.CancelScope()
        self._scopes[request.sample_id] = scope
        self._tg.start_soon(self._sample, request, attempt, delay, self._send, scope)

    async def _run_watch(self, watch: _Watch) -> None:
        with anyio.CancelScope() as scope:
            self._watch_scope = scope
            await watch.run()

    async def _sample(
        self,
        request: SampleRequest,
        attempt: int,
        delay: float,
        send: ObjectSendStream[_Outcome],
        scope: anyio.CancelScope,
    ) -> None:
        sample_id = request.sample_id
        with scope:
            watch = self._watch
            if watch is not None:
                if delay > 0:
                    await self._scheduler.sleep(delay)
                    delay = 0.0
                watch.watch(sample_id)
            try:
                outcome = await _attempt(
                    self._scheduler, self._client, request, attempt, delay, self._recorder
                )
            finally:
                if watch is not None:
                    watch.unwatch(sample_id)
            if watch is not None:
                watch.observe(outcome.latency_s)
            await send.send(outcome)
        if self._scopes.get(sample_id) is scope:
            del self._scopes[sample_id]

    def drop(self, sample_ids: Collection[str]) -> None:
        """Stop these samples' attempts, wherever they are: launched, waiting for their turn in
        a replay, answered at once and not yet read, or running in a task."""
        if self._launched:
            self._launched = [x for x in self._launched if x[0].sample_id not in sample_ids]
        if self._replayed:
            for key in [key for key in self._replayed if key[0] in sample_ids]:
                del self._replayed[key]
        if self._ready:
            self._ready = deque(o for o in self._ready if o.sample_id not in sample_ids)
        scopes, watch = self._scopes, self._watch
        for sample_id in sample_ids:
            scope = scopes.pop(sample_id, None)
            if scope is not None:
                scope.cancel()
            if watch is not None:
                watch.unwatch(sample_id)

    def refire(self, sample_ids: Collection[str]) -> None:
        """See :meth:`_Watch.refire` (nothing in a replay, which has no watch)."""
        if self._watch is not None:
            self._watch.refire(sample_ids)

    def cancel(self) -> None:
        """Stop the attempts still running in tasks."""
        if self._tg is not None:
            self._tg.cancel_scope.cancel()


class _Sampler(Generic[A]):
    """One run's samples: requested, attempted (and retried), judged, and abandoned when they
    can no longer matter. The loop decides which samples to request and what a judged answer
    counts for; everything a sample records is recorded here.

    Attempts are made within a scope (:meth:`scope`): a voting step opens one per step, a
    calibration one for all its samples.
    """

    def __init__(
        self,
        recorder: _Recorder,
        *,
        task: Task[Any, A],
        policy: Policy,
        seed: int,
        client: Client,
        scheduler: Scheduler,
        prices: PriceTable,
        counters: _Counters,
        traffic: _Traffic,
        recording: Recording | None = None,
        verify_only: bool = False,
    ) -> None:
        self._recorder = recorder
        self._task = task
        self._policy = policy
        self._seed = seed
        self._seeds = _Seeds(seed)
        self._client = client
        self._model = client.model
        self._scheduler = scheduler
        self._prices = prices
        self._counters = counters
        self._traffic = traffic
        self._recording = recording
        self._verify_only = verify_only
        self._in_flight: dict[str, SampleRequest] = {}
        self._attempts: _Attempts | None = None

    @property
    def in_flight(self) -> int:
        """How many samples are requested and not yet judged (or abandoned)."""
        return len(self._in_flight)

    def scope(self) -> _Attempts:
        """Where attempts are made (``async with sampler.scope():``): leaving it stops those
        still running."""
        attempts = self._attempts = _Attempts(
            self._scheduler,
            self._client,
            self._recorder,
            self._recording,
            self._verify_only,
            self._policy.hedge,
        )
        return attempts

    def rearm(self) -> None:
        """A new step begins within the scope: let its first outcome yield, as a step's does."""
        assert self._attempts is not None
        self._attempts.rearm()

    async def request(self, step: int, ordinal: int, prompt: Prompt, temperature: float) -> str:
        """Record and launch sample ``ordinal`` of ``step``; its id."""
        sample_id = f"{step}:{ordinal}"
        model, max_tokens = self._model, self._policy.max_tokens
        request = SampleRequest(
            sample_id=sample_id,
            step=step,
            model=model,
            system=prompt.system,
            user=prompt.user,
            temperature=temperature,
            max_tokens=max_tokens,
            seed=self._seeds(sample_id),
        )
        recorder = self._recorder
        await recorder.emit(
            SampleRequested(
                run_id=recorder.run_id,
                seq=recorder.seq,
                ts=recorder.clock(),
                step=step,
                sample_id=sample_id,
                model=model,
                temperature=temperature,
                max_tokens=max_tokens,
            )
        )
        self._counters.samples += 1
        self._traffic.requested += 1
        self._launch(request, 1, 0.0)
        return sample_id

    def _launch(self, request: SampleRequest, attempt: int, delay: float) -> None:
        assert self._attempts is not None
        self._in_flight[request.sample_id] = request
        self._traffic.in_flight += 1
        self._attempts.launch(request, attempt, delay)

    async def next(self) -> tuple[SampleRequest, A | HedgeDue | None]:
        """The next sample judged: its request, and its answer (None: it was red-flagged), or
        :class:`HedgeDue` when it straggles (it stays in flight).

        A failed attempt is recorded and retried; one that may not be retried raises
        :class:`_StepFailed`, leaving the other samples in flight (see :meth:`abandon`).
        """
        attempts, recording = self._attempts, self._recording
        assert attempts is not None
        in_flight = self._in_flight
        while True:
            outcome = await attempts.next()
            if recording is not None:
                recording.delivered(outcome.sample_id, outcome.attempt)
            if outcome.attempt == HEDGE_TURN:
                threshold = attempts.threshold_of(outcome.sample_id)
                straggler = in_flight.get(outcome.sample_id)
                if straggler is None:
                    continue  # answered or abandoned since: nothing to hedge
                return straggler, HedgeDue(outcome.latency_s, threshold)
            request = in_flight.pop(outcome.sample_id, None)
            if request is None:
                continue  # abandoned after its task had answered: it counts for nothing
            self._traffic.in_flight -= 1
            if outcome.error is not None:
                await self._failed(request, outcome)
                continue
            completion = outcome.completion
            assert completion is not None
            return request, await self._judge(request, completion, outcome.latency_s)

    async def _judge(
        self, request: SampleRequest, completion: Completion, latency: float
    ) -> A | None:
        """Record a response; return its answer, or record its red flag and return None."""
        counters = self._counters
        cost = self._prices.cost(
            completion.model, completion.input_tokens, completion.output_tokens
        )
        counters.cost += cost
        counters.input_tokens += completion.input_tokens
        counters.output_tokens += completion.output_tokens
        step, sample_id, recorder = request.step, request.sample_id, self._recorder
        await recorder.emit(
            SampleReceived(
                run_id=recorder.run_id,
                seq=recorder.seq,
                ts=recorder.clock(),
                step=step,
                sample_id=sample_id,
                text=completion.text,
                model=completion.model,
                latency_s=latency,
                input_tokens=completion.input_tokens,
                output_tokens=completion.output_tokens,
                finish_reason=completion.finish_reason,
                temperature_sent=completion.temperature_sent,
                cost_usd=cost,
                response_id=completion.response_id or UNSET,
            )
        )
        judged = judge(self._task, self._policy.red_flags, completion)
        if not isinstance(judged, RedFlag):
            return judged
        counters.red_flags[judged.reason] += 1
        await recorder.emit(
            RedFlagged(
                **recorder.envelope(),
                step=step,
                sample_id=sample_id,
                reason=judged.reason,
                detail=judged.detail,
            )
        )
        return None

    async def _failed(self, request: SampleRequest, outcome: _Outcome) -> None:
        """Record a failed attempt and retry it after its backoff, or raise why the run fails.

        The backoff's jitter comes from the run's seed and the attempt, so a replay waits (and
        decides) the same.
        """
        error, attempt = outcome.error, outcome.attempt
        assert error is not None
        self._counters.failures += 1
        retry = error.retryable and attempt < self._policy.max_attempts
        delay = 0.0
        if retry:
            limits = self._scheduler.limits_for(self._model)
            draw = random.Random(sample_seed(self._seed, f"{request.sample_id}#{attempt}"))
            delay = backoff_delay(
                attempt,
                base_s=limits.backoff_base_s,
                cap_s=limits.backoff_cap_s,
                retry_after_s=error.retry_after,
                draw=draw.random(),
            )
        recorder = self._recorder
        await recorder.emit(
            SampleFailed(
                **recorder.envelope(),
                step=request.step,
                sample_id=request.sample_id,
                error_kind=error.kind,
                message=str(error),
                attempt=attempt,
                retryable=error.retryable,
                backoff_s=delay,
                retry_after_s=error.retry_after,
            )
        )
        if not retry:
            attempts = f"{attempt} attempt" + ("s" if attempt != 1 else "")
            raise _StepFailed(
                f"sample {request.sample_id} failed after {attempts}: {error.kind}: {error}"
            )
        self._traffic.retries += 1
        self._launch(request, attempt + 1, delay)

    def refire(self, sample_ids: Collection[str]) -> None:
        """Ask again whether these samples straggle (live only; see :meth:`_Watch.refire`)."""
        assert self._attempts is not None
        self._attempts.refire(sample_ids)

    def cancel(self, sample_ids: Collection[str], reason: str) -> None:
        """Stop these samples in flight and record each as cancelled for ``reason``
        (``"decided"``, ``"misspeculated"``, ``"k_changed"``)."""
        attempts, in_flight, recorder = self._attempts, self._in_flight, self._recorder
        assert attempts is not None
        attempts.drop(sample_ids)
        if len(sample_ids) > 1:
            # In the order abandon() records them, the order they came to be in flight (a
            # retried sample comes again when it is launched again).
            wanted = set(sample_ids)
            sample_ids = [sample_id for sample_id in in_flight if sample_id in wanted]
        for sample_id in sample_ids:
            request = in_flight.pop(sample_id)
            recorder.emit_now(
                SampleCancelled(
                    **recorder.envelope(), step=request.step, sample_id=sample_id, reason=reason
                )
            )
        self._traffic.in_flight -= len(sample_ids)
        self._counters.cancelled += len(sample_ids)

    def abandon(self, reason: str) -> None:
        """Stop the samples still in flight and record each as cancelled for ``reason``
        (``"decided"``: they can no longer matter; ``"run_cancelled"``)."""
        in_flight = self._in_flight
        if in_flight and self._attempts is not None:
            self._attempts.cancel()
        self._traffic.in_flight -= len(in_flight)
        if reason == "run_cancelled" and self._recorder.replaying:
            # An interrupted replay records nothing: the log stays as it was.
            in_flight.clear()
            return
        recorder = self._recorder
        for request in in_flight.values():
            recorder.emit_now(
                SampleCancelled(
                    **recorder.envelope(),
                    step=request.step,
                    sample_id=request.sample_id,
                    reason=reason,
                )
            )
        self._counters.cancelled += len(in_flight)
        in_flight.clear()
