"""The MCP server's tools, as plain async methods over one engine, scheduler and log.

Each tool takes one msgspec struct of arguments (its JSON schema is the tool's input schema:
descriptions, ranges, no unknown fields) and returns JSON-ready builtins. Nothing here knows
the protocol; :mod:`maker.apps.mcp._mcp` puts these tools behind the MCP SDK. Every call that
reaches a model is an ordinary run in the server's log, replayable like any other.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, aclosing, contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Final

import anyio
import anyio.abc
import anyio.lowlevel
import msgspec
from msgspec import Meta

from events import (
    AnyEvent,
    RedFlagged,
    RunFinished,
    RunInfo,
    SampleReceived,
    StateChanged,
    StepDecided,
    Store,
    UnknownRunError,
    VoteCounted,
    open_log,
)

from ...clients import close_client
from ...core._client import Client, Probe
from ...core._errors import ConfigError, MakerError
from ...core._formulas import expected_votes_per_step, k_min, p_run, p_step
from ...core._plan import ModelEstimate, plan
from ...core._policy import Hedge, Policy, PolicyRecord, recorded_policy
from ...core._redflags import RedFlagRules
from ...core._task import Task
from ...core._version import __version__
from ...engine._calibrate import calibrate, calibration_from_events, is_calibration
from ...engine._engine import Engine
from ...engine._handle import CancelledBeforeStart, RunHandle
from ...engine._recording import Divergence, Recording
from ...engine._results import RunResult
from ...engine._run import EventSink
from ...engine._scheduler import Scheduler
from ...tasks import AnswerParser, PromptTask, make_task, validate_response
from .._options import DEFAULT_HEDGE_QUANTILE, DEFAULT_PIPELINE, hedge_from, pipelining_for
from ..service._guard import MAX_PIPELINE, worst_cost, worst_samples
from ._mcp_config import McpConfig

CLIENT_REGEX_ENGINE: Final = "re2"
"""Patterns from a tool call are compiled with RE2, whose matching is linear in the text: a
client's pattern cannot freeze the server's event loop (see :class:`maker.tasks.AnswerParser`)."""

Progress = Callable[[float, float | None, str | None], Awaitable[None]]
"""Reports progress of one tool call: ``(progress, total, message)``."""

RunUpdate = Callable[[str, bool], Awaitable[None]]
"""Told ``(run_id, ended)`` as a run started by ``run`` or ``resume`` goes on, and once when it
ends (see :meth:`McpTools.watch_runs`)."""

WATCH_INTERVAL_S = 0.25
"""How often a watched run's listeners are told that it moved on, at most."""

logger = logging.getLogger("maker.mcp")

# -- argument types ------------------------------------------------------------------------

Probability = Annotated[
    float, Meta(gt=0.5, lt=1.0, description="Per-step success rate p of one sample (0.5 < p < 1).")
]
Target = Annotated[
    float,
    Meta(gt=0.0, lt=1.0, description="Probability that every step is decided correctly (0-1)."),
]
KMargin = Annotated[
    int, Meta(ge=1, le=100, description="The vote margin k of first-to-ahead-by-k (1-100).")
]
Seed = Annotated[int, Meta(ge=0, le=2**63 - 1, description="Seed of the run (recorded).")]
ModelName = Annotated[
    str,
    Meta(
        min_length=1,
        description="A model configured on this server (see health); the first by default.",
    ),
]
RunId = Annotated[str, Meta(min_length=1, description="A run id, or an unambiguous prefix.")]
Pattern = Annotated[
    str,
    Meta(
        min_length=1,
        description=(
            "Regex locating the answer, in RE2 syntax (matched in linear time; no "
            "backreferences or lookaround); the last match wins. The answer is the group "
            "named 'answer', else group 1, else the whole match."
        ),
    ),
]
Schema = Annotated[
    dict[str, Any],
    Meta(description="JSON Schema (2020-12) the answer must satisfy; the answer is then JSON."),
]
MaxOutputTokens = Annotated[
    int,
    Meta(
        ge=1,
        le=1_000_000,
        description="Red flag: a response with more output tokens is discarded (paper: 750).",
    ),
]


class _Args(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


MatcherSpec = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=500,
        description="Which answers vote together: exact (canonical JSON, the default), text, "
        "case, unicode, space, number[:rel=R,abs=A], json[:sets=/PATH;...], "
        "python[:path=/PTR], embedding[:threshold=T]; parts joined with +.",
    ),
]


class VoteArgs(_Args, frozen=True):
    """One error-corrected decision: sample the model until one parsed answer leads by k."""

    user: Annotated[str, Meta(min_length=1, description="The user message: the question.")]
    system: Annotated[str, Meta(description="The system message.")] = ""
    model: ModelName | None = None
    k: KMargin | None = None
    target: Target | None = None
    p: Probability | None = None
    pattern: Pattern | None = None
    schema: Schema | None = None
    max_output_tokens: MaxOutputTokens = 750
    flag_truncated: Annotated[
        bool, Meta(description="Red flag: discard a response cut off at max_tokens.")
    ] = True
    max_tokens: (
        Annotated[
            int,
            Meta(
                ge=2,
                le=1_000_001,
                description="Output cap sent to the model, above max_output_tokens so that an "
                "overlong answer is seen and flagged; max(1000, max_output_tokens + 250) by "
                "default.",
            ),
        ]
        | None
    ) = None
    max_samples: Annotated[
        int, Meta(ge=1, le=1000, description="Give up after this many samples (1-1000).")
    ] = 50
    matcher: MatcherSpec = "exact"
    seed: (
        Annotated[
            int,
            Meta(
                ge=0,
                le=2**63 - 1,
                description="Seed of the run (recorded); a fresh random one when absent, so "
                "repeated votes draw independent samples.",
            ),
        ]
        | None
    ) = None


