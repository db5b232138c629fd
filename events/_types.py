"""The event types of a run: one msgspec tagged union, tag field ``type``.

Released tags and field types never change; new fields get defaults (see DESIGN.md).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

SCHEMA_VERSION = 3
"""Version of the event schema and of the log file layout."""

RunStatus = Literal["succeeded", "failed", "cancelled"]


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every event: which run, its position in the run, and when."""

    run_id: str
    seq: int
    ts: float


class StepEvent(Event, frozen=True, kw_only=True):
    """Base of the events that belong to one step (0-based)."""

    step: int


class RunStarted(Event, frozen=True, kw_only=True, tag="run_started"):
    """A run began. Holds everything needed to rebuild its task, policy and models."""

    task: str
    task_params: dict[str, Any]
    policy: dict[str, Any]
    models: list[str]
    model_params: dict[str, Any]
    seed: int
    version: str
    initial_state: Any = None
    limits: dict[str, Any] = msgspec.field(default_factory=dict)
    """The scheduler's limits for the model: the backoff rule in them shapes retries."""


class StepStarted(StepEvent, frozen=True, kw_only=True, omit_defaults=True, tag="step_started"):
    """Voting on a step begins from ``state``.

    A pipelined run may start a step more than once: ``branch`` numbers its starts (0 first).
    ``speculative`` marks a start made before the previous step was decided, from the state its
    leading answer implies; the branch counts only if that answer wins (else it is
    ``step_abandoned`` and the step starts again, as the next branch, from the decided state).
    Both are left out of the JSON when they say nothing (a first, decided start), as before they
    existed.
    """

    state: Any
    branch: int = 0
    speculative: bool = False


class SampleRequested(StepEvent, frozen=True, kw_only=True, tag="sample_requested"):
    """A sample was asked of a model. ``sample_id`` is ``"{step}:{ordinal}"``; ordinals are
    unique within a step, across its starts. A sample is drawn for the state of its step's
    latest ``step_started``: a step has one start open at a time."""

    sample_id: str
    model: str
    temperature: float
    max_tokens: int = 0


class SampleReceived(StepEvent, frozen=True, kw_only=True, tag="sample_received"):
    """A model answered a sample."""

    sample_id: str
    text: str
    model: str
    latency_s: float
    input_tokens: int
    output_tokens: int
    finish_reason: str
    temperature_sent: float | None = None
    cost_usd: float = 0.0
    response_id: str | msgspec.UnsetType = msgspec.UNSET
    """The provider's id for this response (OpenAI's ``id``, Anthropic's message ``id``), to find
    it in the provider's own logs and bills; unset when the model gives none (the simulated model,
    Ollama). Unset, it is left out of the JSON as it was before the field existed."""


class SampleFailed(StepEvent, frozen=True, kw_only=True, tag="sample_failed"):
    """An attempt at a sample failed in transport; it is neither a vote nor a red flag."""

    sample_id: str
    error_kind: str
    message: str
    attempt: int
    retryable: bool = False
    backoff_s: float = 0.0
    """Seconds the engine waits before the next attempt (0 when it does not retry)."""
    retry_after_s: float | None = None
    """The wait the server asked for, if it named one."""


class SampleCancelled(StepEvent, frozen=True, kw_only=True, tag="sample_cancelled"):
    """A sample in flight was abandoned: its step was decided (``reason="decided"``), the run
    was cancelled (``reason="run_cancelled"``), or the branch it was drawn for was abandoned
    (``reason="misspeculated"``, see :class:`StepAbandoned`)."""

    sample_id: str
    reason: str = "decided"


class RedFlagged(StepEvent, frozen=True, kw_only=True, tag="red_flagged"):
    """A received sample was discarded before voting."""

    sample_id: str
    reason: str
    detail: str = ""


class VoteCounted(StepEvent, frozen=True, kw_only=True, tag="vote_counted"):
    """A valid sample voted for ``candidate`` (canonical JSON); ``tally`` is after this vote.

    Under a matcher (the policy's ``matcher``) the candidate is the key the answer votes under,
    and ``answer`` the answer's own canonical JSON when it differs from the key; unset (left
    out, as before the field existed) when they are the same.
    """

    sample_id: str
    candidate: str
    tally: dict[str, int]
    answer: str | msgspec.UnsetType = msgspec.UNSET


