"""The run queue: which runs wait and which worker holds each, in pgqueuer's tables beside the
log's, in the same PostgreSQL database.

pgqueuer does the queue's part: its schema, enqueueing, the claim (one statement that picks
queued jobs, and picked ones whose heartbeat is older than the lease, with ``FOR UPDATE SKIP
LOCKED``, and marks them picked by this worker), heartbeats, and moving a finished job to its
log table. A job carries what to run (the task, its parameters, the run options and the run's
id), never what happened: the run's events, its decisions among them, are only in the event log,
and a worker that claims a run another one held resumes it from there.

pgqueuer is imported when a queue is first opened: ``pip install 'maker[postgres]'``.
"""

from __future__ import annotations

import datetime
import uuid
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Self

import msgspec

from events import EventLogError, NotALogError, redact_url
from events._postgres import (
    StoreUnavailableError,
    connect,
    database_errors,
    identify,
)
from events._postgres import _close_quietly as _close

from .._settings import RunSettings

if TYPE_CHECKING:
    from pgqueuer.models import Job
    from pgqueuer.queries import Queries

__all__ = ["ENTRYPOINT", "Claim", "QueueMissingError", "QueuedRun", "RunQueue"]

ENTRYPOINT = "maker.run"
"""The pgqueuer entrypoint of a queued run."""

_LOCK_SPACE = 0x4D414B52  # the log's advisory lock space ("MAKR")
_QUEUE_LOCK = -2  # held while the queue's tables are made (the log's schema uses -1)


class QueueMissingError(EventLogError):
    """The database holds no run queue (and was not to be given one)."""

    def __init__(self, url: str) -> None:
        super().__init__(f"{url} holds no run queue yet; 'maker submit --log {url} ...' makes one")
        self.url = url


