"""The step loop: one run's events, from ``run_started`` to ``run_finished``.

The loop is the only place that records events and decides. Its samples are made by a
:class:`~._sampling._Sampler`, whose workers only call the model and hand the outcome back, so
the decisions are a pure function of the task, the policy and the outcomes in the order they
were recorded (the determinism contract). A run that re-executes a recording (a verification,
a resumption's prefix) checks each event against the recorded one instead of appending it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import anyio
import msgspec

from events import (
    OBSERVATIONAL_TYPES,
    Event,
    EventLog,
    KChanged,
    RunFinished,
    RunResumed,
    RunStarted,
    RunStatus,
    SampleHedged,
    StateChanged,
    StepAbandoned,
    StepDecided,
    StepStarted,
    VoteCounted,
    canonical_json,
)

from ..clients._embedding import make_matcher
from ..core._adaptive import PEstimate
from ..core._client import Client
from ..core._errors import ConfigError
from ..core._matchers import Grouping, Matcher
from ..core._policy import Policy
from ..core._pricing import PriceTable
from ..core._tally import Tally
from ..core._task import Prompt, Task
from ..core._version import __version__
from ._recording import Divergence, Recording, _RecordingEnded
from ._results import RunResult
from ._sampling import HedgeDue, _Counters, _Envelope, _Sampler, _StepFailed, _Traffic
from ._scheduler import Scheduler

S = TypeVar("S")
A = TypeVar("A")

EventSink = Callable[[Event], None]
"""A live observer of events (a progress bar, a tracer). Called in seq order; must not block."""


@runtime_checkable
class ReplayAwareSink(Protocol):
    """An event sink that wants to tell re-executed events from new ones.

    Before a resumption or a verification re-executes a recorded run, the engine calls
    :meth:`replaying` on each of its sinks that has it: the events of that run up to
    ``through_seq`` are then the recorded prefix again (seen by this process for the second
    time, since the process that recorded them saw them first), and only later ones are new.
    :class:`maker.otel.TraceSink` uses it not to count a prefix's metrics twice.
    """

    def __call__(self, event: Event) -> None: ...

    def replaying(self, run_id: str, through_seq: int) -> None: ...


_OBSERVATIONAL = frozenset(OBSERVATIONAL_TYPES)  # event types are final: no subclasses


class _Run(Generic[S, A]):
    """One run: its events, and the loop that votes its steps one after another.

    A re-execution of ``recording`` checks its events against the recorded ones until the
    recording ends (a verification then stops; a resumption goes on live, after a
    ``run_resumed`` marker). :meth:`walk` is the loop: a subclass with a loop of its own (a
    calibration) replaces it and keeps the rest.
    """

    def __init__(
        self,
        *,
        task: Task[S, A],
        policy: Policy,
        seed: int,
        run_id: str,
        log: EventLog,
        client: Client,
        scheduler: Scheduler,
        prices: PriceTable,
        clock: Callable[[], float],
        sinks: tuple[EventSink, ...],
        traffic: _Traffic,
        recording: Recording | None = None,
        verify_only: bool = False,
        compare_policy: bool = True,
    ) -> None:
        self.task = task
        self.policy = policy
        self.seed = seed
        self.run_id = run_id
        self.log = log
        self.client = client
        self.scheduler = scheduler
        self.sinks = sinks
        self.clock = clock
        self.recording = recording
        self.verify_only = verify_only
        self.compare_policy = compare_policy
        self.position = 0  # how many recorded events have been reproduced
        self.resumed = False
        self.result: RunResult | None = None
        self.k = policy.k
        # Built before run_started is recorded: a matcher that cannot be built (its extra
        # missing) fails the run before it begins. None is the exact matcher's fast path.
        matcher = make_matcher(policy.matcher)
        self.matcher: Matcher | None = None if matcher.exact else matcher
        self.estimate = PEstimate(policy.adaptive) if policy.adaptive is not None else None
        if self.estimate is not None and task.max_steps() is None:
            raise ConfigError(
                "adaptive", f"needs a task with a known number of steps ({task.name})"
            )
        self.last_votes: dict[str, int] = {}
        self.last_winner = ""
        self.seq = recording.next_seq if recording is not None else 0
        self.counters = _Counters()
        self.steps = 0
        self.state: S = task.initial_state()
        self.sampler: _Sampler[A] = _Sampler(
            self,
            task=task,
            policy=policy,
            seed=seed,
            client=client,
            scheduler=scheduler,
            prices=prices,
            counters=self.counters,
            traffic=traffic,
            recording=recording,
            verify_only=verify_only,
        )

    # -- the events --------------------------------------------------------------------------

    def envelope(self) -> _Envelope:
        """The envelope of the run's next event: ``Event(**run.envelope(), ...fields)``.

        It assigns nothing: the seq is the run's once the event is appended (:meth:`emit`,
        :meth:`emit_now`). The events of every step (step_started, sample_requested,
        sample_received, vote_counted, step_decided, state_changed) spell the same three
        keywords out instead, ``run_id=run.run_id, seq=run.seq, ts=run.clock()``: building and
        unpacking this dict cost about a microsecond per event, some 3% of a step at zero
        latency.
        """
        return {"run_id": self.run_id, "seq": self.seq, "ts": self.clock()}

    async def emit(self, event: Event) -> None:
        """Record an event once the log has room for it: a run waits for a full log."""
        recording = self.recording
        if recording is None:
            # A live run, the common case: what emit_now does, without its replay checks.
            log = self.log
            if log.full:
                await log.room()
            if event.seq != self.seq:
                # Another event of this run took its seq while it waited for room.
                event = msgspec.structs.replace(event, seq=self.seq, ts=self.clock())
            log.append(event)
            self.seq += 1
            for sink in self.sinks:
                sink(event)
            return
        if not recording.holds(self.position):
            await recording.ready(self.position)  # read the recording on to this step's end
        if recording.pending(self.position):
            self._reproduce(recording, event)
            return
        if self.log.full:
            await self.log.room()
        self.emit_now(event)

    def emit_now(self, event: Event) -> None:
        """Record an event at once, even past the log's bound: for the scheduler's waits (its
        callbacks cannot wait) and for the last words of a cancelled run."""
        recording = self.recording
        if recording is not None:
            if recording.pending(self.position):
                self._reproduce(recording, event)
                return
            if self.verify_only:
                raise _RecordingEnded
            if not self.resumed:
                self.resumed = True
                self.emit_now(
                    RunResumed(**self.envelope(), replayed=self.position, version=__version__)
                )
        if event.seq != self.seq:
            # Built during the replay, or before a marker took its seq.
            event = msgspec.structs.replace(event, seq=self.seq, ts=self.clock())
        self.log.append(event)
        self.seq += 1
        for sink in self.sinks:
            sink(event)

    def _reproduce(self, recording: Recording, event: Event) -> None:
        """Check an event against the recorded one instead of recording it."""
        if type(event) in _OBSERVATIONAL:
            return  # waits are not reproduced; the recorded ones stay in the log
        sinks = self.sinks
        reproduced = recording.reproduce(
            self.position, event, build=bool(sinks), compare_policy=self.compare_policy
        )
        self.position += 1
        if reproduced is not None:
            for sink in sinks:
                sink(reproduced)

    @property
    def replaying(self) -> bool:
        """Whether events are still being checked against a recording rather than appended."""
        return self.recording is not None and self.recording.pending(self.position)

    # -- the run -----------------------------------------------------------------------------

    def recorded_policy(self) -> dict[str, Any]:
        """The policy as ``run_started`` records it."""
        return self.policy.describe()

    async def execute(self) -> RunResult:
        """Run from ``run_started`` to ``run_finished``, and return the result.

        A failure the run decided (a step that cannot be decided, a sample that failed for
        good) ends it as failed; a cancellation as cancelled; an error in task or client code
        is recorded as the run's end, then raised.
        """
        started = time.perf_counter()
        task = self.task
        await self.emit(
            RunStarted(
                **self.envelope(),
                task=task.name,
                task_params=task.params(),
                policy=self.recorded_policy(),
                models=[self.client.model],
                model_params=self.client.describe(),
                seed=self.seed,
                version=__version__,
                initial_state=task.state_to_json(self.state),
                limits=self.scheduler.limits_for(self.client.model).describe(),
            )
        )
        status: RunStatus = "succeeded"
        reason = ""
        try:
            await self.walk()
        except _StepFailed as exc:
            status, reason = "failed", exc.reason
        except (Divergence, _RecordingEnded):
            raise
        except anyio.get_cancelled_exc_class():
            if not self.replaying:
                self.finish("cancelled", "cancelled by the caller", started)
            raise
        except Exception as exc:
            if self.replaying:
                raise
            # A bug in task or client code: record the end before the error propagates.
            self.finish("failed", f"{type(exc).__name__}: {exc}", started)
            raise
        return self.finish(status, reason, started)

    def finish(self, status: RunStatus, reason: str, started: float) -> RunResult:
        """Record ``run_finished`` and build the result."""
        c = self.counters
        wall = time.perf_counter() - started
        self.emit_now(
            RunFinished(
                **self.envelope(),
                status=status,
                steps=self.steps,
                samples=c.samples,
                red_flags=sum(c.red_flags.values()),
                reason=reason,
                wall_s=wall,
                cost_usd=c.cost,
            )
        )
        self.result = RunResult(
            run_id=self.run_id,
            status=status,
            steps=self.steps,
            samples=c.samples,
            votes=c.votes,
            red_flags=sum(c.red_flags.values()),
            red_flags_by_reason=dict(c.red_flags),
            failures=c.failures,
            cancelled_samples=c.cancelled,
            misspeculated_samples=c.misspeculated,
            misspeculated_steps=c.misspeculated_steps,
            hedged_samples=c.hedged,
            k=self.k,
            wall_s=wall,
            reason=reason,
            final_state=self.task.state_to_json(self.state),
            max_samples_in_step=c.max_in_step,
            cost_usd=c.cost,
            input_tokens=c.input_tokens,
            output_tokens=c.output_tokens,
        )
        return self.result

    # -- the voting chain --------------------------------------------------------------------

    async def walk(self) -> None:
        """Vote step after step, each from the state the last one decided, until done."""
        task = self.task
        budget = task.max_steps()
        # Each state is serialised once: the JSON that ends one step starts the next.
        state_json = task.state_to_json(self.state)
        if self.estimate is not None:
            await self._adapt(budget)
        policy = self.policy
        if policy.pipeline or policy.hedge is not None:
            await self._walk_pipelined(budget, state_json)
            return
        while not task.is_done(self.state):
            if budget is not None and self.steps >= budget:
                raise _StepFailed(f"the task is not done after its budget of {budget} steps")
            answer = await self._vote(self.steps, self.state, state_json)
            self.state = task.apply(self.state, answer)
            state_json = task.state_to_json(self.state)
            await self.emit(
                StateChanged(
                    run_id=self.run_id,
                    seq=self.seq,
                    ts=self.clock(),
                    step=self.steps,
                    state=state_json,
                )
            )
            self.steps += 1
            if self.estimate is not None:
                votes = self.last_votes
                agree = votes.get(self.last_winner, 0)
                self.estimate.add(agree=agree, disagree=sum(votes.values()) - agree)
                await self._adapt(budget)

    async def _vote(self, step: int, state: S, state_json: Any) -> A:
        """Sample ``step`` until one answer leads by k; its answer."""
        task, policy, sampler = self.task, self.policy, self.sampler
        prompt = task.prompt(state)
        await self.emit(
            StepStarted(
                run_id=self.run_id, seq=self.seq, ts=self.clock(), step=step, state=state_json
            )
        )
        tally = Tally(self.k, policy.rule)
        grouping = self.matcher.grouping() if self.matcher is not None else None
        answers: dict[str, A] = {}
        # Under a matcher: each key's first answer as parsed, when it differs from the key.
        written: dict[str, str | msgspec.UnsetType] = {}
        ordinal = 0
        red_flags = 0
        last_answer: A | None = None
        candidate = ""
        raw: str | msgspec.UnsetType = msgspec.UNSET
        winner: str | None = None
        failure: _StepFailed | None = None
        try:
            async with sampler.scope():
                try:
                    while winner is None:
                        deficit = tally.needed() + policy.speculative - sampler.in_flight
                        while deficit > 0 and ordinal < policy.max_samples_per_step:
                            await sampler.request(
                                step, ordinal, prompt, policy.temperature_for(ordinal)
                            )
                            ordinal += 1
                            deficit -= 1
                        if not sampler.in_flight:
                            raise _StepFailed(_undecided(step, ordinal, policy, tally))
                        request, answer = await sampler.next()
                        if answer is None:
                            red_flags += 1
                            continue
                        if isinstance(answer, HedgeDue):
                            continue  # not asked for: this loop sends no hedges
                        if answer is not last_answer:
                            # A task may hand back the very answer it read for an earlier
                            # sample (Hanoi does when the answer lines repeat): its key is the
                            # same too.
                            last_answer = answer
                            if grouping is None:
                                candidate = canonical_json(task.answer_to_json(answer))
                            else:
                                candidate, raw = _keyed(grouping, task.answer_to_json(answer))
                        if candidate not in answers:
                            answers[candidate] = answer
                            written[candidate] = raw
                        winner = tally.add(candidate)
                        self.counters.votes += 1
                        await self.emit(
                            VoteCounted(
                                run_id=self.run_id,
                                seq=self.seq,
                                ts=self.clock(),
                                step=step,
                                sample_id=request.sample_id,
                                candidate=candidate,
                                tally=tally.votes,
                                answer=raw,
                            )
                        )
                except _StepFailed as exc:
                    # Raised once the scope is left, as itself (its task group would wrap it).
                    failure = exc
                else:
                    votes = tally.votes
                    self.last_votes, self.last_winner = votes, winner
                    await self.emit(
                        StepDecided(
                            run_id=self.run_id,
                            seq=self.seq,
                            ts=self.clock(),
                            step=step,
                            winner=winner,
                            votes=votes,
                            samples=ordinal,
                            red_flags=red_flags,
                            answer=written[winner],
                        )
                    )
                    self.counters.max_in_step = max(self.counters.max_in_step, ordinal)
                # Whatever is still in flight can no longer matter: stop it and say so.
                sampler.abandon("decided")
        except anyio.get_cancelled_exc_class():
            sampler.abandon("run_cancelled")
            raise
        if failure is not None:
            raise failure
        assert winner is not None
        return answers[winner]

    # -- the pipelined chain -----------------------------------------------------------------

    async def _walk_pipelined(self, budget: int | None, state_json: Any) -> None:
        """Vote up to ``policy.pipeline`` steps ahead of the oldest undecided one, each from
        the state its predecessor's leading answer implies, and hedge stragglers.

        Every choice here (what to request, which start to abandon, when to hedge) is made in
        the loop's turn from outcomes in the order they are recorded, so a replay takes the
        same path: a hedge, the one choice made by the clock, comes to the loop as an outcome
        (recorded as ``sample_hedged``) and a replay serves it where the log has it.
        """
        task, sampler = self.task, self.sampler
        if task.is_done(self.state):
            return
        if budget is not None and self.steps >= budget:
            raise _StepFailed(f"the task is not done after its budget of {budget} steps")
        chain = _Chain[S, A](self, budget)
        failure: _StepFailed | None = None
        try:
            async with sampler.scope():
                try:
                    await chain.walk(state_json)
                except _StepFailed as exc:
                    # Raised once the scope is left, as itself (its task group would wrap it).
                    failure = exc
                sampler.abandon("decided")
        except anyio.get_cancelled_exc_class():
            sampler.abandon("run_cancelled")
            raise
        if failure is not None:
            raise failure

    async def _adapt(self, budget: int | None) -> None:
        """Adaptive k: choose k for the steps ahead from the votes so far; record a change."""
        estimate = self.estimate
        assert estimate is not None
        assert budget is not None
        k = estimate.k(budget)
        if k != self.k or self.steps == 0:
            self.k = k
            await self.emit(
                KChanged(
                    **self.envelope(),
                    step=self.steps,
                    k=k,
                    p_mean=estimate.mean,
                    p_low=estimate.lower,
                    agree=estimate.alpha,
                    disagree=estimate.beta,
                )
            )


class _Start(Generic[S, A]):
    """One start of a step: the state its samples are drawn for, and their tally.

    ``assumed`` is the predecessor's candidate whose answer leads to ``state`` while that step
    is undecided (a speculative start); None once the state is the decided one.
    """

    __slots__ = (
        "answers",
        "assumed",
        "branch",
        "candidate",
        "grouping",
        "hedged",
        "hedges",
        "in_flight",
        "last_answer",
        "overdue",
        "prompt",
        "raw",
        "red_flags",
        "requested",
        "state",
        "state_json",
        "step",
        "stuck_on",
        "tally",
        "written",
    )

    def __init__(
        self,
        step: int,
        branch: int,
        state: S,
        state_json: Any,
        prompt: Prompt,
        tally: Tally,
        assumed: str | None,
        grouping: Grouping | None = None,
    ) -> None:
        self.step = step
        self.branch = branch
        self.state = state
        self.state_json = state_json
        self.prompt = prompt
        self.tally = tally
        self.assumed = assumed
        self.answers: dict[str, A] = {}
        self.requested = 0
        self.red_flags = 0
        self.in_flight: dict[str, None] = {}  # sample ids, in request order
        self.hedges = 0
        self.hedged: set[str] = set()
        self.overdue: list[str] = []  # stragglers passed over while this start was ahead
        self.last_answer: object = None
        self.candidate = ""
        self.grouping = grouping
        self.raw: str | msgspec.UnsetType = msgspec.UNSET
        self.written: dict[str, str | msgspec.UnsetType] = {}
        self.stuck_on: str | None = None  # a leader whose answer the task cannot apply

    def leader(self) -> str | None:
        """The candidate the next step follows: the winner, else the most voted."""
        winner = self.tally.winner
        return winner if winner is not None else self.tally.leader()[0]


class _Chain(Generic[S, A]):
    """The open starts of a pipelined run: ``opened[0]`` is the oldest undecided step (the
    head), each later one a start of the next step from the state its predecessor's leader
    implies."""

    def __init__(self, run: _Run[S, A], budget: int | None) -> None:
        self.run = run
        self.task = run.task
        self.policy = run.policy
        self.sampler = run.sampler
        self.counters = run.counters
        self.budget = budget
        self.opened: deque[_Start[S, A]] = deque()
        self.by_sample: dict[str, _Start[S, A]] = {}
        self.branches: dict[int, int] = {}  # starts of each open step so far
        self.ordinals: dict[int, int] = {}  # sample ordinals of each open step so far

    async def walk(self, state_json: Any) -> None:
        """Vote until the task is done (or raise :class:`_StepFailed`)."""
        run, sampler, opened, by_sample = self.run, self.sampler, self.opened, self.by_sample
        await self._open(run.steps, run.state, state_json, None)
        await self._extend()
        while True:
            head = opened[0]
            if not head.in_flight:
                raise _StepFailed(_undecided(head.step, head.requested, self.policy, head.tally))
            request, answer = await sampler.next()
            sample_id = request.sample_id
            start = by_sample[sample_id]
            if isinstance(answer, HedgeDue):
                await self._hedge(start, sample_id, answer)
                continue
            del by_sample[sample_id]
            del start.in_flight[sample_id]
            if answer is None:
                start.red_flags += 1
            else:
                await self._vote(start, sample_id, answer)
                if await self._settle():
                    return
            if start in opened:  # not decided or abandoned by this outcome
                await self._fill(start)
            await self._extend()

    async def _open(self, step: int, state: S, state_json: Any, assumed: str | None) -> None:
        """Start ``step`` from ``state`` (speculatively when ``assumed`` is set)."""
        run = self.run
        branch = self.branches.get(step, 0)
        self.branches[step] = branch + 1
        start = _Start[S, A](
            step,
            branch,
            state,
            state_json,
            self.task.prompt(state),
            Tally(run.k, self.policy.rule),
            assumed,
            run.matcher.grouping() if run.matcher is not None else None,
        )
        await run.emit(
            StepStarted(
                run_id=run.run_id,
                seq=run.seq,
                ts=run.clock(),
                step=step,
                state=state_json,
                branch=branch,
                speculative=assumed is not None,
            )
        )
        self.opened.append(start)
        await self._fill(start)

    async def _fill(self, start: _Start[S, A]) -> None:
        """Request what could still decide ``start``, within the per-step cap."""
        tally = start.tally
        if tally.winner is not None:
            return
        policy = self.policy
        deficit = tally.needed() + policy.speculative - len(start.in_flight)
        while deficit > 0 and start.requested < policy.max_samples_per_step:
            await self._request(start)
            deficit -= 1

    async def _request(self, start: _Start[S, A]) -> None:
        step = start.step
        ordinal = self.ordinals.get(step, 0)
        self.ordinals[step] = ordinal + 1
        # The temperature follows the start's own count: its first sample is its first vote.
        temperature = self.policy.temperature_for(start.requested)
        sample_id = await self.sampler.request(step, ordinal, start.prompt, temperature)
        start.requested += 1
        start.in_flight[sample_id] = None
        self.by_sample[sample_id] = start

    async def _extend(self) -> None:
        """Open starts ahead while the depth allows and the last one has a leader."""
        opened, task, budget = self.opened, self.task, self.budget
        depth = self.policy.pipeline
        while len(opened) <= depth:
            last = opened[-1]
            leader = last.leader()
            if leader is None or leader == last.stuck_on:
                return
            step = last.step + 1
            if budget is not None and step >= budget:
                return
            try:
                state = task.apply(last.state, last.answers[leader])
            except Exception:
                # A leading answer the task refuses to apply: nothing to speculate on until
                # another leads (if it wins, the run records the task's error as it would).
                last.stuck_on = leader
                return
            if task.is_done(state):
                return
            await self._open(step, state, task.state_to_json(state), leader)

    async def _vote(self, start: _Start[S, A], sample_id: str, answer: A) -> None:
        run = self.run
        if answer is not start.last_answer:
            # A task may hand back the very answer it read for an earlier sample: its key is
            # the same too.
            start.last_answer = answer
            grouping = start.grouping
            if grouping is None:
                start.candidate = canonical_json(self.task.answer_to_json(answer))
            else:
                start.candidate, start.raw = _keyed(grouping, self.task.answer_to_json(answer))
        candidate = start.candidate
        if candidate not in start.answers:
            start.answers[candidate] = answer
            start.written[candidate] = start.raw
        tally = start.tally
        winner = tally.add(candidate)
        self.counters.votes += 1
        await run.emit(
            VoteCounted(
                run_id=run.run_id,
                seq=run.seq,
                ts=run.clock(),
                step=start.step,
                sample_id=sample_id,
                candidate=candidate,
                tally=tally.votes,
                answer=start.raw,
            )
        )
        opened = self.opened
        if winner is not None and start is not opened[0] and start.in_flight:
            self._cancel(start, "decided")  # its tally is decided; its step soon may be
        at = opened.index(start) + 1
        if at < len(opened) and opened[at].assumed != start.leader():
            await self._abandon(at)

    async def _settle(self) -> bool:
        """Decide the head while its tally has a winner; True once the task is done."""
        run, task, opened, budget = self.run, self.task, self.opened, self.budget
        while opened and opened[0].tally.winner is not None:
            head = opened.popleft()
            winner = head.tally.winner
            assert winner is not None
            votes = head.tally.votes
            run.last_votes, run.last_winner = votes, winner
            await run.emit(
                StepDecided(
                    run_id=run.run_id,
                    seq=run.seq,
                    ts=run.clock(),
                    step=head.step,
                    winner=winner,
                    votes=votes,
                    samples=head.requested,
                    red_flags=head.red_flags,
                    answer=head.written[winner],
                )
            )
            self.counters.max_in_step = max(self.counters.max_in_step, head.requested)
            if head.in_flight:
                self._cancel(head, "decided")
            child = opened[0] if opened else None
            confirmed = child is not None and child.assumed == winner
            if child is not None and confirmed:
                state, state_json = child.state, child.state_json
            else:
                state = task.apply(head.state, head.answers[winner])
                state_json = task.state_to_json(state)
            run.state = state
            await run.emit(
                StateChanged(
                    run_id=run.run_id, seq=run.seq, ts=run.clock(), step=head.step, state=state_json
                )
            )
            run.steps += 1
            del self.branches[head.step], self.ordinals[head.step]
            self.sampler.rearm()
            reason = "misspeculated"
            if run.estimate is not None:
                agree = votes.get(winner, 0)
                run.estimate.add(agree=agree, disagree=sum(votes.values()) - agree)
                k = run.k
                await run._adapt(budget)
                if run.k != k:
                    # The starts ahead were voted under the old k: a step votes under the k
                    # chosen once its predecessor is decided, as it does one step at a time.
                    confirmed = False
                    reason = "k_changed"
            if task.is_done(state):
                if opened:
                    await self._abandon(0, reason)
                return True
            if budget is not None and run.steps >= budget:
                raise _StepFailed(f"the task is not done after its budget of {budget} steps")
            if child is not None and confirmed:
                child.assumed = None
                if child.overdue:
                    self.sampler.refire(child.overdue)
                    child.overdue.clear()
            else:
                if opened:
                    await self._abandon(0, reason)
                await self._open(run.steps, state, state_json, None)
        return False

    def _cancel(self, start: _Start[S, A], reason: str) -> None:
        ids = list(start.in_flight)
        self.sampler.cancel(ids, reason)
        by_sample = self.by_sample
        for sample_id in ids:
            del by_sample[sample_id]
        start.in_flight.clear()

    async def _abandon(self, at: int, reason: str = "misspeculated") -> None:
        """Abandon the starts from ``opened[at]`` on: they follow a state that is not their
        predecessor's leader (or decided) any more (``"misspeculated"``), or were voted under
        a k that changed since (``"k_changed"``)."""
        run, opened, counters = self.run, self.opened, self.counters
        doomed = [opened[i] for i in range(at, len(opened))]
        for _ in doomed:
            opened.pop()
        for start in doomed:
            if start.in_flight:
                self._cancel(start, reason)
            await run.emit(
                StepAbandoned(
                    **run.envelope(),
                    step=start.step,
                    branch=start.branch,
                    reason=reason,
                    samples=start.requested,
                    votes=start.tally.votes,
                    red_flags=start.red_flags,
                )
            )
            counters.misspeculated += start.requested
            counters.misspeculated_steps += 1

    async def _hedge(self, start: _Start[S, A], straggler: str, due: HedgeDue) -> None:
        """Send a hedge beside ``straggler`` if it holds up the run and the bounds allow."""
        hedge, counters = self.policy.hedge, self.counters
        assert hedge is not None
        if start is not self.opened[0]:
            # Not holding up the run yet (its step is ahead): asked again if it becomes so.
            start.overdue.append(straggler)
            return
        if (
            straggler in start.hedged
            or start.hedges >= hedge.per_step
            or start.tally.winner is not None
            or start.requested >= self.policy.max_samples_per_step
            or counters.hedged >= max(1, int(hedge.share * counters.samples))
        ):
            return
        run, step = self.run, start.step
        await run.emit(
            SampleHedged(
                **run.envelope(),
                step=step,
                sample_id=f"{step}:{self.ordinals[step]}",
                straggler=straggler,
                in_flight_s=due.in_flight_s,
                threshold_s=due.threshold_s,
            )
        )
        start.hedges += 1
        start.hedged.add(straggler)
        counters.hedged += 1
        await self._request(start)


def _keyed(grouping: Grouping, value: Any) -> tuple[str, str | msgspec.UnsetType]:
    """The key an answer's JSON votes under, and its own canonical JSON when that differs."""
    raw = canonical_json(value)
    key = grouping.key(value, raw)
    return key, (msgspec.UNSET if raw == key else raw)


def _undecided(step: int, samples: int, policy: Policy, tally: Tally) -> str:
    leader, lead = tally.leader()
    votes = tally.votes
    detail = (
        f"{len(votes)} candidates, the leader {votes[leader]} votes ahead by {lead}"
        if leader is not None
        else "no valid vote"
    )
    return (
        f"step {step} undecided after {samples} samples "
        f"(max_samples_per_step={policy.max_samples_per_step}): {detail}"
    )