class ValidateArgs(_Args, frozen=True):
    """Red-flag check of one response: every flag, with its reason."""

    response: Annotated[str, Meta(description="The model's response text.")]
    pattern: Pattern | None = None
    schema: Schema | None = None
    output_tokens: (
        Annotated[
            int, Meta(ge=0, description="Output tokens the provider reported; estimated if absent.")
        ]
        | None
    ) = None
    finish_reason: (
        Annotated[str, Meta(description="The provider's finish/stop reason, e.g. stop, length.")]
        | None
    ) = None
    max_output_tokens: MaxOutputTokens = 750
    flag_truncated: Annotated[
        bool, Meta(description="Flag a response cut off at the cap (length/max_tokens).")
    ] = True


Steps = Annotated[
    int, Meta(ge=1, le=10**12, description="Number of steps s of the whole task (>= 1).")
]


class KminArgs(_Args, frozen=True):
    """The paper's Eq 14: the smallest k for which s steps all succeed with probability t."""

    p: Probability
    target: Target = 0.95
    steps: Steps = 2**20 - 1


class PlanModel(_Args, frozen=True):
    """What is known of one candidate model."""

    model: Annotated[str, Meta(min_length=1, description="The model's name.")]
    p: Annotated[float, Meta(ge=0.0, le=1.0, description="Estimated per-step success rate.")]
    p_low: (
        Annotated[float, Meta(ge=0.0, le=1.0, description="Lower 95% bound of p; defaults to p.")]
        | None
    ) = None
    v: Annotated[float, Meta(gt=0.0, le=1.0, description="Share of responses not red-flagged.")] = (
        1.0
    )
    cost_per_call: Annotated[float, Meta(ge=0.0, description="USD per sample.")] = 0.0
    latency_s: Annotated[float, Meta(ge=0.0, description="Seconds per call.")] | None = None


Pipeline = Annotated[
    int,
    Meta(
        ge=0,
        le=MAX_PIPELINE,
        description=f"Pipeline depth: steps voted ahead of the oldest undecided one, each from "
        f"the state its predecessor's leading answer implies (0: off; at most {MAX_PIPELINE}).",
    ),
]
HedgeQuantile = Annotated[
    float,
    Meta(
        ge=0.0,
        lt=1.0,
        description="Hedging: a sample in flight longer than this quantile of the run's "
        "latencies gets one more sent beside it (0 or null: off).",
    ),
]


class PlanArgs(_Args, frozen=True):
    """Choose model and k for a target (Eq 13, 14, 16, 19): the cheapest reliable model."""

    steps: Steps
    models: Annotated[
        list[PlanModel],
        Meta(max_length=50, description="Candidate models with what is known of them."),
    ] = msgspec.field(default_factory=list)
    calibrations: Annotated[
        list[RunId],
        Meta(
            max_length=50,
            description="run_ids of calibrations in this server's log (from calibrate): "
            "each model's p, its interval, v and cost per call are read from there.",
        ),
    ] = msgspec.field(default_factory=list)
    target: Target = 0.95
    concurrency: Annotated[int, Meta(ge=1, le=100_000, description="Samples in flight.")] = 1
    pipeline: Pipeline = DEFAULT_PIPELINE
    hedge: HedgeQuantile | None = DEFAULT_HEDGE_QUANTILE


class PromptItem(_Args, frozen=True):
    """One prompt with its known answer."""

    user: Annotated[str, Meta(min_length=1, description="The user message.")]
    answer: Annotated[Any, Meta(description="The known right answer: text, or JSON with a schema.")]
    system: Annotated[str, Meta(description="The system message.")] = ""


class CalibrateArgs(_Args, frozen=True):
    """Estimate a model's p on prompts with known answers, by really calling it."""

    prompts: Annotated[
        list[PromptItem],
        Meta(
            min_length=1,
            max_length=10_000,
            description="Prompts with known answers, asked round-robin (1-10000).",
        ),
    ]
    model: ModelName | None = None
    pattern: Pattern | None = None
    schema: Schema | None = None
    samples: (
        Annotated[
            int,
            Meta(ge=1, le=100_000, description="Calls to make; defaults to one per prompt."),
        ]
        | None
    ) = None
    seed: Seed = 0
    target: Target = 0.95
    steps: Steps = 2**20 - 1
    max_output_tokens: MaxOutputTokens = 750


TaskName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=200,
        description="A built-in task (hanoi, arithmetic), a name an installed package registers,"
        " or a task plugin package.module:factory that the server trusts (--allow-plugin).",
    ),
]


class RunArgs(_Args, frozen=True):
    """Start a run of a task in the background."""

    task: TaskName
    params: Annotated[
        dict[str, Any],
        Meta(description='The task\'s parameters, e.g. {"disks": 10} or {"steps": 50}.'),
    ] = msgspec.field(default_factory=dict)
    model: ModelName | None = None
    k: KMargin | None = None
    target: Target | None = None
    p: Probability | None = None
    seed: Seed = 0
    max_samples: Annotated[
        int, Meta(ge=1, le=10_000, description="Per-step sample cap; the run fails past it.")
    ] = 100
    # Left out, both are on where the model waits for its answers, as for maker run.
    pipeline: Pipeline | msgspec.UnsetType = msgspec.UNSET
    hedge: HedgeQuantile | msgspec.UnsetType | None = msgspec.UNSET
    hedge_min_s: (
        Annotated[
            float,
            Meta(
                ge=0.0,
                description=f"With hedge: the least seconds in flight that are hedged "
                f"({Hedge().min_s} by default).",
            ),
        ]
        | None
    ) = None
    matcher: MatcherSpec = "exact"
    wait: Annotated[
        bool,
        Meta(
            description=(
                "Follow the run to its end, with progress notifications, instead of "
                "returning at once. Cancelling the call stops following, not the run."
            )
        ),
    ] = False


