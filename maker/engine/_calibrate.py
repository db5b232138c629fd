"""Calibration: measure each model's per-step success rate p on random steps of a task.

The first step of the paper's critical path: before committing to a million-step run,
estimate p for every candidate model on a random sample of steps, so that k_min (Eq 14) and the
expected cost (Eq 18-19) can be computed and the cheapest reliable model chosen.

A calibration draws ``samples`` random step indices of the task's known solution, builds the
state at each index by applying the task's oracle from the initial state, and asks every model
once per sampled state at the run temperature. Each model's calibration is an ordinary run in the
event log, marked ``"mode": "calibration"`` in its recorded policy:

- ``run_started``;
- per sampled state: ``step_started`` (``step`` is the state's index in the solution), then per
  sample ``sample_requested``, ``sample_failed`` for each failed attempt, ``sample_received``, and
  ``red_flagged`` or ``vote_counted``;
- ``run_finished``.

There is no ``step_decided`` or ``state_changed``: the states are not chained, nothing is
decided. Correctness is judged against the oracle; the report is a fold of the recorded events
(:func:`calibration_from_events`), so the log alone reproduces it.

The confidence interval is Wilson's score interval. It keeps close to its nominal coverage for
the small samples and the p near 1 that calibration meets, where the normal (Wald) interval
collapses to a point whenever no error is seen.
"""

from __future__ import annotations

import math
import os
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import anyio

from events import (
    AnyEvent,
    Event,
    EventLog,
    RedFlagged,
    RunFinished,
    RunStarted,
    RunStatus,
    SampleFailed,
    SampleReceived,
    SampleRequested,
    StepStarted,
    Store,
    VoteCounted,
    canonical_json,
    open_log,
)

from ..clients._sim import offer_simulator
from ..core._client import Client
from ..core._errors import ConfigError
from ..core._policy import CalibrationRecord, Policy, recorded_policy
from ..core._pricing import PriceTable
from ..core._serialise import fields_json
from ..core._task import Prompt, Task
from ..tasks import make_task
from ._run import EventSink, _Run
from ._sampling import _StepFailed, _Traffic, _unwrapped, sample_seed
from ._scheduler import Scheduler

Z95 = 1.959963984540054
"""The standard normal quantile of a two-sided 95% interval."""

MAX_CALIBRATION_SAMPLES = 1_000_000
"""The most samples a calibration takes per model: its states are drawn up front (tens of bytes
each), and the interval on p is already about ±0.001 wide at this many."""

