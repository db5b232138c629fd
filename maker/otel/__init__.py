"""OpenTelemetry: traces and metrics of runs, live (:class:`TraceSink`) or from a log.

Imports the OpenTelemetry SDK, so :mod:`maker` loads it only when one of these is asked for.
"""

from ._otel import (
    SETTINGS_ONLY_TASKS,
    STEP_SPAN,
    TraceSink,
    content_digest,
    export_log,
    export_run,
    tracer_provider_for,
)

__all__ = [
    "SETTINGS_ONLY_TASKS",
    "STEP_SPAN",
    "TraceSink",
    "content_digest",
    "export_log",
    "export_run",
    "tracer_provider_for",
]