class RunStatusArgs(_Args, frozen=True):
    """A run's state, rebuilt from the log; optionally wait for it with progress."""

    run_id: RunId
    wait_s: Annotated[
        float,
        Meta(
            ge=0.0,
            le=3600.0,
            description="Seconds to follow a running run, with progress, before answering.",
        ),
    ] = 0.0


class CancelArgs(_Args, frozen=True):
    """Cancel a run this server started; it stays resumable."""

    run_id: RunId


class ResumeArgs(_Args, frozen=True):
    """Continue a cancelled or crashed run in the background; a finished one is reported."""

    run_id: RunId
    wait: Annotated[
        bool,
        Meta(
            description="Follow the run to its end, with progress notifications, instead of "
            "returning at once."
        ),
    ] = False


class ShowArgs(_Args, frozen=True):
    """A run's summary from the log; without run_id, the list of runs."""

    run_id: RunId | None = None


class ReplayVerifyArgs(_Args, frozen=True):
    """Re-execute a recorded run from its log and compare it event for event."""

    run_id: RunId


class HealthArgs(_Args, frozen=True):
    """The configuration, which models are reachable, and the scheduler's statistics."""

    probe: Annotated[bool, Meta(description="Probe each model (no generation, no cost).")] = True


# -- helpers ---------------------------------------------------------------------------------


def choose_k(k: int | None, target: float | None, p: float | None, steps: int) -> int:
    """k as given, or Eq 14's k_min for ``target`` over ``steps`` steps at ``p``; 3 if neither."""
    if k is not None:
        if target is not None or p is not None:
            raise ConfigError("k", "give k, or target with p, not both")
        return k
    if target is None and p is None:
        return 3
    if target is None or p is None:
        raise ConfigError("target" if target is None else "p", "target and p go together")
    return k_min(p, target, steps)


def _rules(max_output_tokens: int, flag_truncated: bool = True) -> RedFlagRules:
    return RedFlagRules(max_output_tokens=max_output_tokens, flag_truncated=flag_truncated)


class _Throttle:
    """Progress notifications at most every ``interval`` seconds, and always the last."""

    def __init__(self, report: Progress | None, interval: float = 0.25) -> None:
        self.report = report
        self.interval = interval
        self.last = -math.inf

    async def __call__(self, done: float, total: float | None, message: str, final: bool) -> None:
        if self.report is None:
            return
        now = time.monotonic()
        if final or now - self.last >= self.interval:
            self.last = now
            await self.report(done, total, message)


