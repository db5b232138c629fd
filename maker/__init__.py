"""maker: long sequential tasks with language models at near-zero error.

The MAKER method (Meyerson et al. 2025): one model call decides one step, several samples are
voted first-to-ahead-by-k, and malformed or overlong answers are discarded before they vote.
Every sample, red flag, vote and state transition is a typed event in an SQLite log.
"""

from ._adaptive import AdaptiveK, PEstimate
from ._calibrate import (
    CALIBRATION_MODE,
    CalibrationReport,
    ModelCalibration,
    calibrate,
    calibration_from_events,
    is_calibration,
    wilson_interval,
)
from ._client import Client, Completion, Probe, SampleRequest
from ._engine import Engine, EngineStatistics, EventSink, RunResult, VerifyResult, sample_seed
from ._errors import ClientError, ConfigError, MakerError, RedFlag, UnknownTaskError
from ._formulas import (
    expected_cost,
    expected_cost_exact,
    expected_samples_per_step,
    expected_votes_per_step,
    k_min,
    p_run,
    p_step,
    sample_cost,
)
from ._handle import RunHandle, RunStatistics
from ._mcp import create_mcp_server
from ._mcp_config import McpConfig, ModelConfig, load_mcp_config
from ._mcp_tools import McpTools, ToolError
from ._otel import TraceSink, export_log, export_run, tracer_provider_for
from ._plan import ModelEstimate, ModelPlan, Plan, estimates_from_calibration, plan
from ._policy import Policy
from ._recording import Divergence, Recording, decision_events
from ._redflags import RedFlagCheck, RedFlagRules
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
from ._service import Server, create_service, serve
from ._sim import PRESETS, SimConfig, SimResponse, SimulatedModel
from ._simulator import Simulator
from ._tally import Tally, VoteRule
from ._task import Prompt, Task
from ._version import __version__

__all__ = [
    "CALIBRATION_MODE",
    "PRESETS",
    "AdaptiveK",
    "BreakerChange",
    "CalibrationReport",
    "CircuitBreaker",
    "Client",
    "ClientError",
    "Completion",
    "ConfigError",
    "Divergence",
    "Engine",
    "EngineStatistics",
    "EventSink",
    "Limits",
    "MakerError",
    "McpConfig",
    "McpTools",
    "ModelCalibration",
    "ModelConfig",
    "ModelEstimate",
    "ModelPlan",
    "PEstimate",
    "Plan",
    "Policy",
    "Probe",
    "Prompt",
    "Recording",
    "RedFlag",
    "RedFlagCheck",
    "RedFlagRules",
    "RunHandle",
    "RunResult",
    "RunStatistics",
    "SampleRequest",
    "Scheduler",
    "SchedulerObserver",
    "SchedulerStatistics",
    "Server",
    "SimConfig",
    "SimResponse",
    "SimulatedModel",
    "Simulator",
    "SlidingWindow",
    "Tally",
    "Task",
    "ToolError",
    "TraceSink",
    "UnknownTaskError",
    "VerifyResult",
    "VoteRule",
    "Wait",
    "__version__",
    "backoff_delay",
    "calibrate",
    "calibration_from_events",
    "create_mcp_server",
    "create_service",
    "decision_events",
    "estimates_from_calibration",
    "expected_cost",
    "expected_cost_exact",
    "expected_samples_per_step",
    "expected_votes_per_step",
    "export_log",
    "export_run",
    "is_calibration",
    "k_min",
    "load_mcp_config",
    "p_run",
    "p_step",
    "plan",
    "sample_cost",
    "sample_seed",
    "serve",
    "tracer_provider_for",
    "wilson_interval",
]
