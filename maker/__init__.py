"""maker: long sequential tasks with language models at near-zero error.

The MAKER method (Meyerson et al. 2025): one model call decides one step, several samples are
voted first-to-ahead-by-k, and malformed or overlong answers are discarded before they vote.
Every sample, red flag, vote and state transition is a typed event in an SQLite log.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .clients import PRESETS, SimConfig, SimResponse, SimulatedModel, make_matcher
from .core import (
    AdaptiveK,
    Client,
    ClientError,
    Completion,
    ConfigError,
    Hedge,
    MakerError,
    Matcher,
    ModelEstimate,
    ModelPlan,
    PEstimate,
    Plan,
    Policy,
    Probe,
    Prompt,
    RedFlag,
    RedFlagCheck,
    RedFlagRules,
    SampleRequest,
    Simulator,
    StateError,
    Tally,
    Task,
    TaskPluginError,
    UnknownTaskError,
    UntrustedPluginError,
    VoteRule,
    __version__,
    estimates_from_calibration,
    expected_cost,
    expected_cost_exact,
    expected_samples_per_step,
    expected_votes_per_step,
    k_min,
    p_run,
    p_step,
    plan,
    sample_cost,
    undecided_share,
)
from .engine import (
    CALIBRATION_MODE,
    BreakerChange,
    CalibrationReport,
    CancelledBeforeStart,
    CircuitBreaker,
    Divergence,
    Engine,
    EngineStatistics,
    EventSink,
    Limits,
    ModelCalibration,
    Recording,
    ReplayAwareSink,
    RunHandle,
    RunResult,
    RunStatistics,
    Scheduler,
    SchedulerObserver,
    SchedulerStatistics,
    SlidingWindow,
    VerifyResult,
    Wait,
    backoff_delay,
    calibrate,
    calibration_from_events,
    decision_events,
    is_calibration,
    sample_seed,
    wilson_interval,
)

if TYPE_CHECKING:
    from .apps.mcp import (
        McpConfig,
        McpTools,
        ModelConfig,
        ToolError,
        ToolLimits,
        create_mcp_server,
        load_mcp_config,
    )
    from .apps.service import Server, ServiceLimits, create_service, serve
    from .otel import TraceSink, export_log, export_run, tracer_provider_for

_LAZY = {
    "McpConfig": ".apps.mcp",
    "McpTools": ".apps.mcp",
    "ModelConfig": ".apps.mcp",
    "Server": ".apps.service",
    "ServiceLimits": ".apps.service",
    "ToolError": ".apps.mcp",
    "ToolLimits": ".apps.mcp",
    "TraceSink": ".otel",
    "create_mcp_server": ".apps.mcp",
    "create_service": ".apps.service",
    "export_log": ".otel",
    "export_run": ".otel",
    "load_mcp_config": ".apps.mcp",
    "serve": ".apps.service",
    "tracer_provider_for": ".otel",
}
"""Names whose modules need the servers' dependencies or OpenTelemetry: loaded on first
use, so ``import maker`` stays the library alone (no click, aiohttp, mcp or SDK)."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # found once: later lookups are plain
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CALIBRATION_MODE",
    "PRESETS",
    "AdaptiveK",
    "BreakerChange",
    "CalibrationReport",
    "CancelledBeforeStart",
    "CircuitBreaker",
    "Client",
    "ClientError",
    "Completion",
    "ConfigError",
    "Divergence",
    "Engine",
    "EngineStatistics",
    "EventSink",
    "Hedge",
    "Limits",
    "MakerError",
    "Matcher",
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
    "ReplayAwareSink",
    "RunHandle",
    "RunResult",
    "RunStatistics",
    "SampleRequest",
    "Scheduler",
    "SchedulerObserver",
    "SchedulerStatistics",
    "Server",
    "ServiceLimits",
    "SimConfig",
    "SimResponse",
    "SimulatedModel",
    "Simulator",
    "SlidingWindow",
    "StateError",
    "Tally",
    "Task",
    "TaskPluginError",
    "ToolError",
    "ToolLimits",
    "TraceSink",
    "UnknownTaskError",
    "UntrustedPluginError",
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
    "make_matcher",
    "p_run",
    "p_step",
    "plan",
    "sample_cost",
    "sample_seed",
    "serve",
    "tracer_provider_for",
    "undecided_share",
    "wilson_interval",
]
