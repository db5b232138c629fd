"""Turn logs into answers: rebuild what a run did from its events alone, check a log's
integrity, re-execute and resume runs, and re-vote them offline under another policy."""

from ._fold import RunSummary, StepRecord, summarize
from ._integrity import BrokenLogError, LogReport, RunIntegrity, check_run, verify_log
from ._replayer import (
    RecordedModel,
    client_for,
    load_events,
    resume_run,
    task_for,
    verify_run,
)
from ._report import HardStep, ReportData, render_html, report_data, write_plots, write_report
from ._revote import UNCHANGED, RevoteReport, StepRevote, revote

__all__ = [
    "UNCHANGED",
    "BrokenLogError",
    "HardStep",
    "LogReport",
    "RecordedModel",
    "ReportData",
    "RevoteReport",
    "RunIntegrity",
    "RunSummary",
    "StepRecord",
    "StepRevote",
    "check_run",
    "client_for",
    "load_events",
    "render_html",
    "report_data",
    "resume_run",
    "revote",
    "summarize",
    "task_for",
    "verify_log",
    "verify_run",
    "write_plots",
    "write_report",
]