CALIBRATION_MODE = "calibration"
"""The ``mode`` a calibration run records in its policy, which marks it in the log."""


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion: ``(low, high)``, 95% by default.

    With no trials nothing is known and the interval is ``(0, 1)``. At ``successes == n`` the
    upper end is exactly 1 (and the lower end 0 at ``successes == 0``).

    >>> low, high = wilson_interval(90, 100)
    >>> round(low, 4), round(high, 4)
    (0.8256, 0.9448)
    >>> wilson_interval(0, 0)
    (0.0, 1.0)
    >>> wilson_interval(20, 20)[1]
    1.0
    """
    if n < 0 or not 0 <= successes <= n:
        raise ConfigError(
            "successes", f"need 0 <= successes <= n, got successes={successes}, n={n}"
        )
    if n == 0:
        return 0.0, 1.0
    share = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    center = (share + z2 / (2 * n)) / denominator
    half = z * math.sqrt(share * (1.0 - share) / n + z2 / (4 * n * n)) / denominator
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


# -- the sampled states --------------------------------------------------------------------


def calibration_steps(total: int, samples: int, seed: int) -> list[int]:
    """The step indices a calibration queries, sorted, as a pure function of its arguments.

    With ``samples <= total`` they are distinct indices drawn uniformly from ``range(total)``.
    With more samples than steps every step is taken as often as the others (give or take one),
    the remainder drawn at random: repeated queries of a state then use distinct sample ids, so
    distinct seeds.

    >>> calibration_steps(10, 3, seed=1) == calibration_steps(10, 3, seed=1)
    True
    >>> calibration_steps(3, 7, seed=0).count(0) >= 2
    True
    """
    if total < 1:
        raise ConfigError("steps", f"the task must have at least one step, got {total}")
    if samples < 1:
        raise ConfigError("samples", f"must be at least 1, got {samples}")
    # Its own stream, derived from the run seed, so no other use of the seed shares draws.
    rng = random.Random(sample_seed(seed, "calibration:steps"))
    passes, remainder = divmod(samples, total)
    picked = list(range(total)) * passes + rng.sample(range(total), remainder)
    return sorted(picked)


def states_at(task: Task[Any, Any], indices: Iterable[int]) -> dict[int, Any]:
    """The state at each step index of the task's known solution (the oracle's path).

    A task that computes such states directly (:meth:`Task.oracle_state`, as Hanoi does) gives
    each at once; any other is walked once from its initial state with its oracle, keeping the
    wanted states. Raises :class:`ConfigError` when the task has no oracle or is done before
    the last index.
    """
    wanted = sorted(set(indices))
    if not wanted:
        return {}
    direct = {i: task.oracle_state(i) for i in wanted}
    if all(state is not None for state in direct.values()):
        return direct
    out: dict[int, Any] = {}
    state = task.initial_state()
    pending = deque(wanted)
    index = 0
    while pending:
        if index == pending[0]:
            out[index] = state
            pending.popleft()
            if not pending:
                break
        if task.is_done(state):
            raise ConfigError("task", f"{task.name} is done after {index} steps of its oracle")
        answer = task.oracle(state)
        if answer is None:
            raise ConfigError("task", _NO_ORACLE.format(name=task.name, step=index))
        state = task.apply(state, answer)
        index += 1
    return out


_NO_ORACLE = (
    "{name} has no oracle answer at step {step}; calibration needs one to build the states "
    "and to judge the answers"
)


def _oracle_key(task: Task[Any, Any], step: int, state: Any) -> str:
    """The canonical JSON of the right answer at ``state``: the candidate a correct vote has."""
    answer = task.oracle(state)
    if answer is None:
        raise ConfigError("task", _NO_ORACLE.format(name=task.name, step=step))
    return canonical_json(task.answer_to_json(answer))


# -- the report ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ModelCalibration:
    """What one model's calibration measured.

    ``n`` counts the responses received, ``valid`` those not red-flagged and ``correct`` the
    valid ones that gave the oracle's answer. ``p`` is ``correct / valid`` (None without a valid
    response) and ``v`` is ``valid / n``. Transport failures are neither: a sample that failed
    for good is in ``failures`` only.
    """

    model: str
    run_id: str
    status: RunStatus | str
    reason: str = ""
    n: int = 0
    valid: int = 0
    correct: int = 0
    requested: int = 0
    failures: int = 0
    red_flags: dict[str, int] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    """Summed over the received responses."""

    @property
    def p(self) -> float | None:
        """The share of valid responses that were right; None without a valid response."""
        return self.correct / self.valid if self.valid else None

    @property
    def interval(self) -> tuple[float, float]:
        """The 95% Wilson interval of ``p``; ``(0, 1)`` without a valid response."""
        return wilson_interval(self.correct, self.valid)

    @property
    def p_low(self) -> float:
        """The lower end of the 95% interval of ``p``."""
        return self.interval[0]

    @property
    def p_high(self) -> float:
        """The upper end of the 95% interval of ``p``."""
        return self.interval[1]

    @property
    def v(self) -> float | None:
        """The share of responses not red-flagged; None without a response."""
        return self.valid / self.n if self.n else None

    @property
    def mean_input_tokens(self) -> float:
        """Input tokens per response."""
        return self.input_tokens / self.n if self.n else 0.0

    @property
    def mean_output_tokens(self) -> float:
        """Output tokens per response."""
        return self.output_tokens / self.n if self.n else 0.0

    @property
    def cost_per_call(self) -> float:
        """USD per response (Eq 20 at the price table's prices; 0 for an unpriced model)."""
        return self.cost_usd / self.n if self.n else 0.0

    @property
    def mean_latency_s(self) -> float | None:
        """Seconds per response; None without a response."""
        return self.latency_s / self.n if self.n else None

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible builtins: one entry of ``CalibrationReport.to_json()["models"]``.

        The totals of tokens, cost and latency are given per response (what ``maker plan``
        reads), beside ``p``, its interval and ``v``; the red flags sorted by reason."""
        low, high = self.interval
        return fields_json(
            self,
            omit=("input_tokens", "output_tokens", "cost_usd", "latency_s"),
            values={"red_flags": dict(sorted(self.red_flags.items()))},
            derived={
                "p": self.p,
                "p_low": low,
                "p_high": high,
                "v": self.v,
                "mean_input_tokens": self.mean_input_tokens,
                "mean_output_tokens": self.mean_output_tokens,
                "cost_per_call": self.cost_per_call,
                "mean_latency_s": self.mean_latency_s,
            },
        )


@dataclass(frozen=True, kw_only=True)
class CalibrationReport:
    """Every model's calibration on the same sampled steps of one task."""

    task: str
    task_params: dict[str, Any]
    samples: int
    seed: int
    steps: tuple[int, ...]
    """The sampled step indices, sorted (repeated when there were more samples than steps)."""
    models: tuple[ModelCalibration, ...]

    @property
    def ok(self) -> bool:
        """Whether every model's calibration ran to the end."""
        return all(m.status == "succeeded" for m in self.models)

    def model(self, name: str) -> ModelCalibration:
        """The calibration of the model named ``name``."""
        for found in self.models:
            if found.model == name:
                return found
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible builtins (``maker calibrate --json``; ``maker plan`` reads them):
        the fields but the sampled steps, each model as :meth:`ModelCalibration.to_json`."""
        return fields_json(
            self, omit=("steps",), values={"models": [m.to_json() for m in self.models]}
        )


class _Fold:
    """Folds a calibration run's events, in seq order, into its :class:`ModelCalibration`."""

    def __init__(self, oracle_for: Callable[[int, Any], str]) -> None:
        self._oracle_for = oracle_for
        self.expected: dict[int, str] = {}
        self.run_id = ""
        self.model = ""
        self.status = "running"
        self.reason = ""
        self.requested = 0
        self.n = 0
        self.valid = 0
        self.correct = 0
        self.failures = 0
        self.red_flags: Counter[str] = Counter()
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost_usd = 0.0
        self.latency_s = 0.0
        # Attempts of a sample that failed; the sample failed for good unless later answered.
        self._failed: set[str] = set()

    def feed(self, event: Event) -> None:
        match event:
            case RunStarted():
                self.run_id = event.run_id
                self.model = event.models[0] if event.models else ""
            case StepStarted():
                if event.step not in self.expected:
                    self.expected[event.step] = self._oracle_for(event.step, event.state)
            case SampleRequested():
                self.requested += 1
            case SampleFailed():
                self._failed.add(event.sample_id)
            case SampleReceived():
                self._failed.discard(event.sample_id)
                self.n += 1
                self.input_tokens += event.input_tokens
                self.output_tokens += event.output_tokens
                self.cost_usd += event.cost_usd
                self.latency_s += event.latency_s
            case RedFlagged():
                self.red_flags[event.reason] += 1
            case VoteCounted():
                self.valid += 1
                self.correct += event.candidate == self.expected.get(event.step)
            case RunFinished():
                self.status, self.reason = event.status, event.reason
            case _:
                pass

    def result(self) -> ModelCalibration:
        return ModelCalibration(
            model=self.model,
            run_id=self.run_id,
            status=self.status,
            reason=self.reason,
            requested=self.requested,
            n=self.n,
            valid=self.valid,
            correct=self.correct,
            red_flags=dict(self.red_flags),
            failures=len(self._failed),
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cost_usd=self.cost_usd,
            latency_s=self.latency_s,
        )


def is_calibration(started: RunStarted) -> bool:
    """Whether a run is a calibration (its policy records ``"mode": "calibration"``)."""
    return isinstance(recorded_policy(started.policy), CalibrationRecord)


def calibration_from_events(
    events: Iterable[AnyEvent],
    task: Task[Any, Any] | None = None,
    *,
    allow_plugins: Collection[str] = (),
) -> ModelCalibration:
    """Rebuild a calibration's figures from its run's events alone.

    ``task`` defaults to the task the run names (a task plugin only when ``allow_plugins``
    trusts it: see :func:`maker.tasks.make_task`); each answer is judged against the oracle at
    the state its ``step_started`` records.
    """
    fold: _Fold | None = None
    for event in events:
        if fold is None:
            if not isinstance(event, RunStarted):
                raise ConfigError("events", "a run's events must begin with run_started")
            if not is_calibration(event):
                raise ConfigError("events", f"run {event.run_id} is not a calibration run")
            judge = (
                task
                if task is not None
                else make_task(event.task, event.task_params, allow_plugins=allow_plugins)
            )

            def oracle_for(step: int, data: Any, judge: Task[Any, Any] = judge) -> str:
                return _oracle_key(judge, step, judge.state_from_json(data))

            fold = _Fold(oracle_for)
        fold.feed(event)
    if fold is None:
        raise ConfigError("events", "no events")
    return fold.result()


# -- running it ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Calibration:
    """What every model's calibration run shares: the task, the sampled states, the limits."""

    task: Task[Any, Any]
    policy: Policy
    scheduler: Scheduler
    prices: PriceTable
    seed: int
    samples: int
    in_flight: int
    clock: Callable[[], float]
    sinks: tuple[EventSink, ...]
    items: tuple[tuple[int, int], ...]
    """(step, ordinal) of every sample, in request order."""
    states: Mapping[int, Any]
    expected: Mapping[int, str]


class _CalibrationRun(_Run[Any, Any]):
    """One model's calibration: a run whose loop asks about independent states, each as many
    times as it was drawn, and votes nothing.

    Its events, its sampling (attempts, retries, red flags) and its end are a run's; only the
    loop is its own: the states come from the oracle, not from votes, up to ``in_flight``
    samples are outstanding across states, and each valid answer is counted, never decided.
    """

    def __init__(self, calibration: _Calibration, client: Client, log: Store, run_id: str):
        self.fold = _Fold(lambda step, _data: calibration.expected[step])
        super().__init__(
            task=calibration.task,
            policy=calibration.policy,
            seed=calibration.seed,
            run_id=run_id,
            # _Run is typed with the SQLite log's class; it uses only what a Store offers.
            log=cast(EventLog, log),
            client=client,
            scheduler=calibration.scheduler,
            prices=calibration.prices,
            clock=calibration.clock,
            sinks=(self.fold.feed, *calibration.sinks),
            traffic=_Traffic(),
        )
        self.calibration = calibration

    async def measure(self) -> ModelCalibration:
        """Run the calibration to its end; what it measured, folded from its events."""
        await self.execute()
        return self.fold.result()

    def recorded_policy(self) -> dict[str, Any]:
        """Only what shapes a calibration's samples: it votes nothing, so k and the voting
        rule would only mislead a reader of the log."""
        policy = self.policy.record()
        return CalibrationRecord(
            samples=self.calibration.samples,
            temperature=policy.temperature,
            max_tokens=policy.max_tokens,
            max_attempts=policy.max_attempts,
            red_flags=policy.red_flags,
        ).to_json()

    async def walk(self) -> None:
        """Request every sample and record every outcome."""
        calibration, task, sampler = self.calibration, self.task, self.sampler
        queue = deque(calibration.items)
        temperature = self.policy.temperature
        started: set[int] = set()
        tallies: dict[int, Counter[str]] = {}
        # A step's samples are consecutive in the queue: its prompt is built once.
        last: tuple[int, Prompt] | None = None
        failure: _StepFailed | None = None
        try:
            async with sampler.scope():
                try:
                    while True:
                        while queue and sampler.in_flight < calibration.in_flight:
                            step, ordinal = queue.popleft()
                            state = calibration.states[step]
                            if step not in started:
                                started.add(step)
                                self.steps = len(started)
                                await self.emit(
                                    StepStarted(
                                        **self.envelope(),
                                        step=step,
                                        state=task.state_to_json(state),
                                    )
                                )
                                sampler.rearm()
                            if last is None or last[0] != step:
                                last = (step, task.prompt(state))
                            await sampler.request(step, ordinal, last[1], temperature)
                        if not sampler.in_flight:
                            break
                        request, answer = await sampler.next()
                        if answer is None:
                            continue  # red-flagged
                        candidate = canonical_json(task.answer_to_json(answer))
                        tally = tallies.setdefault(request.step, Counter())
                        tally[candidate] += 1
                        self.counters.votes += 1
                        await self.emit(
                            VoteCounted(
                                **self.envelope(),
                                step=request.step,
                                sample_id=request.sample_id,
                                candidate=candidate,
                                tally=dict(tally),
                            )
                        )
                except _StepFailed as exc:
                    failure = exc  # raised once the scope is left
                # After a failure, what is still in flight can no longer matter: say so.
                sampler.abandon("run_cancelled")
        except BaseException:
            # Cancelled, or an error in task code: the run's end is recorded after these.
            sampler.abandon("run_cancelled")
            raise
        if failure is not None:
            raise failure


async def calibrate(
    task: Task[Any, Any],
    clients: Sequence[Client],
    *,
    samples: int,
    seed: int,
    log: Store | str | os.PathLike[str],
    policy: Policy | None = None,
    scheduler: Scheduler | None = None,
    prices: PriceTable | None = None,
    in_flight: int = 16,
    clock: Callable[[], float] = time.time,
    sinks: Sequence[EventSink] = (),
) -> CalibrationReport:
    """Measure every model's p, v, tokens and cost on ``samples`` random steps of ``task``.

    Every model answers the same sampled states, once each, at ``policy.temperature`` (0.1 by
    default: the run temperature of every vote after a step's first). Calls go through
    ``scheduler``, so its limits, timeouts and breaker apply; retryable failures are retried
    with the engine's backoff up to ``policy.max_attempts``, and a sample that fails for good
    ends that model's calibration as failed (the others go on). Each model is one run in
    ``log`` (an open store, or a path or ``postgresql://`` URL); the models run concurrently, each
    with at most ``in_flight`` samples outstanding.

    >>> import anyio, os, tempfile
    >>> from maker import SimConfig, SimulatedModel
    >>> from maker.tasks import Hanoi
    >>> model = SimulatedModel(SimConfig(p=0.9, hard_fraction=0.0))
    >>> path = os.path.join(tempfile.mkdtemp(), "cal.db")
    >>> report = anyio.run(lambda: calibrate(Hanoi(8), [model], samples=100, seed=1, log=path))
    >>> m = report.models[0]
    >>> m.n, m.p_low < 0.9 < m.p_high
    (100, True)
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError("samples", f"must be a positive integer, got {samples!r}")
    if samples > MAX_CALIBRATION_SAMPLES:
        raise ConfigError(
            "samples",
            f"at most {MAX_CALIBRATION_SAMPLES:,} per model, got {samples:,} (the states to ask "
            "are drawn up front, and each sample is a call to the model)",
        )
    if isinstance(in_flight, bool) or not isinstance(in_flight, int) or in_flight < 1:
        raise ConfigError("in_flight", f"must be a positive integer, got {in_flight!r}")
    if not clients:
        raise ConfigError("models", "give at least one model to calibrate")
    names = [client.model for client in clients]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError("models", f"each model may be calibrated once; repeated: {repeated}")
    total = task.max_steps()
    if total is None:
        raise ConfigError("task", f"{task.name} has no known number of steps to sample from")
    for client in clients:  # a simulated model answers a task of one's own through its hook
        offer_simulator(client, task)
    steps = calibration_steps(total, samples, seed)
    states = states_at(task, steps)
    expected = {step: _oracle_key(task, step, state) for step, state in states.items()}
    items: list[tuple[int, int]] = []
    ordinals: Counter[int] = Counter()
    for step in steps:
        items.append((step, ordinals[step]))
        ordinals[step] += 1
    calibration = _Calibration(
        task=task,
        policy=policy if policy is not None else Policy(),
        scheduler=scheduler if scheduler is not None else Scheduler(),
        prices=prices if prices is not None else PriceTable(),
        seed=seed,
        samples=samples,
        in_flight=in_flight,
        clock=clock,
        sinks=tuple(sinks),
        items=tuple(items),
        states=states,
        expected=expected,
    )
    results: list[ModelCalibration | None] = [None] * len(clients)

    async def run_all(event_log: Store) -> None:
        async def one(index: int, client: Client) -> None:
            run = _CalibrationRun(calibration, client, event_log, uuid.uuid4().hex)
            results[index] = await run.measure()

        try:
            async with anyio.create_task_group() as tg:
                for index, client in enumerate(clients):
                    tg.start_soon(one, index, client)
        except BaseExceptionGroup as group:
            # Each model's run recorded its own end; the first error is raised as itself.
            raise _unwrapped(group, None) from None

    if not isinstance(log, str | os.PathLike):
        try:
            await run_all(log)
        finally:
            with anyio.CancelScope(shield=True):
                await log.flush()
    else:
        # Leaving the log flushes it; its task group must be exited directly, not in a scope.
        async with open_log(log) as owned:
            await run_all(owned)
    done = [r for r in results if r is not None]
    assert len(done) == len(clients)
    return CalibrationReport(
        task=task.name,
        task_params=task.params(),
        samples=samples,
        seed=seed,
        steps=tuple(steps),
        models=tuple(done),
    )
