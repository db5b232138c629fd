"""The engine: runs a task step by step on a client, through the scheduler, into the log.

The scheduler (rate limits, backoff, the circuit breaker), the engine's lifecycle, the step
loop and the sampling it shares with calibration, run handles, recordings (for verification
and resume) and calibration. Built on
:mod:`maker.core`, :mod:`maker.tasks`, :mod:`maker.clients` and :mod:`events`.
"""

from ._calibrate import (
    CALIBRATION_MODE,
    CalibrationReport,
    ModelCalibration,
    calibrate,
    calibration_from_events,
    is_calibration,
    wilson_interval,
)
from ._engine import Engine
from ._handle import CancelledBeforeStart, RunHandle, RunStatistics
from ._recording import Divergence, EventBatches, Recording, decision_events
from ._results import EngineStatistics, RunResult, VerifyResult
from ._run import EventSink, ReplayAwareSink
from ._sampling import sample_seed
from ._scheduler import (
    BreakerChange,
    CircuitBreaker,
    Limits,
    Scheduler,
    SchedulerObserver,
    SchedulerStatistics,
    SlidingWindow,
    Wait,
    backoff_delay,
)

__all__ = [
    "CALIBRATION_MODE",
    "BreakerChange",
    "CalibrationReport",
    "CancelledBeforeStart",
    "CircuitBreaker",
    "Divergence",
    "Engine",
    "EngineStatistics",
    "EventBatches",
    "EventSink",
    "Limits",
    "ModelCalibration",
    "Recording",
    "ReplayAwareSink",
    "RunHandle",
    "RunResult",
    "RunStatistics",
    "Scheduler",
    "SchedulerObserver",
    "SchedulerStatistics",
    "SlidingWindow",
    "VerifyResult",
    "Wait",
    "backoff_delay",
    "calibrate",
    "calibration_from_events",
    "decision_events",
    "is_calibration",
    "sample_seed",
    "wilson_interval",
]
