"""What each MCP tool returns, as msgspec structs: the source of the tools' output schemas.

The tools (:mod:`maker.apps.mcp._mcp_tools`) build their results as JSON-ready builtins, and
the server sends those unchanged as both the text content and the structured content; these
structs describe them, field for field, so that :func:`output_schema` can give each tool's
``outputSchema``. The objects are open (no ``additionalProperties: false``): a field added
to a result later does not break a client that validates against an older schema. A field
present only in some results (``note``, ``error``, ``divergence``) has a default, so it is
not required. A tool with more than one shape (``run`` at once or followed to its end, ``show``
of one run or of the log) lists each shape in :data:`RESULTS`; its schema is their ``anyOf``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
from msgspec import Meta

# msgspec reads the annotations of these structs at schema time: the names they use must be
# importable at run time, so no TYPE_CHECKING-only imports here.


class _Result(msgspec.Struct, frozen=True, kw_only=True):
    pass


Counts = dict[str, int]
"""Counts by name: votes per candidate, red flags per reason."""


class Winner(_Result, frozen=True):
    """The winning answer of a decided vote."""

    answer: Annotated[Any, Meta(description="The parsed answer (text, or JSON with a schema).")]
    text: Annotated[str, Meta(description="The first response that voted for it, verbatim.")]
    candidate: Annotated[str, Meta(description="The answer as canonical JSON: its votes key.")]


class FlaggedSample(_Result, frozen=True):
    """A response that was red-flagged and did not vote."""

    sample_id: str
    reason: str
    detail: str


class VoteResult(_Result, frozen=True):
    """One error-corrected decision: the winner, the votes, and what it took."""

    run_id: str
    status: Annotated[str, Meta(description="succeeded (a winner), failed or cancelled.")]
    reason: str
    model: str
    seed: int
    k: int
    winner: Winner | None
    votes: Annotated[Counts, Meta(description="Valid votes per candidate (canonical JSON).")]
    samples: int
    red_flags: Annotated[Counts, Meta(description="Red-flagged responses per reason.")]
    red_flagged: list[FlaggedSample]
    failures: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    wall_s: float


class Flag(_Result, frozen=True):
    """One red flag: its reason (truncated, too_long, malformed, schema, ...) and detail."""

    reason: str
    detail: str


class ValidateResult(_Result, frozen=True):
    """Every red flag one response raises, and the answer it parses to."""

    ok: Annotated[bool, Meta(description="No flag at all: the response would vote.")]
    flags: list[Flag]
    answer: Annotated[Any, Meta(description="The parsed answer; null when parsing failed.")]
    output_tokens: int
    tokens_estimated: bool


class KminResult(_Result, frozen=True):
    """Eq 14's k_min, with Eq 13's success probabilities and Eq 16's votes per step."""

    k_min: int
    p: float
    target: float
    steps: int
    p_step: float
    p_run: float
    expected_votes_per_step: float


class ModelPlanResult(_Result, frozen=True):
    """One model's plan; the expectations are null when voting cannot converge."""

    model: str
    p: float
    v: float
    cost_per_call: float
    p_low: float
    p_high: float
    latency_s: float | None
    converges: bool
    k_min: int | None
    p_run: float | None
    expected_samples_per_step: float | None
    misspeculation_samples_per_step: float | None
    hedge_samples_per_step: float | None
    expected_samples: float | None
    expected_cost_usd: float | None
    expected_wall_s: float | None
    note: str


class PlanResult(_Result, frozen=True):
    """Every model's plan for the task and target, and the recommended model."""

    steps: int
    target: float
    concurrency: int
    latency_s: float | None
    pipeline: int
    hedge: dict[str, Any] | None
    models: list[ModelPlanResult]
    recommended: Annotated[
        str | None, Meta(description="The cheapest model that converges; null if none does.")
    ]


class CalibrateResult(_Result, frozen=True):
    """A model's measured p with its 95% Wilson interval, v, cost per call, and the k to use."""

    model: str
    run_id: str
    status: str
    reason: str
    n: Annotated[int, Meta(description="Responses received.")]
    valid: int
    correct: int
    requested: int
    failures: int
    red_flags: Counts
    p: float | None
    p_low: float | None
    p_high: float | None
    v: float | None
    mean_input_tokens: float
    mean_output_tokens: float
    cost_per_call: float
    mean_latency_s: float | None
    task: str
    samples: int
    seed: int
    target: float
    steps: int
    recommended_k: Annotated[
        int | None, Meta(description="k_min (Eq 14) at p_low; null when p_low <= 0.5.")
    ]
    recommendation: str


class RunStartedResult(_Result, frozen=True):
    """A run started in the background: follow it with run_status or its resource."""

    run_id: str
    status: Annotated[str, Meta(description="running")]
    task: str
    params: dict[str, Any]
    steps: Annotated[int | None, Meta(description="The task's step budget, when it has one.")]
    k: int
    model: str
    log: str


