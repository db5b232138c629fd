"""Turn logs into answers: rebuild what a run did from its events alone, re-execute and resume
runs, and re-vote them offline under another policy. The integrity check belongs to the store
(:mod:`events`); its names are here too, beside the readers that refuse a broken run."""

from events import BrokenLogError, LogReport, RunIntegrity, check_run, verify_log

from ._fold import Fold, RunSummary, StepRecord, summarize, summarize_async
from ._replayer import (
    RecordedModel,
    client_for,
    load_events,
    resume_run,
    task_for,
    verify_run,
)
from ._report import (
    HardStep,
    ReportData,
    StepVotes,
    render_html,
    report_data,
    report_data_async,
    write_plots,
    write_report,
)
from ._revote import UNCHANGED, RevoteReport, StepRevote, revote, revote_async

__all__ = [
    "UNCHANGED",
    "BrokenLogError",
    "Fold",
    "HardStep",
    "LogReport",
    "RecordedModel",
    "ReportData",
    "RevoteReport",
    "RunIntegrity",
    "RunSummary",
    "StepRecord",
    "StepRevote",
    "StepVotes",
    "check_run",
    "client_for",
    "load_events",
    "render_html",
    "report_data",
    "report_data_async",
    "resume_run",
    "revote",
    "revote_async",
    "summarize",
    "summarize_async",
    "task_for",
    "verify_log",
    "verify_run",
    "write_plots",
    "write_report",
]
