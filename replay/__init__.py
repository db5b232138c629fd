"""Turn logs into answers: rebuild what a run did from its events alone, re-execute and resume
runs, and re-vote them offline under another policy. The integrity check belongs to the store
(:mod:`events`); its names are here too, beside the readers that refuse a broken run."""

from events import BrokenLogError, LogReport, RunIntegrity, check_run, verify_log

from ._fold import Fold, RunSummary, StepRecord, summarize, summarize_async
from ._page import (
    render_html,
    report_files,
    write_calibration_report,
    write_plots,
    write_report,
)
from ._replayer import (
    RecordedModel,
    client_for,
    load_events,
    resume_run,
    task_for,
    verify_run,
)
from ._report import (
    Binned,
    HardStep,
    Prediction,
    ReportData,
    StepVotes,
    report_data,
    report_data_async,
)
from ._revote import UNCHANGED, RevoteReport, StepRevote, revote, revote_async

__all__ = [
    "UNCHANGED",
    "Binned",
    "BrokenLogError",
    "Fold",
    "HardStep",
    "LogReport",
    "Prediction",
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
    "report_files",
    "resume_run",
    "revote",
    "revote_async",
    "summarize",
    "summarize_async",
    "task_for",
    "verify_log",
    "verify_run",
    "write_calibration_report",
    "write_plots",
    "write_report",
]
