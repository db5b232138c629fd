"""Errors of the event log. One root, narrow subclasses with context."""

from __future__ import annotations


class EventLogError(Exception):
    """Root of every error raised by :mod:`events`."""


class NotALogError(EventLogError):
    """The file exists but is not a maker event log."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"{path} is not a maker event log ({detail})")
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
    """No run with that id is in the log."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run {run_id!r} in the log")
        self.run_id = run_id


class SequenceError(EventLogError):
    """An appended event does not continue its run's sequence."""

    def __init__(self, run_id: str, expected: int, got: int) -> None:
        super().__init__(f"run {run_id}: expected seq {expected}, got {got}")
        self.run_id = run_id
        self.expected = expected
        self.got = got


class CorruptEventError(EventLogError):
    """A stored event could not be decoded."""


class LogClosedError(EventLogError):
    """The log is closed, or its writer has failed."""