class QueuedRun(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a job says to run: the run's id, its task and the run options."""

    run_id: str
    task: str
    task_params: dict[str, Any]
    settings: RunSettings


class Claim(NamedTuple):
    """A run in the queue: waiting (``queued``), held (``picked``, by ``owner``, its lease
    last renewed ``renewed_s`` seconds ago) or refused by a worker (``failed``)."""

    job_id: int
    run_id: str
    task: str
    task_params: dict[str, Any]
    status: str
    owner: str | None
    renewed_s: float
    attempts: int


def _pgqueuer() -> Any:
    try:
        import pgqueuer
    except ImportError:
        return None
    return pgqueuer


class RunQueue:
    """The run queue of the database at ``url``; an async context manager.

    ``create`` makes pgqueuer's tables when the database holds none (``maker submit`` and
    ``maker worker`` do; ``maker runs`` only reads). A database whose maker log is of a newer
    schema version, or whose tables are another application's, is refused before anything is
    written.
    """

    def __init__(self, url: str, *, create: bool, timeout: float = 10.0) -> None:
        self.url = url
        self.shown = redact_url(url)
        self._create = create
        self._timeout = timeout
        self._conn: Any = None
        self._queries: Queries | None = None
        self.exists = False
        """Whether the database holds a queue (after entering; always, when ``create``)."""

    async def __aenter__(self) -> Self:
        pgqueuer = _pgqueuer()
        if pgqueuer is None:
            raise StoreUnavailableError(
                self.shown, "run queues need pgqueuer (pip install 'maker[postgres]')"
            )
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        conn = await connect(self.url, timeout=self._timeout)
        try:
            await identify(conn, self.shown)  # a newer log, another application's: refused
            queries = Queries(AsyncpgDriver(conn))
            self.exists = await queries.schema_is_installed()
            if not self.exists and self._create:
                async with conn.transaction():
                    # Two processes making the queue at once: the second finds it made.
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock($1, $2)", _LOCK_SPACE, _QUEUE_LOCK
                    )
                    if not await queries.schema_is_installed():
                        await queries.install()
                self.exists = True
        except database_errors() as exc:
            await _close(conn)
            raise StoreUnavailableError(self.shown, _detail(exc)) from None
        except BaseException:
            await _close(conn)
            raise
        self._conn = conn
        self._queries = queries
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn, self._queries = self._conn, None, None
        await _close(conn)

    @property
    def channel(self) -> str:
        """The channel pgqueuer notifies when the queue changes."""
        return str(self._q().qbe.settings.channel)

    def _q(self) -> Queries:
        if self._queries is None:
            raise EventLogError(f"the run queue of {self.shown} is not open")
        return self._queries

    async def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A query of pgqueuer's, its database failure one line naming ``what``."""
        try:
            return await fn(*args, **kwargs)
        except database_errors() as exc:
            raise EventLogError(f"{what} in {self.shown} failed: {_detail(exc)}") from exc

    async def submit(self, run: QueuedRun) -> int:
        """Queue ``run``; its job id."""
        ids = await self._call(
            "queueing a run",
            self._q().enqueue,
            ENTRYPOINT,
            msgspec.json.encode(run),
            dedupe_key=run.run_id,
        )
        return int(ids[0])

    async def claim(self, owner: uuid.UUID, n: int, lease_s: float) -> list[tuple[Job, QueuedRun]]:
        """Up to ``n`` runs for ``owner``: queued ones, or held ones whose lease ran out."""
        from pgqueuer.ports.repository import EntrypointExecutionParameter
        from pgqueuer.types import QueueManagerId

        jobs = await self._call(
            "claiming runs",
            self._q().dequeue,
            batch_size=n,
            entrypoints={ENTRYPOINT: EntrypointExecutionParameter(concurrency_limit=0)},
            queue_manager_id=QueueManagerId(owner),
            global_concurrency_limit=None,
            heartbeat_timeout=datetime.timedelta(seconds=lease_s),
        )
        return [(job, msgspec.json.decode(job.payload or b"", type=QueuedRun)) for job in jobs]

    async def renew(self, jobs: list[Job]) -> None:
        """Renew the lease of each of ``jobs`` (a heartbeat)."""
        if jobs:
            await self._call("renewing leases", self._q().update_heartbeat, [j.id for j in jobs])

    async def release(
        self, job: Job, status: Literal["successful", "failed"], error: Exception | None = None
    ) -> None:
        """A job is over: ``successful`` (its run finished; the log says how) leaves the
        queue; ``failed`` (no worker could run it as given) stays, held, with ``error``."""
        from pgqueuer.models import TracebackRecord

        record = TracebackRecord.from_exception(error, job.id) if error is not None else None
        await self._call("releasing a run", self._q().log_jobs, [(job, status, record)])

    async def retry(self, job: Job, delay_s: float, error: Exception) -> None:
        """Put ``job`` back in the queue, claimable after ``delay_s``."""
        from pgqueuer.models import TracebackRecord

        await self._call(
            "re-queueing a run",
            self._q().retry_job,
            job,
            datetime.timedelta(seconds=delay_s),
            TracebackRecord.from_exception(error, job.id),
        )

    async def outstanding(self) -> int:
        """Runs queued or held: what a draining worker waits for."""
        sizes = await self._call("reading the queue", self._q().queue_size)
        return sum(
            s.count
            for s in sizes
            if s.entrypoint == ENTRYPOINT and s.status in ("queued", "picked")
        )

    async def claims(self) -> list[Claim]:
        """Every run in the queue (a finished run's job has left it)."""
        q = self._q()
        out: list[Claim] = []
        now = await self._call("reading the clock", self._conn.fetchval, "SELECT now()")
        offset = 0
        while True:
            jobs = await self._call(
                "reading the queue", q.browse_queue, limit=500, offset=offset,
                entrypoints=[ENTRYPOINT],
            )  # fmt: skip
            for job in jobs:
                run = msgspec.json.decode(job.payload or b"", type=QueuedRun)
                out.append(
                    Claim(
                        int(job.id),
                        run.run_id,
                        run.task,
                        run.task_params,
                        str(job.status),
                        None if job.queue_manager_id is None else str(job.queue_manager_id),
                        max(0.0, (now - job.heartbeat).total_seconds()),
                        int(job.attempts),
                    )
                )
            if len(jobs) < 500:
                return out
            offset += len(jobs)

    async def listen(self, wake: Any) -> Any:
        """A connection of its own on which every change of the queue calls ``wake()``."""
        conn = await connect(self.url, timeout=self._timeout)

        def notified(_conn: Any, _pid: int, _channel: str, _payload: str) -> None:
            wake()

        try:
            await conn.add_listener(self.channel, notified)
        except BaseException:
            await _close(conn)
            raise
        return conn


def _detail(exc: BaseException) -> str:
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return " ".join(str(text).split()) or type(exc).__name__


def missing(url: str) -> NotALogError:
    """The error of a database that holds neither a log nor a queue."""
    return NotALogError(redact_url(url), "the database holds no maker log and no run queue")