class RunSummaryResult(_Result, frozen=True):
    """A run's summary: while it runs, its counters; once it has ended, its figures from the
    log (``maker show --json``)."""

    run_id: str
    task: str
    task_params: dict[str, Any]
    models: list[str]
    k: int | None
    seed: int
    status: Annotated[
        str, Meta(description="running, succeeded, failed, cancelled, or unfinished (crashed).")
    ]
    active: Annotated[bool, Meta(description="Whether this server is running it now.")]
    steps: Annotated[int, Meta(description="Steps decided.")]
    samples: int
    events: int
    # While it runs:
    steps_total: int | None = None
    # Once it has ended:
    policy: dict[str, Any] | None = None
    reason: str = ""
    votes: int = 0
    failures: int = 0
    failures_by_kind: Counts = msgspec.field(default_factory=dict)
    cancelled_samples: int = 0
    cancelled_by_reason: Counts = msgspec.field(default_factory=dict)
    misspeculated_samples: int = 0
    misspeculated_steps: int = 0
    hedged_samples: int = 0
    red_flags: int = 0
    red_flags_by_reason: Counts = msgspec.field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    wall_s: float | None = None
    resumed: int = 0
    samples_per_step_mean: float = 0.0
    samples_per_step_max: int = 0
    # Said by some tools:
    resume: Annotated[str, Meta(description="cancel: the command that resumes the run.")] = ""
    note: Annotated[
        str,
        Meta(description="resume: why nothing was changed; cancel: why nothing was recorded."),
    ] = ""
    error: Annotated[str, Meta(description="Why a resume of this run stopped.")] = ""


class ResumeStartedResult(_Result, frozen=True):
    """A run resumed in the background."""

    run_id: str
    status: Annotated[str, Meta(description="running")]
    resumed_after_seq: Annotated[int, Meta(description="The last recorded event re-executed.")]


class RunListEntry(_Result, frozen=True):
    """One run of the log."""

    run_id: str
    task: str
    models: list[str]
    status: str
    events: int


class ShowLogResult(_Result, frozen=True):
    """Every run in the server's log."""

    log: str
    runs: list[RunListEntry]


class DivergenceResult(_Result, frozen=True):
    """The first event where the re-execution differs from the log."""

    seq: int
    message: str
    expected: Any
    got: Any


class ReplayVerifyResult(_Result, frozen=True):
    """A re-execution compared with the log: ok, or the first divergence."""

    run_id: str
    ok: bool
    checked: Annotated[int, Meta(description="Events compared.")]
    recorded: Annotated[int, Meta(description="Events in the log.")]
    divergence: DivergenceResult | None = None


class ServerInfo(_Result, frozen=True):
    name: str
    version: str


class ModelHealth(_Result, frozen=True):
    """A configured model (never its key) and whether it answered the probe."""

    spec: str
    limits: dict[str, Any]
    reachable: Annotated[bool | None, Meta(description="null: not probed, or not probeable.")]
    error: str = ""
    probe_s: float | None = None


class ConfigHealth(_Result, frozen=True):
    log: str
    config_file: str | None
    default_model: str
    models: list[ModelHealth]
    prices: dict[str, dict[str, float]]
    sources: dict[str, str]


class BoundsHealth(_Result, frozen=True):
    """The server's bounds (null: none) and the runs going now."""

    max_steps: int | None
    max_samples: int | None
    max_cost_usd: float | None
    max_running: int | None
    running: int


class LogHealth(_Result, frozen=True):
    """The log's path and its writer's counters."""

    path: str


class HealthResult(_Result, frozen=True):
    """The server's configuration, its models' reachability, and its counters."""

    server: ServerInfo
    config: ConfigHealth
    bounds: BoundsHealth
    scheduler: dict[str, int | float]
    engine: dict[str, int | float]
    log: LogHealth


RESULTS: Mapping[str, tuple[type[_Result], ...]] = {
    "vote": (VoteResult,),
    "validate": (ValidateResult,),
    "kmin": (KminResult,),
    "plan": (PlanResult,),
    "calibrate": (CalibrateResult,),
    "run": (RunStartedResult, RunSummaryResult),
    "run_status": (RunSummaryResult,),
    "cancel": (RunSummaryResult,),
    "resume": (ResumeStartedResult, RunSummaryResult),
    "show": (ShowLogResult, RunSummaryResult),
    "replay_verify": (ReplayVerifyResult,),
    "health": (HealthResult,),
}
"""Every tool's result shapes: one struct, or the alternatives it returns."""


def output_schema(*shapes: type[Any]) -> dict[str, Any]:
    """The JSON schema of a result of one of ``shapes``: an object, with every ``$ref``
    replaced by the definition it names (many clients resolve no references), and no
    ``$defs``; two shapes or more are an ``anyOf`` under ``type: object``."""
    schemas, defs = msgspec.json.schema_components(shapes)
    resolved: list[dict[str, Any]] = [inline(schema, defs) for schema in schemas]
    if len(resolved) == 1:
        return resolved[0]
    return {"type": "object", "anyOf": resolved}


def inline(schema: Any, defs: Mapping[str, Any], seen: tuple[str, ...] = ()) -> Any:
    """``schema`` with each ``{"$ref": "#/$defs/NAME"}`` replaced by ``defs[NAME]``, inlined in
    turn. A recursive type cannot be inlined: it is an error, found when the schema is made."""
    if isinstance(schema, list):
        return [inline(item, defs, seen) for item in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        if name in seen:
            raise TypeError(f"{name} refers to itself: its schema cannot be inlined")
        rest = {key: value for key, value in schema.items() if key != "$ref"}
        return {**inline(defs[name], defs, (*seen, name)), **inline(rest, defs, seen)}
    return {key: inline(value, defs, seen) for key, value in schema.items()}


__all__ = [
    "RESULTS",
    "CalibrateResult",
    "HealthResult",
    "KminResult",
    "PlanResult",
    "ReplayVerifyResult",
    "ResumeStartedResult",
    "RunStartedResult",
    "RunSummaryResult",
    "ShowLogResult",
    "ValidateResult",
    "VoteResult",
    "inline",
    "output_schema",
]
