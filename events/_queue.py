"""The bounded queue between a log's appenders and its writer, shared by both stores.

Appending never waits; an appender that honours the bound waits for room first (:meth:`room`,
:meth:`put`). The writer counts what it committed in ``_written`` and sets ``_progress`` after
each commit; a full queue asks it for a commit at once (:meth:`_hurry`). The counters are what
:meth:`statistics` reports.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import anyio
from anyio.abc import TaskGroup

from ._errors import LogClosedError
from ._types import Event


class LogStatistics(NamedTuple):
    """Counters of one open log.

    ``pending`` events (``pending_bytes`` of them) are appended but not yet committed;
    ``high_water`` and ``high_water_bytes`` are the most the queue ever held. ``waits`` counts
    the times an appender waited for room (``waited_s`` seconds in all).
    """

    appended: int
    written: int
    pending: int
    batches: int
    pending_bytes: int = 0
    high_water: int = 0
    high_water_bytes: int = 0
    waits: int = 0
    waited_s: float = 0.0


class AppendQueue:
    """The queue's bound, counters waiting for room, and the rounds of its writer's commits. A
    store sets ``_batch_size`` and ``_commit_interval``, calls :meth:`_init_queue` from its
    constructor and says in :meth:`_target` how a message names it."""

    _tg: TaskGroup | None

    _batch_size: int
    _commit_interval: float

    def _init_queue(self, max_pending: int, max_pending_bytes: int) -> None:
        self._max_pending = max_pending
        self._max_pending_bytes = max_pending_bytes
        self._tg = None
        self._wake = anyio.Event()
        self._urgent = anyio.Event()
        self._progress = anyio.Event()
        self._appended = 0
        self._written = 0
        self._batches = 0
        self._pending_bytes = 0
        self._high_water = 0
        self._high_water_bytes = 0
        self._waits = 0
        self._waited_s = 0.0
        self._closing = False
        self._failure: BaseException | None = None

    def _target(self) -> str:
        """The log as messages name it."""
        raise NotImplementedError

    @property
    def full(self) -> bool:
        """Whether the queue holds ``max_pending`` events or ``max_pending_bytes`` bytes."""
        return (
            self._appended - self._written >= self._max_pending
            or self._pending_bytes >= self._max_pending_bytes
        )

    async def room(self) -> None:
        """Wait until the queue has room for one more event (at once if it has).

        Nothing may be awaited between this and the :meth:`append` it makes room for, or
        another appender may take the room first.
        """
        if not self.full:
            return
        began = time.perf_counter()
        self._waits += 1
        self._hurry()  # a full queue is worth a commit now
        try:
            while self.full:
                self._check_failure()
                if self._tg is None or self._closing:
                    raise LogClosedError(f"{self._target()} is not open for appending")
                await self._progress.wait()
        finally:
            self._waited_s += time.perf_counter() - began

    async def _round(self, began: float) -> tuple[float, int]:
        """Wait for the writer's next round of commits: when it begins, and how many events it
        writes (those queued now; rows appended meanwhile wait for the next round).

        A burst gathers into one transaction (a commit costs more than a row), but only until
        one interval after the last round ``began``: under load, the time the writes
        themselves take counts against the interval, so rounds start at least once per
        interval and the batch is all that came meanwhile. A full batch or an urgent request
        starts the round at once.
        """
        await self._wake.wait()
        queued = self._appended - self._written
        wait = began + self._commit_interval - anyio.current_time()
        if queued < self._batch_size and wait > 0:
            with anyio.move_on_after(wait):
                await self._urgent.wait()
        began = anyio.current_time()
        self._wake = anyio.Event()
        if self._urgent.is_set():
            self._urgent = anyio.Event()
        return began, self._appended - self._written

    def _hurry(self) -> None:
        """Ask for a commit now."""
        self._urgent.set()

    def _check_failure(self) -> None:
        if self._failure is not None:
            raise LogClosedError(f"the log writer failed: {self._failure}") from self._failure

    async def put(self, event: Event) -> None:
        """Append an event once the queue has room for it: the way to honour the bound."""
        await self.room()
        self.append(event)

    def append(self, event: Event) -> None:
        """Queue an event for the writer (each store's own)."""
        raise NotImplementedError

    def statistics(self) -> LogStatistics:
        """Counters: appended, written (committed), pending, and batches committed."""
        return LogStatistics(
            appended=self._appended,
            written=self._written,
            pending=self._appended - self._written,
            batches=self._batches,
            pending_bytes=self._pending_bytes,
            high_water=self._high_water,
            high_water_bytes=self._high_water_bytes,
            waits=self._waits,
            waited_s=self._waited_s,
        )
