"""Fold a run's events into what happened: no model, no engine, only the log."""

from __future__ import annotations

import heapq
from collections import Counter, OrderedDict
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from events import (
    AnyEvent,
    RedFlagged,
    RunFinished,
    RunResumed,
    RunStarted,
    SampleCancelled,
    SampleFailed,
    SampleHedged,
    SampleReceived,
    SampleRequested,
    StateChanged,
    StepAbandoned,
    StepDecided,
    StepStarted,
    VoteCounted,
)
from maker.core import CalibrationRecord, PolicyRecord, recorded_policy
from maker.core._serialise import fields_json


@dataclass(slots=True, kw_only=True)
class StepRecord:
    """One step as the log tells it: its samples, its final tally and what it decided.

    ``samples`` counts the samples requested for the step (cancelled ones included), ``received``
    those a model answered; every received sample either voted or was red-flagged.

    A pipelined run may start a step more than once (see :class:`events.StepStarted`): the
    record then describes the step's latest start only (the decided one, once decided), whose
    number is ``branch``. The starts abandoned before it (misspeculated) count only in
    ``abandoned`` and ``abandoned_samples``: their samples were drawn for another state.
    """

    step: int
    winner: str | None = None
    """The winning answer's canonical JSON; None while the step is undecided."""
    votes: dict[str, int] = field(default_factory=dict)
    """The tally when the step ended (the decision's tally, or the last vote's)."""
    samples: int = 0
    received: int = 0
    red_flags: int = 0
    failures: int = 0
    cancelled: int = 0
    cost_usd: float = 0.0
    state: Any = None
    """The state after the winner was applied (the next step's state); None until then."""
    branch: int = 0
    """Which start of the step the figures above are of (0 unless a start was abandoned)."""
    speculative: bool = False
    """Whether that start began before the previous step was decided."""
    abandoned: int = 0
    """Starts of the step abandoned before it (``step_abandoned``)."""
    abandoned_samples: int = 0
    """Samples requested for those abandoned starts."""

    def restart(self, branch: int, speculative: bool) -> None:
        """Begin the figures of a new start (``branch``); an abandoned start's are dropped."""
        self.branch, self.speculative = branch, speculative
        self.winner, self.votes, self.state = None, {}, None
        self.samples = self.received = self.red_flags = self.failures = self.cancelled = 0
        self.cost_usd = 0.0

    @property
    def decided(self) -> bool:
        """Whether the step reached a decision."""
        return self.winner is not None

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible builtins: the fields."""
        return fields_json(self)


@dataclass
class RunSummary:
    """A run's figures, rebuilt from its events alone.

    With ``per_step=True`` (the default) :attr:`step_records` holds a :class:`StepRecord` per
    step, in step order; with ``per_step=n`` only the n steps that requested the most samples
    (in step order); with ``per_step=False`` none. The other figures are totals and running
    maxima, so a fold without step records holds nothing per step.

    On a pipelined or hedged run, ``samples``, ``votes``, the red flags, tokens and cost count
    every sample, misspeculated and hedged ones included (they were requested and paid for);
    ``misspeculated_samples``, ``misspeculated_steps``, ``hedged_samples`` and
    ``cancelled_by_reason`` say how much of that is the price of speculating and hedging. The
    per-step figures (the step records, the samples per decided step) are of each step's
    decided start only.
    """

    run_id: str = ""
    task: str = ""
    task_params: dict[str, Any] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    k: int = 0
    seed: int = 0
    policy: dict[str, Any] = field(default_factory=dict)
    """The recorded policy, as ``run_started`` holds it."""
    status: str = "running"
    reason: str = ""
    steps: int = 0
    samples: int = 0
    votes: int = 0
    failures: int = 0
    failures_by_kind: Counter[str] = field(default_factory=Counter)
    cancelled: int = 0
    cancelled_by_reason: Counter[str] = field(default_factory=Counter)
    """Cancelled samples by ``sample_cancelled`` reason (decided, misspeculated, run_cancelled)."""
    misspeculated_samples: int = 0
    """Samples requested for speculative starts that were abandoned (``step_abandoned``): drawn
    for a state the previous step did not lead to, so they count in ``samples`` (and cost) but
    in no decision."""
    misspeculated_steps: int = 0
    """Starts abandoned as misspeculated (``step_abandoned`` events)."""
    hedged_samples: int = 0
    """Samples sent beside a straggler (``sample_hedged`` events); counted in ``samples`` too."""
    red_flags: Counter[str] = field(default_factory=Counter)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    wall_s: float | None = None
    resumed: int = 0
    """How many times the run was resumed after a crash or a cancellation."""
    events: int = 0
    # Not in the JSON (see _NOT_IN_JSON): what the fold works with, and the run's own data.
    received: int = 0
    samples_per_step: dict[int, int] = field(default_factory=dict)
    """Decided step -> samples it requested; filled only by a ``per_step=True`` fold (the
    figures below do not need it)."""
    decided_steps: int = 0
    """How many steps were decided."""
    decided_samples: int = 0
    """Samples requested by the decided steps, in all."""
    max_decided_samples: int = 0
    """The most samples any decided step requested."""
    first_ts: float = 0.0
    last_ts: float = 0.0
    final_state: Any = None
    model_params: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    initial_state: Any = None
    step_records: list[StepRecord] = field(default_factory=list)

    _NOT_IN_JSON: ClassVar[tuple[str, ...]] = (
        "received",
        "samples_per_step",
        "decided_steps",
        "decided_samples",
        "max_decided_samples",
        "first_ts",
        "last_ts",
        "final_state",
        "model_params",
        "version",
        "initial_state",
        "step_records",
    )
    """Fields :meth:`to_json` leaves out: the fold's working figures (given as the derived
    means and maxima instead), the run's states, and the per-step records (O(steps))."""

    @property
    def mean_samples_per_step(self) -> float:
        """Samples requested per decided step."""
        if not self.decided_steps:
            return 0.0
        return self.decided_samples / self.decided_steps

    @property
    def max_samples_per_step(self) -> int:
        """The most samples any decided step requested."""
        return self.max_decided_samples

    @property
    def rule(self) -> str:
        """The recorded voting rule (a calibration, which votes nothing, reads as the default)."""
        recorded = self.recorded_policy
        return recorded.rule if isinstance(recorded, PolicyRecord) else PolicyRecord().rule

    @property
    def recorded_policy(self) -> PolicyRecord | CalibrationRecord:
        """The recorded policy, typed."""
        return recorded_policy(self.policy)

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON-compatible builtins (``maker show --json``), without the steps.

        The fields, ``cancelled`` as ``cancelled_samples`` and the red flags by reason as
        ``red_flags_by_reason`` (``red_flags`` is their total); ``wall_s``, when the run did not
        finish, the span of its events; then the samples per decided step."""
        wall_s = self.wall_s if self.wall_s is not None else self.last_ts - self.first_ts
        return fields_json(
            self,
            omit=self._NOT_IN_JSON,
            rename={"cancelled": "cancelled_samples", "red_flags": "red_flags_by_reason"},
            values={"wall_s": wall_s},
            derived={
                "red_flags": sum(self.red_flags.values()),
                "samples_per_step_mean": self.mean_samples_per_step,
                "samples_per_step_max": self.max_samples_per_step,
            },
        )


OPEN_STEPS = 1024
"""How many steps a bounded fold keeps open at once. The engine decides one step at a time, or
votes up to its pipeline depth ahead (a calibration keeps as many in flight as its
concurrency), so a step is complete long before it is this far behind the newest one."""

R = TypeVar("R")


class OpenSteps(Generic[R]):
    """Per-step accumulators of a streaming fold, for the steps still receiving events.

    At most ``limit`` are open: past that, the lowest-numbered (oldest) one is handed to
    ``close`` and forgotten, and :meth:`close_all` hands over the rest at the end. A step is
    handed over once, complete, as long as no step receives events after ``limit`` newer steps
    have started (true of every run the engine records).
    """

    def __init__(
        self, new: Callable[[int], R], close: Callable[[R], None], limit: int = OPEN_STEPS
    ) -> None:
        self._new, self._close, self._limit = new, close, max(1, limit)
        self._open: OrderedDict[int, R] = OrderedDict()

    def get(self, step: int) -> R:
        record = self._open.get(step)
        if record is None:
            record = self._open[step] = self._new(step)
            if len(self._open) > self._limit:
                self._close(self._open.popitem(last=False)[1])
        return record

    def close_all(self) -> None:
        while self._open:
            self._close(self._open.popitem(last=False)[1])


class TopSteps(Generic[R]):
    """The ``n`` best items by ``key`` (largest first) of a stream, in O(n) memory: a heap."""

    def __init__(self, n: int, key: Callable[[R], tuple[Any, ...]]) -> None:
        self._n, self._key = max(0, n), key
        self._heap: list[tuple[tuple[Any, ...], int, R]] = []
        self._count = 0  # a tie-breaker, so that items themselves are never compared

    def add(self, item: R) -> None:
        if self._n == 0:
            return
        entry = (self._key(item), self._count, item)
        self._count += 1
        if len(self._heap) < self._n:
            heapq.heappush(self._heap, entry)
        elif entry[0] > self._heap[0][0]:
            heapq.heapreplace(self._heap, entry)

    def admits(self, key: tuple[Any, ...]) -> bool:
        """Whether an item of this ``key`` would be kept if it were added now."""
        return self._n > 0 and (len(self._heap) < self._n or key > self._heap[0][0])

    def best(self) -> list[R]:
        """The kept items, best first."""
        return [item for _, _, item in sorted(self._heap, key=lambda e: e[0], reverse=True)]


class _Steps:
    """Step records by step number; a resumed run may touch a step in two sessions."""

    def __init__(self, per_step: bool | int) -> None:
        self.all = per_step is True
        self.enabled = per_step is True or (not isinstance(per_step, bool) and per_step > 0)
        self.by_step: dict[int, StepRecord] = {}
        # Bounded: the most-sampled steps (lowest step first among equals), through a heap.
        self.top: TopSteps[StepRecord] = TopSteps(
            0 if isinstance(per_step, bool) else per_step, lambda r: (r.samples, -r.step)
        )
        self.open: OpenSteps[StepRecord] = OpenSteps(
            lambda step: StepRecord(step=step), self.top.add
        )

    def get(self, step: int) -> StepRecord | None:
        if not self.enabled:
            return None
        if not self.all:
            return self.open.get(step)
        record = self.by_step.get(step)
        if record is None:
            record = self.by_step[step] = StepRecord(step=step)
        return record

    def records(self) -> list[StepRecord]:
        if self.all:
            return [self.by_step[n] for n in sorted(self.by_step)]
        self.open.close_all()
        return sorted(self.top.best(), key=lambda r: r.step)


class Fold:
    """:func:`summarize` one event at a time: :meth:`add` each event in seq order, then read
    :meth:`summary`. For callers that read the events themselves (and fold several views in
    one pass)."""

    def __init__(self, *, per_step: bool | int = True) -> None:
        self._s = RunSummary()
        self._steps = _Steps(per_step)

    def add(self, event: AnyEvent) -> None:
        s = self._s
        steps = self._steps
        s.events += 1
        if s.events == 1:
            s.first_ts = event.ts
        s.last_ts = event.ts
        match event:
            case RunStarted():
                s.run_id, s.task, s.task_params = event.run_id, event.task, event.task_params
                s.models, s.seed = list(event.models), event.seed
                s.policy, s.model_params = dict(event.policy), dict(event.model_params)
                s.version = event.version
                recorded = recorded_policy(event.policy)
                s.k = recorded.k if isinstance(recorded, PolicyRecord) else 0
                s.initial_state = s.final_state = event.initial_state
            case StepStarted():
                if (record := steps.get(event.step)) is not None:
                    if record.branch != event.branch:
                        record.restart(event.branch, event.speculative)
                    elif event.speculative:
                        record.speculative = True
            case SampleRequested():
                s.samples += 1
                if (record := steps.get(event.step)) is not None:
                    record.samples += 1
            case SampleReceived():
                s.received += 1
                s.input_tokens += event.input_tokens
                s.output_tokens += event.output_tokens
                s.cost_usd += event.cost_usd
                if (record := steps.get(event.step)) is not None:
                    record.received += 1
                    record.cost_usd += event.cost_usd
            case SampleFailed():
                s.failures += 1
                s.failures_by_kind[event.error_kind] += 1
                if (record := steps.get(event.step)) is not None:
                    record.failures += 1
            case SampleCancelled():
                s.cancelled += 1
                s.cancelled_by_reason[event.reason] += 1
                if (record := steps.get(event.step)) is not None:
                    record.cancelled += 1
            case RedFlagged():
                s.red_flags[event.reason] += 1
                if (record := steps.get(event.step)) is not None:
                    record.red_flags += 1
            case VoteCounted():
                s.votes += 1
                if (record := steps.get(event.step)) is not None:
                    record.votes = dict(event.tally)
            case StepDecided():
                s.decided_steps += 1
                s.decided_samples += event.samples
                s.max_decided_samples = max(s.max_decided_samples, event.samples)
                if steps.all:
                    s.samples_per_step[event.step] = event.samples
                if (record := steps.get(event.step)) is not None:
                    record.winner, record.votes = event.winner, dict(event.votes)
            case StateChanged():
                s.steps = event.step + 1
                s.final_state = event.state
                if (record := steps.get(event.step)) is not None:
                    record.state = event.state
            case RunResumed():
                # Until it finishes again the run is running, whatever an earlier session said.
                s.resumed += 1
                s.status, s.reason = "running", ""
            case RunFinished():
                s.status, s.reason = event.status, event.reason
                s.wall_s = (s.wall_s or 0.0) + event.wall_s
            # Rare events last: every event is matched against the cases in order.
            case SampleHedged():
                s.hedged_samples += 1
            case StepAbandoned():
                # The start's samples were drawn for a state the previous step did not lead
                # to: they cost, but the step's record keeps only the start that decides.
                # Its ``samples`` are those requested for it, as a decision's are.
                s.misspeculated_steps += 1
                s.misspeculated_samples += event.samples
                if (record := steps.get(event.step)) is not None:
                    record.abandoned += 1
                    record.abandoned_samples += event.samples
                    record.restart(event.branch + 1, False)
            case _:
                pass

    def summary(self) -> RunSummary:
        """The summary of the events added so far (call once, at the end)."""
        self._s.step_records = self._steps.records()
        return self._s


def summarize(events: Iterable[AnyEvent], *, per_step: bool | int = True) -> RunSummary:
    """Fold one run's events, in seq order, into its :class:`RunSummary`.

    The events are consumed one at a time, so a generator (or :func:`summarize_async` over a
    log's reader) folds any run in bounded memory, unless ``per_step=True`` (the default)
    keeps a :class:`StepRecord` for every step (and its state): O(steps). ``per_step=n`` keeps
    the n steps that requested the most samples, in O(n) (a heap, and at most
    :data:`OPEN_STEPS` steps being folded at once); ``per_step=False`` keeps none: for a quick
    look at a very long run.

    ``wall_s`` adds up the ``run_finished`` durations of the run's sessions (a run cancelled and
    resumed has two); a session killed outright left none, so its time is not counted. When no
    session finished, :meth:`RunSummary.to_json` falls back to the span of the timestamps.
    """
    fold = Fold(per_step=per_step)
    for event in events:
        fold.add(event)
    return fold.summary()


async def summarize_async(
    events: AsyncIterable[AnyEvent], *, per_step: bool | int = True
) -> RunSummary:
    """:func:`summarize` over an async iterable, such as :meth:`events.EventLog.read`."""
    fold = Fold(per_step=per_step)
    async for event in events:
        fold.add(event)
    return fold.summary()
