"""Workers sharing a PostgreSQL database: ``maker submit`` queues runs, ``maker worker`` claims
and runs them, and a dead worker's runs are resumed from the log by the others."""

from ._queue import ENTRYPOINT, Claim, QueuedRun, QueueMissingError, RunQueue
from ._worker import WorkerConfig, WorkerStopped, work

__all__ = [
    "ENTRYPOINT",
    "Claim",
    "QueueMissingError",
    "QueuedRun",
    "RunQueue",
    "WorkerConfig",
    "WorkerStopped",
    "work",
]