class StepDecided(StepEvent, frozen=True, kw_only=True, tag="step_decided"):
    """``winner`` (canonical JSON) led every rival by k votes, in the tally of the step's
    latest start."""

    winner: str
    votes: dict[str, int]
    samples: int
    red_flags: int = 0
    answer: str | msgspec.UnsetType = msgspec.UNSET
    """Under a matcher: the answer applied, the one parsed from the first sample counted for
    ``winner`` (canonical JSON), when it differs from the key; unset when they are the same."""


class SampleHedged(StepEvent, frozen=True, kw_only=True, tag="sample_hedged"):
    """``straggler`` had been in flight ``in_flight_s`` seconds, over the run's hedging threshold
    (``threshold_s``): sample ``sample_id`` (requested next) is sent beside it. The straggler
    still votes if it answers before its step is decided."""

    sample_id: str
    straggler: str
    in_flight_s: float = 0.0
    threshold_s: float = 0.0


class StepAbandoned(StepEvent, frozen=True, kw_only=True, tag="step_abandoned"):
    """A speculative start of a step (``branch``) no longer counts: the state it was drawn for
    is not the one the previous step leads to or decided (``reason="misspeculated"``). Its
    samples in flight were cancelled before this event; its votes count for nothing."""

    branch: int
    reason: str
    samples: int
    votes: dict[str, int]
    red_flags: int = 0


class StateChanged(StepEvent, frozen=True, kw_only=True, tag="state_changed"):
    """The winner was applied; ``state`` is the state the next step starts from."""

    state: Any


class KChanged(StepEvent, frozen=True, kw_only=True, tag="k_changed"):
    """Adaptive k: from ``step`` on, steps are voted with margin ``k``.

    ``p_mean`` and ``p_low`` are the estimate of p it was chosen from, after ``agree`` and
    ``disagree`` valid votes of the decided steps (prior included).
    """

    k: int
    p_mean: float
    p_low: float
    agree: float
    disagree: float


class SchedulerWaited(StepEvent, frozen=True, kw_only=True, tag="scheduler_waited"):
    """The scheduler held a sample back: for a concurrency slot, the RPM or TPM window, or an
    open circuit breaker. Observational: replay does not reproduce waits."""

    sample_id: str
    model: str
    reason: str
    waited_s: float


class BreakerChanged(StepEvent, frozen=True, kw_only=True, tag="breaker_changed"):
    """A model's circuit breaker changed state after this sample's call. Observational."""

    sample_id: str
    model: str
    state: str
    failures: int


class RunResumed(Event, frozen=True, kw_only=True, tag="run_resumed"):
    """The run continues in a new process after a crash or a cancellation.

    Everything before this event was replayed from the log, not requested again.
    ``replayed`` counts the recorded events the replay reproduced.
    """

    replayed: int
    version: str = ""


class RunFinished(Event, frozen=True, kw_only=True, tag="run_finished"):
    """The run ended. ``reason`` says why when it did not succeed.

    ``cost_usd`` is the run's cost in USD by the price table of the process that finished it (a
    resumed run's includes the part before its interruption, priced again), so that a listing
    of runs need not read every sample; unset in logs written before it was recorded.
    """

    status: RunStatus
    steps: int
    samples: int
    red_flags: int = 0
    reason: str = ""
    wall_s: float = 0.0
    cost_usd: float | msgspec.UnsetType = msgspec.UNSET


AnyEvent = (
    RunStarted
    | StepStarted
    | SampleRequested
    | SampleReceived
    | SampleFailed
    | SampleCancelled
    | RedFlagged
    | VoteCounted
    | StepDecided
    | StepAbandoned
    | SampleHedged
    | StateChanged
    | KChanged
    | SchedulerWaited
    | BreakerChanged
    | RunResumed
    | RunFinished
)
"""The union of every event type; decode into this."""

EVENT_TYPES: tuple[type[Event], ...] = (
    RunStarted,
    StepStarted,
    SampleRequested,
    SampleReceived,
    SampleFailed,
    SampleCancelled,
    RedFlagged,
    VoteCounted,
    StepDecided,
    StateChanged,
    KChanged,
    SchedulerWaited,
    BreakerChanged,
    RunResumed,
    RunFinished,
    StepAbandoned,
    SampleHedged,
)

OBSERVATIONAL_TYPES: tuple[type[Event], ...] = (SchedulerWaited, BreakerChanged)
"""Events that describe the environment (waits, breaker states) rather than the run's decisions.
Their timing is not reproducible, so replay leaves them out when it compares event streams."""


def event_tag(cls: type[Event]) -> str:
    """The ``type`` tag an event class is encoded with."""
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str)
    return tag
