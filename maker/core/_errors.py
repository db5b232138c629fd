"""Errors of the engine. One root, narrow subclasses that carry their context."""

from __future__ import annotations


class MakerError(Exception):
    """Root of every error raised by :mod:`maker`."""


class ConfigError(MakerError, ValueError):
    """A configuration value is invalid. ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class StateError(MakerError, ValueError):
    """A task's state is not one the task can hold: a recorded or given state of the wrong
    shape, or a step past the task's last."""


class RedFlag(MakerError):
    """A response must be discarded before it votes. ``reason`` is a short snake_case label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ClientError(MakerError):
    """A model call failed in transport. Never a vote, never a red flag.

    ``retryable`` says whether the same request may succeed later; ``retry_after`` is the
    server's requested wait in seconds, when it named one.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str = "error",
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.retryable = retryable
        self.retry_after = retry_after


class UnknownTaskError(MakerError, LookupError):
    """No built-in task has that name."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown task {name!r}; known tasks: {', '.join(sorted(known))}")
        self.name = name


class TaskPluginError(MakerError):
    """A task plugin (``package.module:factory`` or a ``maker.tasks`` entry point) that cannot
    be used: its module or attribute is missing, importing it failed, its factory raised or
    returned something that is not a :class:`maker.Task`. ``reference`` names it."""

    def __init__(self, reference: str, message: str) -> None:
        super().__init__(f"task plugin {reference!r}: {message}")
        self.reference = reference


class UntrustedPluginError(TaskPluginError):
    """A task plugin named by data (a log's ``run_started``, a request) that was not allowed:
    importing a module runs its code, so a reference read from elsewhere is imported only when
    the user named it as trusted (``--allow-plugin``)."""
