"""OpenTelemetry: traces and metrics of runs, live (:class:`TraceSink`) or from a log.

:class:`TraceSink` needs only the OpenTelemetry API (a dependency of maker), so a library that
embeds maker can trace into whatever provider its application configured. The providers and
exporters maker builds itself (:func:`tracer_provider_for`, :func:`export_log`,
:class:`DeterministicIdGenerator`) need the SDK: ``pip install 'maker[otel]'``. They are loaded
when first asked for, and asking without the SDK raises :class:`ModuleNotFoundError` saying so.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

from ._otel import SETTINGS_ONLY_TASKS, STEP_SPAN, TraceSink, content_digest, export_run

if TYPE_CHECKING:
    from ._sdk import DeterministicIdGenerator, export_log, tracer_provider_for

SDK_MISSING: Final = "the OpenTelemetry SDK is not installed: pip install 'maker[otel]'"
"""What a caller without the SDK is told when it asks for one of its parts."""

_SDK_NAMES = frozenset({"DeterministicIdGenerator", "export_log", "tracer_provider_for"})


def load_sdk() -> Any:
    """The module of maker's SDK parts, or :class:`ModuleNotFoundError` saying what to install."""
    try:
        return importlib.import_module("._sdk", __name__)
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.startswith("opentelemetry.sdk"):
            raise ModuleNotFoundError(SDK_MISSING, name=exc.name) from exc
        raise


def __getattr__(name: str) -> Any:
    if name in _SDK_NAMES:
        return getattr(load_sdk(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SDK_MISSING",
    "SETTINGS_ONLY_TASKS",
    "STEP_SPAN",
    "DeterministicIdGenerator",
    "TraceSink",
    "content_digest",
    "export_log",
    "export_run",
    "load_sdk",
    "tracer_provider_for",
]
