"""Errors of the event log. One root, narrow subclasses with context."""

from __future__ import annotations

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


class LogClosedError(EventLogError):
    """The log is closed, or its writer has failed."""
