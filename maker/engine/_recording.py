"""A recorded run, as the engine needs it to re-execute: the events it must reproduce, and the
sample outcomes to serve in the order they were recorded, read from the log as it goes.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import aclosing, asynccontextmanager
from typing import Any

import anyio
import msgspec

from events import (
    EVENT_TYPES,
    OBSERVATIONAL_TYPES,
    AnyEvent,
    Event,
    RunFinished,
    RunInfo,
    RunResumed,
    RunStarted,
    SampleCancelled,
    SampleFailed,
    SampleHedged,
    SampleReceived,
    StepStarted,
    Store,
)

from ..core._client import Completion
from ..core._errors import ClientError, MakerError

IGNORED_FIELDS = frozenset(
    {
        "seq",
        "ts",
        "latency_s",
        "wall_s",
        "in_flight_s",
        "threshold_s",
        "version",
        "cost_usd",
        "limits",
    }
)
"""Fields a re-execution need not reproduce: positions and times, durations (a hedge's wait and
threshold among them: a replay sends a hedge where the log has it), the package version,
prices (derived from a price table that may change) and the scheduler's limits (a resumed run
may run under other limits; the backoff it draws is compared in ``sample_failed``)."""


class Divergence(MakerError):
    """A re-execution produced an event that differs from the recorded one.

    ``seq`` is the recorded event's position; ``expected`` and ``got`` are the two events as
    JSON (``got`` is None when the re-execution stopped short of the recording).
    """

    def __init__(self, seq: int, expected: dict[str, Any], got: dict[str, Any] | None) -> None:
        if got is None:
            detail = f"the replay ended before recorded {expected.get('type')}"
        else:
            fields = sorted(
                k
                for k in set(expected) | set(got)
                if k not in IGNORED_FIELDS and expected.get(k) != got.get(k)
            )
            detail = f"expected {expected.get('type')}, got {got.get('type')}"
            if expected.get("type") == got.get("type"):
                detail = f"{expected.get('type')} differs in {', '.join(fields)}"
        super().__init__(f"replay diverges at seq {seq}: {detail}")
        self.seq = seq
        self.expected = expected
        self.got = got


class _RecordingEnded(Exception):
    """A verification reached the end of the recording (a run that never finished)."""


_COMPARED: dict[type[Event], Callable[[Event], Any]] = {}


def _compared(cls: type[Event]) -> Callable[[Event], Any]:
    """Reads the fields of a ``cls`` event that a re-execution must reproduce, at once."""
    getter = _COMPARED.get(cls)
    if getter is None:
        names = [f.name for f in msgspec.structs.fields(cls) if f.name not in IGNORED_FIELDS]
        getter = _COMPARED[cls] = operator.attrgetter(*names)
    return getter


def _same(expected: Event, event: Event) -> bool:
    """Whether ``event`` equals ``expected`` field for field, the ignored fields aside.

    True only where :func:`comparable` agrees (equal values have equal JSON); False also for
    what only the full comparison can settle (a tuple against a list), which the caller then
    makes.
    """
    cls = type(event)
    if type(expected) is not cls:
        return False
    getter = _compared(cls)
    return bool(getter(expected) == getter(event))


def comparable(event: Event) -> dict[str, Any]:
    """The event as JSON without the fields a re-execution need not reproduce."""
    data = msgspec.to_builtins(event)
    assert isinstance(data, dict)
    for name in IGNORED_FIELDS:
        data.pop(name, None)
    return data


class _Decisions:
    """:func:`decision_events` as a push filter, so that a log can be read one event at a time.

    An interruption (``sample_cancelled`` events with reason ``run_cancelled``, then a cancelled
    ``run_finished``) is held back until what follows it is known: a ``run_resumed`` marker drops
    it, anything else releases it. That lookahead is the samples in flight when the run was
    cancelled, so it stays within one step.
    """

    __slots__ = ("_closed", "_out", "held")

    def __init__(self, out: Callable[[AnyEvent], None]) -> None:
        self._out = out
        self.held: list[AnyEvent] = []
        """The interruption held back, if any: a reader with nothing held may pass a decision
        event on without :meth:`push` (the recording's short path does)."""
        self._closed = False  # held ends with a cancelled run_finished

    def push(self, event: AnyEvent) -> None:
        if type(event) in _DECISIONS and not self.held:
            self._out(event)  # the usual case: a decision, and nothing held back
            return
        if isinstance(event, OBSERVATIONAL_TYPES):
            return
        if self._closed:
            if isinstance(event, RunResumed):
                # Drop the interruption this resumption continues from.
                self.held.clear()
                self._closed = False
                return
            self._release()
        if isinstance(event, RunResumed):
            # Not after a cancellation (a crash): nothing to drop, and the marker itself is no
            # decision. What is held stays held: a later resumption may still drop it.
            return
        if isinstance(event, SampleCancelled) and event.reason == "run_cancelled":
            self.held.append(event)
            return
        if isinstance(event, RunFinished) and event.status == "cancelled":
            self.held.append(event)
            self._closed = True
            return
        if self.held:
            self._release()
        self._out(event)

    def end(self, *, drop_interruption: bool) -> None:
        """The events ran out. ``drop_interruption``: a run cancelled at its end resumes from
        before its cancellation, so a recording leaves that interruption out too."""
        if not (drop_interruption and self._closed):
            self._release()
        self.held.clear()
        self._closed = False

    def _release(self) -> None:
        held, self.held, self._closed = self.held, [], False
        for event in held:
            self._out(event)


_DECISIONS: frozenset[type[Event]] = frozenset(EVENT_TYPES) - {
    *OBSERVATIONAL_TYPES,
    RunResumed,
    SampleCancelled,
    RunFinished,
}
"""The event types :class:`_Decisions` passes on as they come (when nothing is held back)."""


def decision_events(events: Iterable[AnyEvent]) -> list[AnyEvent]:
    """The events a re-execution must reproduce, in order.

    Leaves out observational events (waits, breaker changes) and interruptions: a
    ``run_resumed`` marker, and the ``run_finished`` of a cancellation it follows with the
    samples the cancellation abandoned.
    """
    out: list[AnyEvent] = []
    decisions = _Decisions(out.append)
    for event in events:
        decisions.push(event)
    decisions.end(drop_interruption=False)
    return out


Key = tuple[str, int]
"""A sample attempt: (sample_id, attempt)."""

HEDGE_TURN = 0
"""The attempt number of a turn that says "hedge this sample" (real attempts count from 1): a
recorded ``sample_hedged`` is queued as ``(straggler, HEDGE_TURN)``, and a live run's watcher
tells the loop of a straggler under the same key."""


class EventBatches:
    """A run's events read a batch at a time by ``read`` on a worker thread: a read that does
    I/O (SQLite and its checks, a helper process's pipe) never holds up the event loop, and
    costs a thread hop per batch rather than per event. ``read`` returns an empty list at the
    end; it is called from one thread at a time."""

    __slots__ = ("_read",)

    def __init__(self, read: Callable[[], list[AnyEvent]]) -> None:
        self._read = read

    async def next_batch(self) -> list[AnyEvent]:
        """The next batch; empty at the end."""
        return await anyio.to_thread.run_sync(self._read)


class Recording:
    """One run's recorded events, prepared for re-execution, read in seq order as it goes.

    The engine compares every event it emits with the recorded one at the same position
    (:meth:`expected_at`, :meth:`check`), and its samples are served their outcomes from the
    recording in the recorded order (:meth:`next_turn`, :meth:`take_now`, :meth:`delivered`,
    recorded hedges among them as :data:`HEDGE_TURN`), so the decisions follow the same path.
    What the recording does not hold (the samples of a crashed or cancelled run's future) is
    left to the live client when resuming.

    The events are read lazily: the recording holds a window from the next event to reproduce
    to the end of the step it belongs to (:meth:`ready` reads on), and the outcomes of that
    window not yet delivered. A million-step log is re-executed in the memory of one step.
    ``Recording(events)`` reads a sequence already in memory; :meth:`open` reads a log.

    Known up front: :attr:`started`, :attr:`run_id`, :attr:`next_seq`, :attr:`finished` and
    :attr:`resumable`. How many events there are to reproduce is known only at the end
    (:meth:`length` reads the rest).
    """

    def __init__(self, events: Sequence[AnyEvent]) -> None:
        if not events or not isinstance(events[0], RunStarted):
            raise MakerError("a recording must start with the run's run_started event")
        last = events[-1]
        self._setup(
            events[0],
            last.seq + 1,
            last if isinstance(last, RunFinished) else None,
            iter(events),
        )
        self._events: Sequence[AnyEvent] | None = events

    @classmethod
    @asynccontextmanager
    async def open(cls, log: Store, run_id: str | None = None) -> AsyncIterator[Recording]:
        """The recording of one run of ``log`` (the only run when ``run_id`` is None), read
        from the log as the re-execution needs it; the read ends when the context does.

        The run's start, end and last seq come from :meth:`events.EventLog.run`; events
        appended after that (a resumption's own) are not part of the recording.
        """
        info = await log.run(run_id)
        async with aclosing(log.read(info.run_id)) as source:
            yield cls.of_run(info, source)

    @classmethod
    def of_run(
        cls,
        info: RunInfo,
        events: Iterator[AnyEvent] | AsyncIterator[AnyEvent] | EventBatches,
    ) -> Recording:
        """The recording of the run ``info`` describes, read from ``events`` (the run's events
        in seq order) as the re-execution needs them.

        ``events`` may be a plain iterator (events in memory): then each step is read at once,
        without suspending. A read that does I/O (SQLite, a pipe) comes as :class:`EventBatches`
        read off the event loop's thread, a batch at a time, and consumed as fast as a plain
        iterator in between; or as an async iterator, an event at a time. Events after
        ``info.last_seq`` are not part of the recording.
        """
        finished = info.finished
        if finished is not None and finished.seq != info.last_seq:
            finished = None  # the run went on after that end (it was resumed)
        recording = cls.__new__(cls)
        recording._setup(info.started, info.last_seq + 1, finished, events)
        recording._events = None
        return recording

    def _setup(
        self,
        started: RunStarted,
        next_seq: int,
        finished: RunFinished | None,
        source: Iterator[AnyEvent] | AsyncIterator[AnyEvent] | EventBatches,
    ) -> None:
        self.started: RunStarted = started
        self.run_id = started.run_id
        self.next_seq = next_seq
        """The seq a resumption appends first."""
        self.finished: RunFinished | None = finished
        """The run's ``run_finished`` when it is the last event recorded."""
        self.policy_changed = False
        """Set to re-execute under a different policy: run_started's policy is not compared.
        (:meth:`Engine.verify` given a policy compares so without setting it.)"""
        self._taken = False  # a re-execution has read from this recording
        # Three ways to be read: a plain iterator (events in memory), batches read elsewhere and
        # then consumed as a plain iterator, or an async iterator of events.
        self._batches = source if isinstance(source, EventBatches) else None
        self._sync: Iterator[AnyEvent] | None = (
            source if isinstance(source, Iterator) else iter(()) if self._batches else None
        )
        self._async = source if isinstance(source, AsyncIterator) else None
        self._last_seq = next_seq - 1
        self._decisions = _Decisions(self._admit)
        self._window: deque[AnyEvent] = deque()
        self._base = 0  # the position of _window[0]
        self._read = 0  # decision events read so far: the position after the window
        self._boundary = -1  # the position of the last step_started read
        self._ended = False  # every event has been read
        self._counting = False  # length(): count the rest, keep none of it
        self._attempts: dict[str, int] = {}  # samples whose attempts failed, by id
        self._queue: deque[Key] = deque()  # outcomes read and not yet delivered, in order
        self._outcomes: dict[Key, SampleReceived | SampleFailed] = {}
        self._lock = anyio.Lock()

    def fresh(self) -> Recording:
        """This recording, ready to be re-executed from its first event.

        A recording of events in memory gives a copy of itself each time, so that a
        re-execution leaves the caller's recording as it was. One read from a log
        (:meth:`open`, :meth:`of_run`) is read once, as the re-execution goes: it gives itself
        the first time and refuses a second re-execution.
        """
        if self._events is not None:
            copy = Recording(self._events)
            copy.policy_changed = self.policy_changed
            return copy
        if self._taken:
            raise MakerError(
                f"the recording of run {self.run_id} was read by an earlier re-execution; "
                "open it again"
            )
        self._taken = True
        return self

    @property
    def resumable(self) -> bool:
        """Whether the run can continue: it never finished, or it was cancelled."""
        return self.finished is None or self.finished.status == "cancelled"

    # -- reading ---------------------------------------------------------------------------

    def _admit(self, event: AnyEvent) -> None:
        """Take in the next decision event (the filter's output)."""
        position = self._read
        self._read += 1
        if self._counting:
            return
        self._window.append(event)
        if isinstance(event, StepStarted):
            self._boundary = position
        elif isinstance(event, SampleReceived | SampleFailed):
            attempts = self._attempts
            sample_id = event.sample_id
            attempt = attempts.get(sample_id, 0) + 1
            if isinstance(event, SampleFailed):
                if event.attempt != attempt:
                    raise MakerError(
                        f"seq {event.seq}: sample {sample_id} records attempt "
                        f"{event.attempt} where {attempt} was expected"
                    )
                attempts[sample_id] = attempt
            elif attempt > 1:
                # Answered: no attempt of it follows, so only samples in flight are counted (a
                # pipelined run interleaves steps; a million-step run keeps no more).
                del attempts[sample_id]
            key = (sample_id, attempt)
            self._queue.append(key)
            self._outcomes[key] = event
        elif isinstance(event, SampleHedged):
            # The loop sent a hedge here, when its straggler's turn to be hedged came: the turn
            # is served like an outcome, in its recorded place.
            self._queue.append((event.straggler, HEDGE_TURN))
        elif isinstance(event, SampleCancelled):
            self._attempts.pop(event.sample_id, None)

    async def _read_one(self) -> None:
        """Read one more event of the log into the window (or find that there is none)."""
        if self._sync is not None:
            if not self._read_now():
                await self._refill()
            return
        assert self._async is not None
        self._push(await anext(self._async, None))

    def _read_now(self) -> bool:
        """:meth:`_read_one` from a plain iterator: no await, so no lock is needed either.
        False when a batch ran out and the next must be read first (:meth:`_refill`)."""
        assert self._sync is not None
        event = next(self._sync, None)
        if event is None and self._batches is not None:
            return False
        self._push(event)
        return True

    async def _refill(self) -> None:
        """The next batch of a batched read, read off the loop's thread; at the end of the
        read, an empty one, after which the plain iterator's end is the recording's end."""
        assert self._batches is not None
        batch = await self._batches.next_batch()
        if not batch:
            self._batches = None
        self._sync = iter(batch)

    def _read_step(self, position: int) -> bool:
        """:meth:`ready` from a plain iterator, with the usual event taken on a short path.
        False when a batch ran out first (then :meth:`_refill` and call again)."""
        source, decisions, admit = self._sync, self._decisions, self._admit
        assert source is not None
        last = self._last_seq
        batched = self._batches is not None
        while not self._ended and self._boundary <= position:
            event = next(source, None)
            if (
                event is not None
                and 0 < event.seq <= last
                and type(event) in _DECISIONS
                and not decisions.held
            ):
                admit(event)  # what _push and _Decisions.push would do with it
            elif event is None and batched:
                return False
            else:
                self._push(event)
        return True

    def _push(self, event: AnyEvent | None) -> None:
        if event is None or event.seq > self._last_seq:
            self._ended = True
            self._decisions.end(drop_interruption=True)
            return
        if event.seq == 0 and not isinstance(event, RunStarted):
            raise MakerError("a recording must start with the run's run_started event")
        self._decisions.push(event)

    async def ready(self, position: int) -> None:
        """Read on until the window holds the event at ``position`` and the rest of its step.

        The engine awaits this before it emits the event at ``position``: then every event it
        emits without waiting (cancellations after a decision, the run's end) is in the window.
        Outcomes recorded past it are read on for (:meth:`read_outcome`).
        """
        if self._ended or self._boundary > position:
            return
        if self._sync is not None:
            # The events in hand are read at once. Only a batch that runs out takes the lock:
            # a refill awaits, and another reader may come meanwhile.
            if self._read_step(position):
                return
            async with self._lock:
                while not self._read_step(position):
                    await self._refill()
            return
        async with self._lock:
            while not self._ended and self._boundary <= position:
                await self._read_one()

    def holds(self, position: int) -> bool:
        """Whether :meth:`ready` for ``position`` has nothing to read (a check without an
        await, for the engine's every event)."""
        return self._ended or self._boundary > position

    def pending(self, position: int) -> bool:
        """Whether recorded events remain to be reproduced from ``position`` on.

        True while that is not known yet (the window stops short of ``position``).
        """
        return position - self._base < len(self._window) or not self._ended

    def expected_at(self, position: int) -> AnyEvent | None:
        """The recorded event to reproduce at ``position``; None when the recording ended
        before it. The window must hold it (see :meth:`ready`)."""
        index = position - self._base
        if 0 <= index < len(self._window):
            return self._window[index]
        if index >= 0 and self._ended:
            return None
        raise MakerError(f"position {position} is not in the recording's window (call ready)")

    async def length(self) -> int:
        """How many events a re-execution must reproduce. Reads the rest of the log, counting
        and keeping nothing: call it once the re-execution is over."""
        self._counting = True
        if self._sync is not None and self._batches is None:
            while not self._ended:
                self._read_now()
            return self._read
        async with self._lock:
            while not self._ended:
                await self._read_one()
        return self._read

    # -- outcomes --------------------------------------------------------------------------

    async def read_outcome(self) -> None:
        """Read on until the window holds an outcome not yet delivered, or the recording ends:
        a pipelined step's outcomes may come after later steps' starts."""
        if self._sync is not None and self._batches is None:
            while not self._ended and not self._queue:
                self._read_now()
            return
        async with self._lock:
            while not self._ended and not self._queue:
                await self._read_one()

    def next_turn(self) -> Key | None:
        """The attempt whose recorded outcome is to be served next, if the window holds one:
        an attempt waiting for it can be served at once (:meth:`take_now`)."""
        return self._queue[0] if self._queue else None

    def take_now(self, sample_id: str, attempt: int) -> Completion | ClientError:
        """The recorded outcome of the attempt :meth:`next_turn` names, without waiting."""
        key = (sample_id, attempt)
        if not self._queue or self._queue[0] != key:
            raise MakerError(f"sample {sample_id} attempt {attempt} is not next in the recording")
        return _outcome(self._outcomes[key])

    @property
    def exhausted(self) -> bool:
        """Whether every recorded event was read and every recorded outcome delivered: what
        is still to be sampled is the live model's."""
        return self._ended and not self._queue

    def delivered(self, sample_id: str, attempt: int) -> None:
        """The engine consumed this outcome: let the next recorded one through."""
        key = (sample_id, attempt)
        if self._queue and self._queue[0] == key:
            self._queue.popleft()
            self._outcomes.pop(key, None)

    # -- comparing -------------------------------------------------------------------------

    def check(self, position: int, event: Event, *, compare_policy: bool = True) -> None:
        """Raise :class:`Divergence` unless ``event`` reproduces the recorded event there.

        A reproduced event leaves the window. ``compare_policy=False`` (or
        :attr:`policy_changed`) leaves run_started's policy out of the comparison.
        """
        expected = self.expected_at(position)
        if expected is None:
            raise MakerError(f"the recording ended before position {position}")
        policy_too = compare_policy and not self.policy_changed
        if not ((policy_too or type(event) is not RunStarted) and _same(expected, event)):
            self._compare(expected, event, policy_too)
        self._advance(position)

    def _compare(self, expected: Event, event: Event, policy_too: bool) -> None:
        """The full comparison, as JSON: raise :class:`Divergence` where they differ."""
        got = comparable(event)
        want = comparable(expected)
        if not policy_too and isinstance(event, RunStarted):
            # The caller changed the policy on purpose: find where behaviour changes instead.
            got.pop("policy", None)
            want.pop("policy", None)
        if got != want:
            raise Divergence(
                expected.seq, msgspec.to_builtins(expected), msgspec.to_builtins(event)
            )

    def reproduce(
        self, position: int, event: Event, *, build: bool = False, compare_policy: bool = True
    ) -> Event | None:
        """:meth:`check` ``event`` against the recorded one at ``position``: raise
        :class:`Divergence` unless it reproduces it.

        With ``build``, return the event as the log has it placed: with the recorded seq and
        ts (for the sinks, which see every event in seq order). Otherwise return None, and
        build nothing more when the event reproduces the recorded one, as it usually does.
        """
        index = position - self._base
        window = self._window
        expected = window[index] if 0 <= index < len(window) else self.expected_at(position)
        if expected is None:
            raise MakerError(f"the recording ended before position {position}")
        policy_too = compare_policy and not self.policy_changed
        if (policy_too or type(event) is not RunStarted) and _same(expected, event):
            self._advance(position)
        else:
            event = msgspec.structs.replace(event, seq=expected.seq, ts=expected.ts)
            self._compare(expected, event, policy_too)
            self._advance(position)
            return event if build else None
        if not build:
            return None
        return msgspec.structs.replace(event, seq=expected.seq, ts=expected.ts)

    def _advance(self, position: int) -> None:
        """The event at ``position`` was reproduced: it leaves the window."""
        while self._base <= position and self._window:
            self._window.popleft()
            self._base += 1


def _outcome(event: SampleReceived | SampleFailed) -> Completion | ClientError:
    if isinstance(event, SampleReceived):
        return Completion(
            text=event.text,
            finish_reason=event.finish_reason,
            input_tokens=event.input_tokens,
            output_tokens=event.output_tokens,
            model=event.model,
            temperature_sent=event.temperature_sent,
            response_id=event.response_id if type(event.response_id) is str else None,
        )
    return ClientError(
        event.message,
        kind=event.error_kind,
        retryable=event.retryable,
        retry_after=event.retry_after_s,
    )
