"""Errors of the event log. One root, narrow subclasses with context."""

from __future__ import annotations

import os
from collections.abc import Sequence


class EventLogError(Exception):
    """Root of every error raised by :mod:`events`."""


class InvalidOptionError(EventLogError, ValueError):
    """An option of the log or of its encoder is out of its range (a ``ValueError`` too, for
    callers that catch those)."""

    def __init__(self, name: str, expected: str, value: object) -> None:
        super().__init__(f"{name} must be {expected}, got {value!r}")
        self.name = name
        self.expected = expected
        self.value = value


class UnencodableEventError(EventLogError, TypeError):
    """An event holds a value its field's type cannot, or is no event at all, so the log's
    format cannot encode it (a ``TypeError`` too, for callers that catch those)."""


class NotALogError(EventLogError):
    """The file exists but is not a maker event log."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"{path} is not a maker event log ({detail})")
        self.path = path
        self.detail = detail


class DamagedLogError(EventLogError):
    """The file says it is a maker log, but SQLite cannot read it (cut short, overwritten)."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"{path}: SQLite cannot read the file: {detail}")
        self.path = path
        self.detail = detail


class SchemaVersionError(EventLogError):
    """The log was written with a schema version this code does not know."""

    def __init__(self, path: str, found: int, supported: int) -> None:
        super().__init__(
            f"{path} has log schema version {found}; this maker reads version {supported}"
        )
        self.path = path
        self.found = found
        self.supported = supported


class UnknownRunError(EventLogError):
    """No run with that id is in the log (``run_id`` is the id asked for)."""

    def __init__(self, run_id: str, message: str | None = None) -> None:
        super().__init__(message if message is not None else f"no run {run_id!r} in the log")
        self.run_id = run_id


class RunNotNamedError(UnknownRunError):
    """No run was named, and the log does not hold exactly one to take.

    ``run_ids`` are the runs it holds (``run_id`` is empty: none was asked for).
    """

    def __init__(self, run_ids: Sequence[str]) -> None:
        if not run_ids:
            message = "the log holds no runs"
        else:
            message = f"the log holds {len(run_ids)} runs; name one with --run ({_listed(run_ids)})"
        super().__init__("", message)
        self.run_ids = tuple(run_ids)


class AmbiguousRunError(UnknownRunError):
    """The id asked for is no run's whole id and the start of several runs' ids."""

    def __init__(self, run_id: str, matches: Sequence[str]) -> None:
        super().__init__(
            run_id,
            f"{run_id!r} is the start of {len(matches)} runs' ids ({_listed(matches)}); "
            "give more of the one you mean",
        )
        self.matches = tuple(matches)


def _listed(run_ids: Sequence[str], most: int = 5) -> str:
    shown = ", ".join(run_ids[:most])
    return shown if len(run_ids) <= most else f"{shown}, and {len(run_ids) - most} more"


class SequenceError(EventLogError):
    """An appended event does not continue its run's sequence."""

    def __init__(self, run_id: str, expected: int, got: int) -> None:
        super().__init__(f"run {run_id}: expected seq {expected}, got {got}")
        self.run_id = run_id
        self.expected = expected
        self.got = got


class BrokenLogError(EventLogError):
    """A run in the log failed its integrity check; replay and resume refuse it.

    ``seq`` is the first bad seq (None when SQLite could not read the run at all) and
    ``problem`` says what is wrong, in one line.
    """

    def __init__(self, path: str, run_id: str, seq: int | None, problem: str) -> None:
        where = f" at seq {seq}" if seq is not None else ""
        super().__init__(
            f"{path}: run {run_id} is broken{where}: {problem} (see 'maker verify {path}')"
        )
        self.path = path
        self.run_id = run_id
        self.seq = seq
        self.problem = problem


class CorruptEventError(EventLogError):
    """A stored event could not be decoded."""


class ReadOnlyLogError(EventLogError):
    """The log cannot be written: the file or its directory is read-only. Nothing was written.

    (The directory matters: SQLite keeps the write-ahead log beside the file.)
    """

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"{path} cannot be written: {detail}; nothing was run or recorded")
        self.path = path
        self.detail = detail


class LogWriteError(EventLogError):
    """Committing to the log failed (a full disk, an I/O error) while runs were being written.

    What was committed before is kept, a gap-free prefix of each run that verifies; the
    message says how to continue each run (``run_ids``) once the cause is fixed.
    """

    def __init__(self, path: str, detail: str, run_ids: Sequence[str]) -> None:
        message = f"writing {path} failed: {detail}"
        if len(run_ids) == 1:
            message += (
                "; the events committed before are kept: once that is fixed, continue with "
                f"'maker resume {path} --run {run_ids[0]}'"
            )
        elif run_ids:
            message += (
                "; the events committed before are kept: once that is fixed, continue each "
                f"run with 'maker resume {path} --run ID' ({_listed(run_ids)})"
            )
        super().__init__(message)
        self.path = path
        self.detail = detail
        self.run_ids = tuple(run_ids)


class RunBusyError(EventLogError):
    """Another writer is writing the run: this one may not append to it.

    ``pid`` is the process holding it (this process when another of its logs does), or None
    when the platform does not say.
    """

    def __init__(self, path: str, run_id: str, pid: int | None) -> None:
        if pid == os.getpid():
            who = "another writer in this process"
        elif pid is not None:
            who = f"process {pid}"
        else:
            who = "another process"
        super().__init__(
            f"{path}: run {run_id} is being written by {who}; "
            "let it finish (or stop it) before resuming the run"
        )
        self.path = path
        self.run_id = run_id
        self.pid = pid


class LogClosedError(EventLogError):
    """The log is closed, or its writer has failed."""


class CopyConflictError(EventLogError):
    """The destination of a copy already holds a run of that id that is not a prefix of the
    source's run (another run, or a diverging one): nothing of any run was copied."""

    def __init__(self, path: str, run_id: str, detail: str) -> None:
        super().__init__(f"{path} already holds a run {run_id} that {detail}; nothing was copied")
        self.path = path
        self.run_id = run_id
        self.detail = detail