class ToolError(MakerError):
    """A tool call the server refuses or that failed, with the one line the client sees.

    ``data`` is what the tool found nonetheless (a failed vote's tallies), when anything.
    """

    def __init__(self, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.data = data


@dataclass(frozen=True, kw_only=True)
class ToolLimits:
    """Bounds of what one tool call may start and of the runs the server holds at once, as
    ``maker serve`` bounds its requests (:class:`~maker.apps.service.ServiceLimits`). None: no
    bound, which is what :class:`McpTools` has unless told (``maker mcp`` on stdio, whose one
    client is the user who started it); ``maker mcp --http`` bounds every one.

    - ``max_steps``: a run's step budget (``run``, ``resume``), and a calibration's samples
      (each is one step in the log), may not exceed this;
    - ``max_samples``: nor may ``k`` or ``max_samples`` (the samples per step of ``run`` and
      ``vote``);
    - ``max_cost_usd``: nor may a call's worst case cost, when the model's price is known: every
      step drawing all its samples, each with the prompt and ``max_tokens`` of output;
    - ``max_running``: runs of the server going at once (``run``, ``vote``, ``calibrate``,
      ``resume``); a call beyond them is refused, there is no queue.

    A call over a bound is a tool error naming the bound: the one line MCP has where HTTP
    would answer 429.

    >>> ToolLimits(max_steps=0)
    Traceback (most recent call last):
    ...
    maker.core._errors.ConfigError: max_steps: must be at least 1, got 0
    """

    max_steps: int | None = None
    max_samples: int | None = None
    max_cost_usd: float | None = None
    max_running: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_steps", "max_samples", "max_running"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, f"must be at least 1, got {value!r}")
        cost = self.max_cost_usd
        if cost is not None and not (isinstance(cost, int | float) and 0 <= cost < math.inf):
            raise ConfigError("max_cost_usd", f"must be a finite number >= 0, got {cost!r}")

    def to_json(self) -> dict[str, Any]:
        """The bounds as ``health`` reports them (null: none)."""
        return asdict(self)


# -- the tools -------------------------------------------------------------------------------


class McpTools:
    """The tools over one engine: enter it to open the log and the clients, leave it to close
    them (runs still going are cancelled and recorded as such: they stay resumable)."""

    def __init__(
        self,
        config: McpConfig,
        limits: ToolLimits | None = None,
        allow_plugins: Collection[str] = (),
        sinks: Sequence[EventSink] = (),
    ) -> None:
        self.config = config
        # Live observers of every run the tools start (the OTEL_* variables' trace sink).
        self.sinks = tuple(sinks)
        self.limits = limits if limits is not None else ToolLimits()
        # A tool call is data, and so is a log: the plugins they may name, the owner trusts.
        self.allow_plugins = tuple(allow_plugins)
        self._calibrating = 0  # calibrations going: runs outside the engine's handles
        self.prices = config.price_table()
        self.scheduler = Scheduler(limits={m.spec: m.limits() for m in config.models})
        self.clients: dict[str, Client] = {}
        self._stack = AsyncExitStack()
        self._engine: Engine | None = None
        self._handles: dict[str, RunHandle] = {}
        self._summaries: OrderedDict[tuple[str, int], dict[str, Any]] = OrderedDict()
        self._listeners: dict[object, RunUpdate] = {}
        self._watching: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> McpTools:
        try:
            for model in self.config.models:
                self.clients[model.spec] = model.client()
            if isinstance(self.config.log, Path):
                self.config.log.parent.mkdir(parents=True, exist_ok=True)
            log = await self._stack.enter_async_context(open_log(self.config.log))
            self._engine = await self._stack.enter_async_context(
                Engine(
                    log=log,
                    client=self.clients[self.config.default_model],
                    scheduler=self.scheduler,
                    prices=self.prices,
                    sinks=self.sinks,
                )
            )
            # The watchers of started runs (watch_runs). Not on the stack: a task group that an
            # exception of the caller's block passed through would wrap it in a group.
            watching = anyio.create_task_group()
            await watching.__aenter__()
            self._watching = watching
        except BaseException:
            # A model that cannot be set up, or a log that cannot be opened: release what was.
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            with anyio.CancelScope(shield=True):
                # The client is gone: runs it left going are cancelled, not waited for (each
                # records run_finished "cancelled" and stays resumable).
                for handle in list(self._handles.values()):
                    # A run that ended in an error (a resume that diverged, or was cut before
                    # it recorded anything) has said so through run_status: closing goes on.
                    with suppress(Exception):
                        await handle.cancel()
            try:
                if self._watching is not None:
                    watching, self._watching = self._watching, None
                    watching.cancel_scope.cancel()  # nobody is left to tell
                    await watching.__aexit__(None, None, None)
            finally:
                await self._stack.__aexit__(*exc)  # type: ignore[arg-type]
        finally:
            for client in self.clients.values():
                await close_client(client)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise MakerError("the tools are not open")
        return self._engine

    @property
    def log(self) -> Store:
        return self.engine.log

    def client(self, model: str | None) -> Client:
        spec = model if model is not None else self.config.default_model
        self.config.model(spec)  # ConfigError naming what the server offers
        return self.clients[spec]

    # -- bounds ------------------------------------------------------------------------

    def running(self) -> int:
        """Runs of this server going now: those with a handle, and calibrations."""
        return sum(not h.done for h in self._handles.values()) + self._calibrating

    def _check_place(self) -> None:
        """A ToolError when the server runs all the runs it may. Called with no await between
        it and the start of the run, so two calls cannot both take the last place."""
        cap = self.limits.max_running
        if cap is not None and self.running() >= cap:
            raise ToolError(
                f"the server is full: {self.running()} runs going, at most {cap} at once"
                " (--max-running); retry when one has ended"
            )

    def _check_samples(self, **given: int | None) -> None:
        """Each of ``given`` (k, max_samples) within the bound of samples per step."""
        cap = self.limits.max_samples
        for name, value in given.items():
            if cap is not None and value is not None and value > cap:
                raise ToolError(
                    f"{name}: at most {cap} on this server (--max-samples), got {value}"
                )

    def _check_steps(self, steps: int | None, what: str = "the task has up to") -> None:
        cap = self.limits.max_steps
        if cap is not None and steps is not None and steps > cap:
            raise ToolError(f"{what} {steps} steps; this server runs at most {cap} (--max-steps)")

    def _check_cost(
        self, client: Client, *, prompt_chars: int, max_tokens: int, samples: int
    ) -> None:
        """The worst case cost within its bound, when the model's price is known."""
        cap = self.limits.max_cost_usd
        if cap is None:
            return
        worst = worst_cost(
            self.prices,
            client.model,
            prompt_chars=prompt_chars,
            max_tokens=max_tokens,
            samples=samples,
        )
        if worst is not None and worst > cap:
            raise ToolError(
                f"this call could cost up to ${worst:.2f} on {client.model} ({samples} samples"
                f" of up to {max_tokens} tokens); this server allows ${cap:.2f} (--max-cost):"
                " lower max_samples or the task's size"
            )

    @contextmanager
    def _calibration_place(self) -> Iterator[None]:
        self._check_place()
        self._calibrating += 1
        try:
            yield
        finally:
            self._calibrating -= 1

    def _start(self, task: Any, client: Client, policy: Policy, seed: int) -> RunHandle:
        handle = self.engine.start(task, policy=policy, seed=seed, client=client)
        self._keep(handle)
        return handle

    def _keep(self, handle: RunHandle) -> None:
        # The runs still going, for shutdown; a long-lived server keeps no dead ones.
        self._handles = {i: h for i, h in self._handles.items() if not h.done}
        self._handles[handle.run_id] = handle

    def watch_runs(self, listener: RunUpdate) -> Callable[[], None]:
        """Have ``listener`` told ``(run_id, False)`` at most every :data:`WATCH_INTERVAL_S`
        while a run started by ``run`` or ``resume`` records events, and ``(run_id, True)``
        once when it ends; returns the call that stops telling it. A listener that raises is
        logged and told again next time: it cannot stop the run or the other listeners."""
        token = object()
        self._listeners[token] = listener

        def stop() -> None:
            self._listeners.pop(token, None)

        return stop

    def _watch(self, handle: RunHandle) -> None:
        if self._watching is not None:
            self._watching.start_soon(self._follow_for_listeners, handle)

    async def _follow_for_listeners(self, handle: RunHandle) -> None:
        # Polls the handle's counters rather than reading its events: a run of a million
        # steps costs its watcher four looks a second, not a wake-up per event.
        told = -1
        ended = False
        while not ended:
            with anyio.move_on_after(WATCH_INTERVAL_S), suppress(Exception):
                await handle.result()  # a failed run is in its log; the listeners read it there
            ended = handle.done
            events = handle.statistics().events
            if ended or events != told:
                told = events
                for listener in list(self._listeners.values()):
                    try:
                        await listener(handle.run_id, ended)
                    except Exception:
                        logger.exception("a listener of run %s failed", handle.run_id)

    async def run_events(
        self, run_id: str, *, after_seq: int = -1, limit: int
    ) -> tuple[str, list[AnyEvent], bool]:
        """Up to ``limit`` of the run's events with seq > ``after_seq``, in order: the run's
        full id, the events, and whether more follow. Reads no more of the log than that."""
        full = await self._run_id(run_id)
        await self.log.flush()
        page: list[AnyEvent] = []
        async with aclosing(self.log.read(full, after_seq=after_seq)) as events:
            async for event in events:
                if len(page) == limit:
                    return full, page, True
                page.append(event)
        return full, page, False

    async def _events(self, run_id: str) -> list[AnyEvent]:
        await self.log.flush()
        async with aclosing(self.log.read(run_id)) as events:
            return [event async for event in events]

    async def _result(self, handle: RunHandle) -> RunResult:
        """The handle's result; a cancelled tool call cancels the run it started."""
        try:
            return await handle.result()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await handle.cancel()
            raise

    # -- vote --------------------------------------------------------------------------

    async def vote(self, args: VoteArgs, progress: Progress | None = None) -> dict[str, Any]:
        """One decision: a one-step run of a prompt task, voted first-to-ahead-by-k."""
        client = self.client(args.model)
        k = choose_k(args.k, args.target, args.p, 1)
        self._check_samples(k=k, max_samples=args.max_samples)
        task = PromptTask(
            [{"system": args.system, "user": args.user}],
            pattern=args.pattern,
            schema=args.schema,
            engine=CLIENT_REGEX_ENGINE,
        )
        max_tokens = args.max_tokens
        if max_tokens is None:
            max_tokens = max(1000, args.max_output_tokens + 250)
        policy = Policy(
            k=k,
            max_tokens=max_tokens,
            max_samples_per_step=max(args.max_samples, k),
            red_flags=_rules(args.max_output_tokens, args.flag_truncated),
            matcher=args.matcher,
        )
        seed = args.seed if args.seed is not None else secrets.randbits(62)
        self._check_cost(
            client,
            prompt_chars=len(args.system) + len(args.user),
            max_tokens=max_tokens,
            samples=policy.max_samples_per_step,
        )
        self._check_place()
        handle = self._start(task, client, policy, seed)
        result = await self._result(handle)
        events = await self._events(handle.run_id)
        out = _vote_summary(events, result, seed, client.model)
        if not result.ok:
            raise ToolError(f"vote {result.status}: {result.reason} (run {result.run_id})", out)
        return out

    # -- validate ----------------------------------------------------------------------

    async def validate(
        self, args: ValidateArgs, progress: Progress | None = None
    ) -> dict[str, Any]:
        """Every red flag the response raises under these rules."""
        checked = validate_response(
            args.response,
            parser=AnswerParser(
                pattern=args.pattern, schema=args.schema, engine=CLIENT_REGEX_ENGINE
            ),
            output_tokens=args.output_tokens,
            finish_reason=args.finish_reason,
            rules=_rules(args.max_output_tokens, args.flag_truncated),
        )
        return checked.to_json()

    # -- formulas ----------------------------------------------------------------------

    async def kmin(self, args: KminArgs, progress: Progress | None = None) -> dict[str, Any]:
        """Eq 14's k_min with Eq 13's success probability and Eq 16's votes per step."""
        k = k_min(args.p, args.target, args.steps)
        return {
            "k_min": k,
            "p": args.p,
            "target": args.target,
            "steps": args.steps,
            "p_step": p_step(args.p, k),
            "p_run": p_run(args.p, k, args.steps),
            "expected_votes_per_step": expected_votes_per_step(args.p, k),
        }

    async def plan(self, args: PlanArgs, progress: Progress | None = None) -> dict[str, Any]:
        """Per model: k_min at the lower bound of p, expected samples, cost and wall time."""
        estimates = [
            ModelEstimate(
                model=m.model,
                p=m.p,
                p_low=m.p if m.p_low is None else m.p_low,
                v=m.v,
                cost_per_call=m.cost_per_call,
                latency_s=m.latency_s,
            )
            for m in args.models
        ]
        for run_id in args.calibrations:
            events = await self._events(await self._run_id(run_id))
            try:
                measured = calibration_from_events(events, allow_plugins=self.allow_plugins)
            except ConfigError as exc:
                raise ToolError(f"run {run_id} is not a calibration: {exc}") from exc
            estimates.append(ModelEstimate.from_json(measured.to_json()))
        if not estimates:
            raise ToolError("give models, or calibrations to read them from")
        result = plan(
            estimates,
            steps=args.steps,
            target=args.target,
            concurrency=args.concurrency,
            pipeline=args.pipeline,
            hedge=hedge_from(args.hedge),
        )
        return result.to_json()

    # -- calibrate ---------------------------------------------------------------------

    async def calibrate(
        self, args: CalibrateArgs, progress: Progress | None = None
    ) -> dict[str, Any]:
        """Ask the model each prompt and score it against the known answers."""
        client = self.client(args.model)
        task = PromptTask(
            [
                {"system": item.system, "user": item.user, "answer": item.answer}
                for item in args.prompts
            ],
            pattern=args.pattern,
            schema=args.schema,
            engine=CLIENT_REGEX_ENGINE,
        )
        policy = Policy(
            k=1,
            max_tokens=max(1000, args.max_output_tokens + 1),
            red_flags=_rules(args.max_output_tokens),
        )
        samples = args.samples if args.samples is not None else len(args.prompts)
        # Each sample of a calibration is a step of its run, with one sample.
        self._check_steps(samples, "this calibration asks for")
        self._check_cost(
            client,
            prompt_chars=max(len(item.system) + len(item.user) for item in args.prompts),
            max_tokens=policy.max_tokens,
            samples=samples,
        )
        throttle = _Throttle(progress)
        done = 0

        def seen(event: object) -> None:
            nonlocal done
            if isinstance(event, SampleReceived):
                done += 1

        async def report() -> None:
            while True:
                await throttle(done, samples, f"{done}/{samples} responses", False)
                await anyio.sleep(0.25)

        with self._calibration_place():
            async with anyio.create_task_group() as tg:
                if progress is not None:
                    tg.start_soon(report)
                report_ = await calibrate(
                    task,
                    [client],
                    samples=samples,
                    seed=args.seed,
                    log=self.log,
                    policy=policy,
                    scheduler=self.scheduler,
                    prices=self.prices,
                    sinks=[seen, *self.sinks],
                )
                tg.cancel_scope.cancel()
        await throttle(done, samples, f"{done}/{samples} responses", True)
        measured = report_.models[0]
        out = measured.to_json()
        out["task"] = "prompt"
        out["samples"] = samples
        out["seed"] = args.seed
        out["target"] = args.target
        out["steps"] = args.steps
        p_low = out.get("p_low")
        if isinstance(p_low, float | int) and p_low > 0.5:
            out["recommended_k"] = k_min(p_low, args.target, args.steps)
            out["recommendation"] = "k_min (Eq 14) at the lower 95% bound of p"
        else:
            out["recommended_k"] = None
            out["recommendation"] = (
                "the lower 95% bound of p is not above 0.5: voting may not converge; "
                "calibrate on more prompts or choose another model"
            )
        return out

    # -- runs --------------------------------------------------------------------------

    async def run(self, args: RunArgs, progress: Progress | None = None) -> dict[str, Any]:
        """Start a built-in task run; with ``wait``, follow it to its end."""
        client = self.client(args.model)
        task = self._task(args.task, dict(args.params))
        total = task.max_steps()
        self._check_steps(total)
        k = choose_k(args.k, args.target, args.p, total or 1)
        self._check_samples(k=k, max_samples=args.max_samples)
        pipeline, hedge = pipelining_for(
            client,
            None if args.pipeline is msgspec.UNSET else args.pipeline,
            None if args.hedge is msgspec.UNSET else args.hedge or 0.0,
        )
        policy = Policy(
            k=k,
            max_samples_per_step=max(args.max_samples, k),
            pipeline=pipeline,
            hedge=hedge_from(hedge, args.hedge_min_s),
            matcher=args.matcher,
        )
        first = task.prompt(task.initial_state())
        self._check_cost(
            client,
            prompt_chars=len(first.system) + len(first.user),
            max_tokens=policy.max_tokens,
            samples=worst_samples(policy, total or 1),
        )
        self._check_place()
        handle = self._start(task, client, policy, args.seed)
        self._watch(handle)
        # One turn of the loop records run_started before anyone asks about the run.
        await anyio.lowlevel.checkpoint()
        if not args.wait:
            return {
                "run_id": handle.run_id,
                "status": "running",
                "task": args.task,
                "params": task.params(),
                "steps": total,
                "k": k,
                "model": client.model,
                "log": self.config.shown,
            }
        await self._follow(handle, total, progress, math.inf)
        return await self._status(handle.run_id)

    async def _follow(
        self, handle: RunHandle, total: int | None, progress: Progress | None, limit: float
    ) -> None:
        """Follow a run's decided steps as progress until it ends or ``limit`` seconds pass."""
        throttle = _Throttle(progress)
        decided = 0
        finished = False
        with anyio.move_on_after(limit):
            async with aclosing(handle.events()) as events:
                async for event in events:
                    if isinstance(event, StateChanged):
                        decided = event.step + 1
                        await throttle(decided, total, f"step {decided} decided", False)
                    elif isinstance(event, RunFinished):
                        await throttle(decided, total, f"run {event.status}", True)
                        finished = True
                        break
        if finished:
            # run_finished is published just before the engine lets go of the handle: wait for
            # that, so the status that follows no longer calls the run active.
            with suppress(Exception):  # a bug in task code is in the log; the status tells it
                await handle.result()

    async def run_status(
        self, args: RunStatusArgs, progress: Progress | None = None
    ) -> dict[str, Any]:
        """The run's summary; a running run is followed up to ``wait_s`` seconds first."""
        info = await self._run_info(args.run_id)
        handle = self.engine.handle(info.run_id)
        if handle is not None and args.wait_s > 0:
            total = self._task(info.started.task, info.started.task_params).max_steps()
            await self._follow(handle, total, progress, args.wait_s)
        return await self._status(info.run_id)

    async def _status(self, run_id: str) -> dict[str, Any]:
        from replay import summarize_async

        await self.log.flush()
        info = await self.log.run(run_id)
        handle = self.engine.handle(run_id)
        if handle is not None:
            # A running run is told from its handle's counters: folding its log at every poll
            # would cost time in proportion to its events, minutes for a million-step run.
            stats = handle.statistics()
            started = info.started
            recorded = recorded_policy(started.policy)
            return {
                "run_id": run_id,
                "task": started.task,
                "task_params": started.task_params,
                "models": list(started.models),
                "k": recorded.k if isinstance(recorded, PolicyRecord) else None,
                "seed": started.seed,
                "status": "running",
                "active": True,
                "steps": stats.steps,
                "steps_total": self._task(started.task, started.task_params).max_steps(),
                "samples": stats.samples,
                "events": stats.events,
            }
        key = (run_id, info.last_seq)
        cached = self._summaries.get(key)
        if cached is None:
            # A run that is not going changes only if resumed, which moves its last seq.
            await self.log.flush()
            # Folded as it is read: a finished run of any length in bounded memory.
            async with aclosing(self.log.read(run_id)) as events:
                cached = dict((await summarize_async(events, per_step=False)).to_json())
            self._summaries[key] = cached
            while len(self._summaries) > SUMMARY_CACHE:
                self._summaries.popitem(last=False)
        else:
            self._summaries.move_to_end(key)
        out = dict(cached)
        out["active"] = False
        kept = self._handles.get(run_id)
        if kept is not None and kept.done:
            try:
                await kept.result()
            except CancelledBeforeStart:
                pass  # cut before it recorded anything: the log's summary is the whole story
            except Exception as exc:  # a resume that diverged appended nothing: say why here
                out["error"] = f"{type(exc).__name__}: {exc}"
        return out

    async def cancel(self, args: CancelArgs, progress: Progress | None = None) -> dict[str, Any]:
        """Cancel a run this server is running; it is recorded as cancelled and resumable."""
        run_id = await self._run_id(args.run_id)
        handle = self.engine.handle(run_id)
        if handle is None:
            status = await self._status(run_id)
            raise ToolError(f"run {run_id} is not running on this server ({status['status']})")
        note = None
        try:
            await handle.cancel()
        except CancelledBeforeStart:
            # A resumption cut while it re-executed its log appended nothing: not an error,
            # and the log says where the run stands.
            note = "cancelled before it recorded anything; the log is as it was"
        out = await self._status(run_id)
        if note is not None:
            out["note"] = note
        out["resume"] = f"maker resume {self.config.shown} --run {run_id}"
        return out

    async def resume(self, args: ResumeArgs, progress: Progress | None = None) -> dict[str, Any]:
        """Continue a run from its log: the recorded prefix is re-executed (no recorded sample is
        requested again), then the run goes on live through this server's scheduler."""
        from replay import client_for

        run_id = await self._run_id(args.run_id)
        if self.engine.handle(run_id) is not None:
            raise ToolError(f"run {run_id} is running; there is nothing to resume")
        events = await self._events(run_id)
        recording = Recording(events)
        if is_calibration(recording.started):
            raise ToolError(f"run {run_id} is a calibration: there is no chain to resume")
        if not recording.resumable:
            out = await self._status(run_id)
            out["note"] = "the run had finished; nothing was changed"
            return out
        started = recording.started
        model = started.models[0] if started.models else "sim"
        if model == "sim":
            # The simulated model of the recording, so that the live part draws as it did.
            client = client_for(started)
        else:
            client = self.client(model)  # a provider the server configures, with its key
        task = self._task(started.task, dict(started.task_params))
        self._check_steps(task.max_steps())
        self._check_place()
        handle = self.engine.start_resume(task, recording, client=client)
        self._keep(handle)
        self._watch(handle)
        await anyio.lowlevel.checkpoint()
        if not args.wait:
            return {"run_id": run_id, "status": "running", "resumed_after_seq": events[-1].seq}
        await self._follow(handle, task.max_steps(), progress, math.inf)
        try:
            await handle.result()
        except Divergence as exc:
            raise ToolError(f"run {run_id} cannot be resumed: {exc}") from exc
        return await self._status(run_id)

    async def show(self, args: ShowArgs, progress: Progress | None = None) -> dict[str, Any]:
        """One run's summary, or every run in the log."""
        if args.run_id is not None:
            return await self._status(await self._run_id(args.run_id))
        await self.log.flush()
        runs = []
        for info in await self.log.runs():
            status: str = info.finished.status if info.finished is not None else "unfinished"
            if self.engine.handle(info.run_id) is not None:
                status = "running"
            runs.append(
                {
                    "run_id": info.run_id,
                    "task": info.started.task,
                    "models": list(info.started.models),
                    "status": status,
                    "events": info.last_seq + 1,
                }
            )
        return {"log": self.config.shown, "runs": runs}

    async def replay_verify(
        self, args: ReplayVerifyArgs, progress: Progress | None = None
    ) -> dict[str, Any]:
        """Re-execute the run from its recorded outcomes and compare, event for event."""
        from replay import verify_run

        run_id = await self._run_id(args.run_id)
        if self.engine.handle(run_id) is not None:
            raise ToolError(f"run {run_id} is still running; verify it once it has finished")
        await self.log.flush()
        result = await verify_run(self.config.log, run_id, allow_plugins=self.allow_plugins)
        return result.to_json()

    def _task(self, name: str, params: dict[str, Any]) -> Task[Any, Any]:
        """The task ``name`` names, from a call or a log: a plugin only if the owner trusts it."""
        return make_task(name, params, allow_plugins=self.allow_plugins)

    async def _run_id(self, run_id: str) -> str:
        return (await self._run_info(run_id)).run_id

    async def _run_info(self, run_id: str) -> RunInfo:
        """The run ``run_id`` names (a prefix will do), or a ToolError."""
        await self.log.flush()
        try:
            return await self.log.run(run_id)
        except UnknownRunError as exc:
            raise ToolError(f"no run {run_id} in {self.config.shown}") from exc

    # -- health ------------------------------------------------------------------------

    async def health(self, args: HealthArgs, progress: Progress | None = None) -> dict[str, Any]:
        """Configuration, reachability of each model, and the scheduler's counters."""
        models = self.config.report()
        reach: dict[str, dict[str, Any]] = {}
        if args.probe:

            async def one(spec: str, client: Client) -> None:
                reach[spec] = await _probe(client)

            async with anyio.create_task_group() as tg:
                for spec, client in self.clients.items():
                    tg.start_soon(one, spec, client)
        for entry in models["models"]:
            entry.update(reach.get(entry["spec"], {"reachable": None}))
        return {
            "server": {"name": "maker", "version": __version__},
            "config": models,
            "bounds": {**self.limits.to_json(), "running": self.running()},
            "scheduler": self.scheduler.statistics()._asdict(),
            "engine": self.engine.statistics()._asdict(),
            "log": {"path": self.config.shown, **self.log.statistics()._asdict()},
        }


SUMMARY_CACHE = 64
"""Summaries of runs that are not going, kept for repeated run_status and show calls."""

PROBE_TIMEOUT_S = 10.0
"""Seconds a health probe of one model may take."""


async def _probe(client: Client) -> dict[str, Any]:
    if not isinstance(client, Probe):
        return {"reachable": None, "error": "this client cannot be probed"}
    started = time.monotonic()
    try:
        with anyio.fail_after(PROBE_TIMEOUT_S):
            await client.probe()
    except TimeoutError:
        return {"reachable": False, "error": f"timeout: no answer in {PROBE_TIMEOUT_S:g} s"}
    except MakerError as exc:
        kind = getattr(exc, "kind", "error")
        return {"reachable": False, "error": f"{kind}: {exc}"}
    return {"reachable": True, "probe_s": round(time.monotonic() - started, 4)}


def _vote_summary(
    events: list[AnyEvent], result: RunResult, seed: int, model: str
) -> dict[str, Any]:
    texts: dict[str, str] = {}
    first_vote: dict[str, str] = {}
    flags: list[dict[str, str]] = []
    decided: StepDecided | None = None
    for event in events:
        if isinstance(event, SampleReceived):
            texts[event.sample_id] = event.text
        elif isinstance(event, VoteCounted):
            first_vote.setdefault(event.candidate, event.sample_id)
        elif isinstance(event, RedFlagged):
            flags.append(
                {"sample_id": event.sample_id, "reason": event.reason, "detail": event.detail}
            )
        elif isinstance(event, StepDecided):
            decided = event
    winner: dict[str, Any] | None = None
    votes: dict[str, int] = {}
    if decided is not None:
        votes = dict(decided.votes)
        # Under a matcher the winner is a key; the answer is the one its first vote parsed.
        applied = decided.answer if type(decided.answer) is str else decided.winner
        winner = {
            "answer": msgspec.json.decode(applied),
            "text": texts.get(first_vote.get(decided.winner, ""), ""),
            "candidate": decided.winner,
        }
    elif events:
        # Undecided: the last tally is what the samples said.
        for event in reversed(events):
            if isinstance(event, VoteCounted):
                votes = dict(event.tally)
                break
    return {
        "run_id": result.run_id,
        "status": result.status,
        "reason": result.reason,
        "model": model,
        "seed": seed,
        "k": result.k,
        "winner": winner,
        "votes": votes,
        "samples": result.samples,
        "red_flags": dict(result.red_flags_by_reason),
        "red_flagged": flags,
        "failures": result.failures,
        "input_tokens": result.input_tokens,
        "output_tokens": result.output_tokens,
        "cost_usd": result.cost_usd,
        "wall_s": result.wall_s,
    }


TOOLS: Mapping[str, tuple[type[_Args], str]] = {
    "vote": (VoteArgs, "vote"),
    "validate": (ValidateArgs, "validate"),
    "kmin": (KminArgs, "kmin"),
    "plan": (PlanArgs, "plan"),
    "calibrate": (CalibrateArgs, "calibrate"),
    "run": (RunArgs, "run"),
    "run_status": (RunStatusArgs, "run_status"),
    "cancel": (CancelArgs, "cancel"),
    "resume": (ResumeArgs, "resume"),
    "show": (ShowArgs, "show"),
    "replay_verify": (ReplayVerifyArgs, "replay_verify"),
    "health": (HealthArgs, "health"),
}
"""Every tool: its argument struct and the :class:`McpTools` method that runs it."""
