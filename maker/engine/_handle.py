"""Live runs: a handle per started run, and the event stream its subscribers read.

The engine never waits for a subscriber. Each subscriber has a bounded buffer; when it falls
behind, the events it missed are dropped from its buffer, and it catches up from the log, which
always has them. A late subscriber reads what it missed from the log first. Either way it sees
every event once, in seq order.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, NamedTuple

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from events import AnyEvent, Event, Store

from ..core._errors import MakerError

if TYPE_CHECKING:
    from ._results import RunResult

BUFFER = 1024
"""Events a subscriber may have unread before it is switched to catching up from the log."""

RECENT = 256
"""Events a handle keeps in memory, so that a subscriber a little behind catches up without I/O."""


class RunStatistics(NamedTuple):
    """Counters of one live run."""

    run_id: str
    events: int
    steps: int
    samples: int
    subscribers: int
    catch_ups: int
    done: bool


class _Subscriber:
    __slots__ = ("behind", "receive", "send")

    def __init__(self, size: float) -> None:
        self.send: MemoryObjectSendStream[Event]
        self.receive: MemoryObjectReceiveStream[Event]
        self.send, self.receive = anyio.create_memory_object_stream[Event](max_buffer_size=size)
        self.behind = False


class CancelledBeforeStart(MakerError):
    """A handle's run was cancelled before it recorded anything (a resumption cut while it
    re-executed its log, or a run cancelled before its first turn): the log is as it was, and
    there is no result to give."""


class RunHandle:
    """A run started with :meth:`Engine.start`: its id, its live events, its result.

    >>> # async with Engine(log=path) as engine:
    >>> #     handle = engine.start(Hanoi(5))
    >>> #     async for event in handle.events():
    >>> #         ...
    >>> #     result = await handle.result()
    """

    def __init__(self, run_id: str, log: Store, buffer: int = BUFFER) -> None:
        self.run_id = run_id
        self._log = log
        self._buffer = buffer
        self._subscribers: list[_Subscriber] = []
        self._done = anyio.Event()
        self._result: RunResult | None = None
        self._error: BaseException | None = None
        self._scope: anyio.CancelScope | None = None
        self._cancel_requested = False
        self._events = 0
        self._steps = 0
        self._samples = 0
        self._catch_ups = 0
        self._last_seq = -1
        self._recent: deque[Event] = deque(maxlen=RECENT)

    # -- fed by the engine -------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        """An event sink: hand the event to every subscriber without ever waiting."""
        self._events += 1
        self._last_seq = event.seq
        self._recent.append(event)
        kind = type(event).__name__
        if kind == "StateChanged":
            self._steps += 1
        elif kind == "SampleRequested":
            self._samples += 1
        for sub in self._subscribers:
            if sub.behind:
                continue
            try:
                sub.send.send_nowait(event)
            except anyio.WouldBlock:
                # It will read what it missed from the log; the engine goes on.
                sub.behind = True

    async def drive(
        self,
        run: Callable[[], Awaitable[RunResult]],
        ended: Callable[[], RunResult | None],
    ) -> None:
        """Carry out ``run`` as this handle's run: the engine's side of the handle.

        :meth:`cancel` cancels it; what it returns, or the exception it raises, is what
        :meth:`result` gives. ``ended`` gives the result a cancelled run recorded with its end
        (None if it was cancelled before it began). A cancellation from outside propagates.
        """
        result: RunResult | None = None
        error: BaseException | None = None
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                if self._cancel_requested:
                    scope.cancel()  # cancelled before it had its first turn
                try:
                    result = await run()
                except anyio.get_cancelled_exc_class():
                    raise
                except Exception as exc:
                    error = exc
        finally:
            final = result if result is not None else ended()
            if final is None and error is None:
                error = CancelledBeforeStart(f"run {self.run_id} was cancelled before it started")
            self._finish(final, error)

    def _finish(self, result: RunResult | None, error: BaseException | None) -> None:
        self._result = result
        self._error = error
        self._recent.clear()  # the log has every event; a finished run holds no memory
        for sub in self._subscribers:
            sub.send.close()
        self._done.set()

    # -- the public face ---------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """Whether the run has ended (succeeded, failed or cancelled)."""
        return self._done.is_set()

    async def result(self) -> RunResult:
        """Wait for the run to end and return its result (re-raising a bug in task code)."""
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    async def cancel(self) -> RunResult:
        """Cancel the run and wait until it has recorded ``run_finished`` "cancelled".

        The run stays resumable. Cancelling a run that already ended changes nothing.
        """
        if not self.done:
            self._cancel_requested = True
            if self._scope is not None:
                self._scope.cancel()
        return await self.result()

    def statistics(self) -> RunStatistics:
        """Counters for tests, dashboards and the CLI."""
        return RunStatistics(
            run_id=self.run_id,
            events=self._events,
            steps=self._steps,
            samples=self._samples,
            subscribers=len(self._subscribers),
            catch_ups=self._catch_ups,
            done=self.done,
        )

    async def events(self, *, after_seq: int = -1) -> AsyncGenerator[AnyEvent, None]:
        """The run's events with seq > ``after_seq``, live, each once and in order, until the
        run's final ``run_finished``. Joining late or falling behind costs a read of the log.

        Close it to release the subscription at once: ``async with aclosing(handle.events())``
        (a plain ``break`` releases it only when the generator is finalized).
        """
        sub = _Subscriber(self._buffer if self._buffer > 0 else math.inf)
        self._subscribers.append(sub)
        if self.done:
            sub.send.close()
        last = after_seq
        try:
            if self._last_seq > last:
                # Joined late: what was published before is handed over now, not when the next
                # event comes (a run waiting for its model may publish nothing for long). What
                # is published meanwhile queues in the subscription, and is skipped below.
                async for missed in self._from_log(last):
                    last = missed.seq
                    yield missed
            while not (self.done and last >= self._last_seq):
                if sub.behind:
                    # Drop what is queued and take live events again; the log has the rest.
                    # No await between the two, so no event can slip between them.
                    self._catch_ups += 1
                    _drain(sub)
                    sub.behind = False
                    async for missed in self._from_log(last):
                        last = missed.seq
                        yield missed
                    continue
                try:
                    event = await sub.receive.receive()
                except anyio.EndOfStream:
                    async for missed in self._from_log(last):  # the run ended: all is logged
                        last = missed.seq
                        yield missed
                    return
                if event.seq > last + 1:  # joined late, or a gap: fill it from the log
                    async for missed in self._from_log(last):
                        last = missed.seq
                        yield missed
                if event.seq <= last:
                    continue
                last = event.seq
                yield event  # type: ignore[misc]  # the engine publishes the logged events
        finally:
            if sub in self._subscribers:
                self._subscribers.remove(sub)
            sub.send.close()
            sub.receive.close()

    async def _from_log(self, after_seq: int) -> AsyncGenerator[AnyEvent, None]:
        if self._last_seq <= after_seq:
            return
        recent = list(self._recent)
        if recent and recent[0].seq <= after_seq + 1:
            # Still in memory: no need to wait for a commit and read the file.
            for event in recent:
                if event.seq > after_seq:
                    yield event  # type: ignore[misc]  # the engine publishes the logged events
            return
        if self._log.mode == "w":
            await self._log.flush()
        async for event in self._log.read(self.run_id, after_seq=after_seq):
            yield event


def _drain(sub: _Subscriber) -> None:
    while True:
        try:
            sub.receive.receive_nowait()
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            return
