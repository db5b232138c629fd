"""OpenTelemetry for runs: one span builder turns a stream of events into spans.

The same builder, :class:`TraceSink`, serves both uses. Attached to an engine as an event sink it
traces a run live; fed the events of a recorded log (:func:`export_run`, :func:`export_log`) it
rebuilds the trace afterwards. Span times are the events' ``ts`` and span ids derive from the
run id and the seq of the event that opened each span, so the live tree and the exported tree are
the same tree, and exporting a log twice gives the same ids.

The tree of a run (one trace per run)::

    maker.run {task}                  INTERNAL, run_started .. run_finished
      maker.step                      INTERNAL, step_started .. state_changed (maker.step: n)
        chat {model}                  CLIENT, sample_requested .. its outcome (GenAI conventions)

A pipelined run's step spans overlap, and a step started more than once has a span per start:
an abandoned (misspeculated) start's span ends at its ``step_abandoned``, and its samples are
its children, not the decided start's.

A resumed run gets a second root span ``maker.run {task}`` in the same trace, linked to the span of
the part it continues; see :class:`TraceSink` for the details.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import urllib.parse
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import msgspec
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from events import (
    AnyEvent,
    BreakerChanged,
    Event,
    RedFlagged,
    RunFinished,
    RunResumed,
    RunStarted,
    SampleCancelled,
    SampleFailed,
    SampleHedged,
    SampleReceived,
    SampleRequested,
    SchedulerWaited,
    StateChanged,
    StepAbandoned,
    StepDecided,
    StepStarted,
    VoteCounted,
)

from ..core._errors import ConfigError, MakerError
from ..core._policy import PolicyRecord, recorded_policy
from ..core._version import __version__
from ..engine._sampling import sample_seed

if TYPE_CHECKING:
    # Only for annotations: this module runs on the OpenTelemetry API alone, and an application
    # that brings no SDK can still trace into whatever provider it has. The SDK's parts are in
    # ._sdk.
    from opentelemetry.sdk.trace import TracerProvider

INSTRUMENTATION_NAME: Final = "maker"

QUEUE_SIZE: Final = 65_536
"""The batch processor's queue in providers built here: a whole run's backlog fits, and the sink
flushes synchronously (slowing the run rather than dropping spans) when the backlog nears it."""

FLUSH_EVERY: Final = 512
"""Spans per chunk when exporting a recorded run: each chunk is flushed before the next is built,
so even the SDK's default queue (2,048) never overflows."""

# ---------------------------------------------------------------------------------------------
# Deterministic ids


def _digest(text: str, size: int) -> int:
    value = int.from_bytes(hashlib.blake2b(text.encode()).digest()[:size], "big")
    # An all-zero id is invalid in OpenTelemetry; a 2^-64 chance, but never emit one.
    return value or 1


def trace_id_for(run_id: str) -> int:
    """The trace id of a run: the first 16 bytes of ``blake2b(run_id)``.

    >>> f"{trace_id_for('demo'):032x}" == f"{trace_id_for('demo'):032x}"
    True
    """
    return _digest(run_id, 16)


def span_id_for(run_id: str, seq: int | str) -> int:
    """The span id of the span opened by event ``seq``: the first 8 bytes of
    ``blake2b(f"{run_id}:{seq}")``.

    Spans that a resumption reopens (see :class:`TraceSink`) pass a string key,
    ``"{seq}:step"`` or ``"{seq}:{sample_id}"``, so they never collide with a seq.
    """
    return _digest(f"{run_id}:{seq}", 8)


class IdPrimer:
    """The priming half of :class:`maker.otel.DeterministicIdGenerator`.

    It holds no OpenTelemetry SDK type, so that :class:`TraceSink` can recognise a primable
    generator without importing the SDK. Priming is per thread: other code creating spans on
    other threads through the same provider is unaffected.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def prime(self, trace_id: int, span_id: int) -> None:
        """Make the next span started on this thread take these ids (the trace id only if
        the span is a root)."""
        self._local.ids = (trace_id, span_id)

    def primed_trace_id(self) -> int | None:
        """The primed trace id, or None when nothing is primed."""
        ids: tuple[int, int] | None = getattr(self._local, "ids", None)
        return None if ids is None else ids[0]

    def primed_span_id(self) -> int | None:
        """The primed span id, used up by this call, or None when nothing is primed."""
        ids: tuple[int, int] | None = getattr(self._local, "ids", None)
        if ids is None:
            return None
        self._local.ids = None
        return ids[1]


# ---------------------------------------------------------------------------------------------
# The span builder


def provider_name(model: str) -> tuple[str, str]:
    """``gen_ai.provider.name`` and ``gen_ai.request.model`` for a model string.

    >>> provider_name("openai:gpt-4.1-mini")
    ('openai', 'gpt-4.1-mini')
    >>> provider_name("ollama:llama3.1:8b")
    ('ollama', 'llama3.1:8b')
    >>> provider_name("sim")
    ('maker.sim', 'sim')
    """
    provider, sep, name = model.partition(":")
    if sep and provider and name:
        return provider, name
    # Unprefixed models are maker's own (the simulated model) or a user's client.
    return f"maker.{model}", model


def _ns(ts: float) -> int:
    """Event time (Unix seconds) to span time (Unix nanoseconds); live and export share it."""
    return int(ts * 1_000_000_000)


_json = msgspec.json.Encoder()

_INTERNAL = SpanKind.INTERNAL
_CLIENT = SpanKind.CLIENT
_EMPTY_CONTEXT = Context()


def _lead(tally: Mapping[str, int]) -> int:
    """Votes of the leader minus votes of the runner-up."""
    first = second = 0
    for votes in tally.values():
        if votes > first:
            first, second = votes, first
        elif votes > second:
            second = votes
    return first - second


class _Sample:
    """A sample whose span is built when it ends: every attribute and event is known then, so
    the SDK is called once per span rather than once per event (the sink's main cost)."""

    __slots__ = ("attempt", "attrs", "end", "events", "key", "name", "start", "status", "step")

    def __init__(self, key: str, name: str, step: int, start: int, attrs: dict[str, Any]) -> None:
        self.key = key
        self.name = name
        self.step = step
        self.start = start
        self.attempt = start  # when the current attempt began: a retry starts after its backoff
        self.attrs = attrs
        self.end: int | None = None
        self.events: list[tuple[str, dict[str, Any], int]] | None = None
        self.status: Status | None = None

    def event(self, name: str, attrs: dict[str, Any], at: int) -> None:
        if self.events is None:
            self.events = []
        self.events.append((name, attrs, at))


class _Step:
    __slots__ = ("ctx", "span")

    def __init__(self, span: trace.Span) -> None:
        self.span = span
        self.ctx = trace.set_span_in_context(span, _EMPTY_CONTEXT)


def _recorded_k(event: RunStarted) -> int:
    """The run's k as recorded; 0 for a calibration, which votes nothing."""
    recorded = recorded_policy(event.policy)
    return recorded.k if isinstance(recorded, PolicyRecord) else 0


class _Run:
    __slots__ = (
        "attrs",
        "ctx",
        "hedges",
        "k",
        "last_ts",
        "max_attempts",
        "misspeculated",
        "model",
        "previous",
        "resumed_at",
        "run_id",
        "samples",
        "seed",
        "server",
        "span",
        "steps",
        "stopped",
        "task",
        "trace_id",
    )

    def __init__(self, event: RunStarted, attrs: dict[str, Any]) -> None:
        self.run_id = event.run_id
        self.trace_id = trace_id_for(event.run_id)
        self.task = event.task
        self.k = _recorded_k(event)
        self.max_attempts = recorded_policy(event.policy).max_attempts
        self.model = event.models[0] if event.models else "sim"
        self.seed = event.seed
        self.server = _server(event.model_params)
        self.attrs = attrs
        self.span: trace.Span | None = None
        self.ctx: Context = _EMPTY_CONTEXT
        self.steps: dict[int, _Step] = {}
        self.samples: dict[str, _Sample] = {}
        self.hedges: dict[str, str] = {}
        self.misspeculated = [0, 0, 0]
        """Samples and starts abandoned as misspeculated, and hedges sent, so far."""
        """Hedge -> its straggler, from ``sample_hedged`` until the hedge's request."""
        self.stopped: dict[str, _Sample] = {}
        """Samples a cancellation or a crash interrupted: a resumption reopens them."""
        self.resumed_at: int | None = None
        self.previous: trace.SpanContext | None = None
        """The span of the part a resumption continues (a cancelled run's)."""
        self.last_ts = event.ts


def _server(model_params: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """``server.address`` and ``server.port`` of the client a run records (its ``base_url``);
    none for a client without one (the simulated model)."""
    url = model_params.get("base_url")
    if not isinstance(url, str) or not url:
        return ()
    parsed = urllib.parse.urlsplit(url)
    if not parsed.hostname:
        return ()
    port = parsed.port or {"https": 443, "http": 80}.get(parsed.scheme)
    found: tuple[tuple[str, Any], ...] = (("server.address", parsed.hostname),)
    return (*found, ("server.port", port)) if port else found


class _Instruments:
    """The metric instruments, created once per sink."""

    # OpenTelemetry naming: units go in ``unit``, not in names; attributes are namespaced.
    def __init__(self, meter_provider: MeterProvider) -> None:
        meter = meter_provider.get_meter(INSTRUMENTATION_NAME, __version__, SCHEMA_URL)
        self.samples = meter.create_counter(
            "maker.samples", unit="{sample}", description="Samples requested of a model."
        )
        self.red_flags = meter.create_counter(
            "maker.red_flags",
            unit="{red_flag}",
            description="Responses discarded before voting, by maker.red_flag.reason.",
        )
        self.failures = meter.create_counter(
            "maker.failures",
            unit="{failure}",
            description="Failed model calls (each attempt), by error.type.",
        )
        self.tokens = meter.create_counter(
            "maker.tokens",
            unit="{token}",
            description="Tokens used, by gen_ai.token.type (input or output).",
        )
        self.cost = meter.create_counter(
            "maker.cost", unit="USD", description="Cost of the samples received."
        )
        self.misspeculated = meter.create_counter(
            "maker.samples.misspeculated",
            unit="{sample}",
            description="Samples requested for speculative starts of steps that were abandoned.",
        )
        self.hedged = meter.create_counter(
            "maker.samples.hedged",
            unit="{sample}",
            description="Samples sent beside a straggler (hedges); also in maker.samples.",
        )
        self.votes = meter.create_histogram(
            "maker.votes_per_step",
            unit="{vote}",
            description="Valid votes it took to decide a step.",
            explicit_bucket_boundaries_advisory=[1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 30, 50],
        )
        # The GenAI client metrics, with the conventions' names, units and bucket boundaries.
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=[0.01 * 2**i for i in range(14)],
        )
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=[4**i for i in range(14)],
        )


_OUTCOME_KEYS: Final = ("maker.cancelled", "error.type")
"""Attributes of an interrupted sample that its reopened span does not inherit."""

_INPUT: Final = {"gen_ai.token.type": "input"}
_OUTPUT: Final = {"gen_ai.token.type": "output"}


SCHEMA_URL: Final = "https://opentelemetry.io/schemas/1.41.0"
"""The semantic conventions the spans and metrics follow (their GenAI names were checked
against this version), declared on the tracer and the meter."""

STEP_SPAN: Final = "maker.step"
"""The name of every step's span (the step is its ``maker.step`` attribute): span names stay
few, as the conventions ask, where a name per step would make a million in a 20-disk run."""

SETTINGS_ONLY_TASKS: Final = frozenset({"hanoi", "arithmetic"})
"""Built-in tasks whose parameters are settings, not content: recorded in traces as they are."""


@functools.lru_cache(maxsize=4096)
def content_digest(text: str) -> str:
    """What a trace records of content (an answer, a prompt task's parameters) unless content
    capture is on: ``sha256:`` and 16 hex digits of the text's SHA-256, enough to tell equal
    answers apart from different ones, nothing to read the text back from."""
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


class TraceSink:
    """An event sink that turns a run's events into OpenTelemetry spans (and metrics).

    Attach it to a run (``Engine(..., sinks=[sink])`` or ``engine.run(..., sinks=[sink])``) to
    trace live, or feed it a recorded run's events (:func:`export_run`). It is called
    synchronously on the event loop, in seq order; it may serve several runs at once.

    **Spans.** One root span per run, ``maker.run {task}`` (INTERNAL), from ``run_started`` to
    ``run_finished``; one ``maker.step`` per step (the step number is its ``maker.step``
    attribute), its child, from ``step_started`` to
    ``state_changed``; one span per sample, child of its step, from ``sample_requested`` to its
    ``sample_received`` (or its final ``sample_failed``, or its ``sample_cancelled``). Sample
    spans follow the GenAI semantic conventions: name ``chat {gen_ai.request.model}``, kind
    CLIENT, ``gen_ai.operation.name``, ``gen_ai.provider.name``, ``gen_ai.request.model``,
    ``gen_ai.request.temperature``, ``gen_ai.request.max_tokens``, ``gen_ai.request.seed`` (the
    seed the request was sent with, :func:`maker.sample_seed` of the run's seed and the sample
    id), ``server.address`` and ``server.port`` (when the run's client has a base URL),
    ``gen_ai.usage.input_tokens``, ``gen_ai.usage.output_tokens``,
    ``gen_ai.response.finish_reasons``, ``gen_ai.response.model`` (when it differs from the
    requested one), ``gen_ai.response.id`` (when the provider gave one), and ``error.type``
    with status ERROR when the sample failed for good.
    maker's own attributes: ``maker.sample_id`` (``"{step}:{ordinal}"``), ``maker.candidate``,
    ``maker.red_flag.reason``, ``maker.cost_usd`` (when not zero), ``maker.attempts`` (after a
    failure), ``maker.cancelled``; on steps ``maker.step``, ``maker.k``, ``maker.winner``,
    ``maker.votes`` (the final tally as JSON text), ``maker.lead`` (the winner's margin),
    ``maker.samples``, ``maker.red_flags``, and on a pipelined run's starts ``maker.step.branch``
    (when not 0), ``maker.step.speculative`` (a start made before the previous step was
    decided) and, on an abandoned start's span (ended at its ``step_abandoned``),
    ``maker.step.abandoned=true``, ``maker.step.abandoned.reason`` and its ``maker.step.branch``;
    a hedge's sample span carries ``maker.sample.hedge_of`` (its straggler's id, whose span gets
    a ``maker.hedged`` event); on the run ``maker.run_id``, ``maker.task``,
    ``maker.k``, ``maker.status`` and totals (``maker.misspeculated_samples``,
    ``maker.misspeculated_steps`` and ``maker.hedged_samples`` when not 0). Sample spans carry
    no more than they must (a sample's step is its parent and the prefix of its id): with about
    130,000 of them in a 15-disk run, every attribute costs the SDK time and memory. Red flags
    (``maker.red_flag``), retried failures (``maker.retry``), scheduler waits
    (``maker.scheduler.wait``), breaker changes (``maker.breaker``) and cancellations
    (``maker.cancelled``) are span events.

    **Times and ids.** Start and end times are the events' ``ts`` in nanoseconds. With a
    provider whose id generator is a :class:`DeterministicIdGenerator` (every provider built by
    :func:`tracer_provider_for` has one) and ``deterministic_ids`` on, the trace id is
    :func:`trace_id_for` ``(run_id)`` and each span id :func:`span_id_for` ``(run_id, seq)`` of
    the event that opened the span; other providers' generators choose the ids. The run span is
    a root of its own trace, never a child of the caller's current span, unless
    ``parent_context`` is given (then it takes that trace, not the derived one).

    **Content.** Prompts, responses, parsed answers and a prompt task's parameters enter spans
    only when ``capture_content`` is true: then sample spans get ``gen_ai.output.messages`` (the
    response as GenAI JSON), red flags their ``maker.red_flag.detail``, and ``maker.candidate``,
    ``maker.winner``, the answers in ``maker.votes`` and ``maker.task.params`` are the text
    itself. Otherwise each of those is its :func:`content_digest` (equal answers have equal
    digests, so a vote can still be matched to its winner); the parameters of the built-in
    tasks whose parameters are settings (:data:`SETTINGS_ONLY_TASKS`) are recorded as they are.

    **Interruptions.** A ``run_finished`` with status ``cancelled`` ends every open span at its
    time. A ``run_resumed`` first ends whatever is still open (a crash leaves spans open; so does
    a live sink attached to :meth:`maker.Engine.resume`, which sees the recorded prefix again
    without its interruption) at the last event before it, then opens a second root span
    ``maker.run {task}`` in the same trace, with ``maker.resumed=true`` and a link to the span of
    the part it continues. The step and samples the interruption cut are reopened under it when
    their next event comes, starting at the resumption, with ids from :func:`span_id_for`
    ``(run_id, f"{seq}:step")`` or ``(run_id, f"{seq}:{sample_id}")`` (``seq`` of that event).
    Exporting the log is the canonical tree of a resumed run: a live sink on a resumption sends
    the prefix's spans again with the same ids, and ends the interrupted part at its last
    replayed event rather than at the recorded cancellation.

    **Metrics** (with ``meter_provider``): counters ``maker.samples``, ``maker.red_flags``
    (by ``maker.red_flag.reason``), ``maker.failures`` (by ``error.type``), ``maker.tokens`` (by
    ``gen_ai.token.type``), ``maker.cost`` (USD), ``maker.samples.misspeculated`` (samples of
    abandoned starts), ``maker.samples.hedged`` and the histogram ``maker.votes_per_step``.

    >>> import anyio, os, tempfile
    >>> from opentelemetry.sdk.trace import TracerProvider
    >>> from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    >>> from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    >>> from maker import Engine, Policy, SimulatedModel
    >>> from maker.tasks import Hanoi
    >>> spans = InMemorySpanExporter()
    >>> from maker.otel import DeterministicIdGenerator
    >>> provider = TracerProvider(id_generator=DeterministicIdGenerator(), shutdown_on_exit=False)
    >>> provider.add_span_processor(SimpleSpanProcessor(spans))
    >>> async def main(path: str) -> None:
    ...     async with Engine(log=path, client=SimulatedModel(preset="ideal")) as engine:
    ...         await engine.run(Hanoi(2), policy=Policy(k=1), sinks=[TraceSink(provider)])
    >>> anyio.run(main, os.path.join(tempfile.mkdtemp(), "log.db"))
    >>> sorted({span.name for span in spans.get_finished_spans()})
    ['chat sim', 'maker.run hanoi', 'maker.step']
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        *,
        capture_content: bool = False,
        deterministic_ids: bool = True,
        parent_context: Context | None = None,
    ) -> None:
        provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        self.tracer_provider = provider
        self.capture_content = capture_content
        self._tracer = provider.get_tracer(INSTRUMENTATION_NAME, __version__, SCHEMA_URL)
        generator = getattr(provider, "id_generator", None)
        self._ids = generator if deterministic_ids and isinstance(generator, IdPrimer) else None
        self._parent = parent_context if parent_context is not None else _EMPTY_CONTEXT
        self._metrics = _Instruments(meter_provider) if meter_provider is not None else None
        self._account = _account_of(provider)
        self._runs: dict[str, _Run] = {}
        self._models: dict[str, tuple[str, str, str]] = {}
        self._metric_bases: dict[tuple[str, str, tuple[tuple[str, Any], ...]], dict[str, Any]] = {}
        self._ended = 0
        self._replayed: dict[str, int] = {}
        self._handlers: dict[type[Event], Callable[[_Run, Any], None]] = {
            StepStarted: self._step_started,
            SampleRequested: self._sample_requested,
            SampleReceived: self._sample_received,
            SampleFailed: self._sample_failed,
            SampleCancelled: self._sample_cancelled,
            RedFlagged: self._red_flagged,
            VoteCounted: self._vote_counted,
            StepDecided: self._step_decided,
            StepAbandoned: self._step_abandoned,
            SampleHedged: self._sample_hedged,
            StateChanged: self._state_changed,
            SchedulerWaited: self._scheduler_waited,
            BreakerChanged: self._breaker_changed,
            RunResumed: self._run_resumed,
            RunFinished: self._run_finished,
        }

    @property
    def spans_ended(self) -> int:
        """How many spans this sink has ended (and so handed to the provider's processors)."""
        return self._ended

    def replaying(self, run_id: str, through_seq: int) -> None:
        """Say that the events of ``run_id`` up to ``through_seq`` are a recorded prefix being
        re-executed (a resumption, a verification): their spans are built again, with the same
        ids, but their metrics are not counted again, since the process that recorded them
        counted them. :meth:`maker.Engine.resume` and :meth:`maker.Engine.verify` call this on
        the sinks they are given (:class:`maker.ReplayAwareSink`)."""
        self._replayed[run_id] = through_seq

    def __call__(self, event: Event) -> None:
        """Take the next event of a run (seq order)."""
        if self._replayed:
            through = self._replayed.get(event.run_id)
            if through is not None:
                if event.seq <= through:
                    counting, self._metrics = self._metrics, None
                    try:
                        self._take(event)
                    finally:
                        self._metrics = counting
                    return
                del self._replayed[event.run_id]
        self._take(event)

    def _take(self, event: Event) -> None:
        if type(event) is RunStarted:
            self._run_started(event)
            return
        handler = self._handlers.get(type(event))
        run = self._runs.get(event.run_id)
        if handler is None or run is None:
            return  # a run this sink did not see start, or an event with no span part
        handler(run, event)
        run.last_ts = event.ts

    def close(self) -> None:
        """End every span still open (runs that never finished) at their last event."""
        for run in list(self._runs.values()):
            if run.span is not None:
                self._interrupt(run, "close", _ns(run.last_ts), "unfinished")
        self._runs.clear()

    # -- spans ---------------------------------------------------------------------------------

    def _start(
        self,
        run: _Run,
        key: int | str,
        name: str,
        parent: Context,
        kind: SpanKind,
        attrs: dict[str, Any],
        start: int,
        links: Sequence[Link] = (),
    ) -> trace.Span:
        if self._ids is not None:
            self._ids.prime(run.trace_id, span_id_for(run.run_id, key))
        return self._tracer.start_span(name, parent, kind, attrs, links, start)

    def _end(self, span: trace.Span, end: int) -> None:
        span.end(end)
        self._ended += 1
        account = self._account
        if account is not None and self._ended % 1024 == 0:
            account.relieve()

    def _step(self, run: _Run, step: int, seq: int | str, at: int) -> _Step:
        """The open span of ``step``, reopened if an interruption closed it."""
        found = run.steps.get(step)
        if found is None:
            start = run.resumed_at if run.resumed_at is not None else at
            attrs: dict[str, Any] = {"maker.step": step, "maker.k": run.k}
            if run.resumed_at is not None:
                attrs["maker.resumed"] = True
            span = self._start(run, f"{seq}:step", STEP_SPAN, run.ctx, _INTERNAL, attrs, start)
            found = run.steps[step] = _Step(span)
        return found

    def _sample(self, run: _Run, step: int, sample_id: str, seq: int, at: int) -> _Sample:
        """The pending sample ``sample_id``, reopened if an interruption closed it."""
        found = run.samples.get(sample_id)
        if found is None:
            start = run.resumed_at if run.resumed_at is not None else at
            before = run.stopped.pop(sample_id, None)
            if before is not None:
                attrs = dict(before.attrs)
                for key in _OUTCOME_KEYS:
                    attrs.pop(key, None)
                name = before.name
            else:
                name, provider, model = self._model(run.model)
                attrs = {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": provider,
                    "gen_ai.request.model": model,
                    "gen_ai.request.seed": sample_seed(run.seed, sample_id),
                    "maker.sample_id": sample_id,
                    **dict(run.server),
                }
            if run.resumed_at is not None:
                attrs["maker.resumed"] = True
            found = _Sample(f"{seq}:{sample_id}", name, step, start, attrs)
            run.samples[sample_id] = found
        return found

    def _finish(self, run: _Run, sample: _Sample, seq: int | str, at: int) -> None:
        """Build and end a sample's span, now that all of it is known; ``at`` is the time of
        the event that settles it (the end, unless the sample was answered earlier)."""
        del run.samples[sample.attrs["maker.sample_id"]]
        parent = self._step(run, sample.step, seq, at)
        span = self._start(
            run, sample.key, sample.name, parent.ctx, _CLIENT, sample.attrs, sample.start
        )
        if sample.events is not None:
            for name, attrs, when in sample.events:
                span.add_event(name, attrs, when)
        if sample.status is not None:
            span.set_status(sample.status)
        self._end(span, sample.end if sample.end is not None else at)

    def _metric_attrs(self, run: _Run, sample: Mapping[str, Any]) -> dict[str, Any]:
        """The GenAI attributes of a metric point, taken from its sample span's: operation,
        provider, requested model, and the server when the run's client has a base URL."""
        key = (sample["gen_ai.provider.name"], sample["gen_ai.request.model"], run.server)
        found = self._metric_bases.get(key)
        if found is None:
            found = {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": key[0],
                "gen_ai.request.model": key[1],
                **dict(run.server),
            }
            self._metric_bases[key] = found
        return found

    def _model(self, model: str) -> tuple[str, str, str]:
        """Span name, provider and model name of a model string (cached)."""
        found = self._models.get(model)
        if found is None:
            provider, name = provider_name(model)
            found = self._models[model] = (f"chat {name}", provider, name)
        return found

    def _interrupt(self, run: _Run, seq: int | str, end: int, why: str) -> None:
        """End every open span of ``run`` at ``end``: a crash, a resumption, an unfinished log."""
        for sample in list(run.samples.values()):
            if sample.end is None:
                sample.event("maker.interrupted", {"maker.interrupted.reason": why}, end)
                run.stopped[sample.attrs["maker.sample_id"]] = sample
            self._finish(run, sample, seq, end)
        for step in run.steps.values():
            step.span.set_attribute("maker.interrupted", why)
            self._end(step.span, end)
        run.steps.clear()
        if run.span is not None:
            run.span.set_attribute("maker.interrupted", why)
            self._end(run.span, end)
            run.previous = run.span.get_span_context()
            run.span = None

    # -- content ---------------------------------------------------------------------------------

    def _content(self, text: str) -> str:
        """``text`` (a parsed answer's canonical JSON) when content is captured, else its
        :func:`content_digest`: votes can still be matched to their winner."""
        return text if self.capture_content else content_digest(text)

    def _votes(self, votes: Mapping[str, int]) -> str:
        if self.capture_content:
            return _json.encode(votes).decode()
        return _json.encode({content_digest(answer): n for answer, n in votes.items()}).decode()

    def _params(self, task: str, params: Mapping[str, Any]) -> str:
        """The task's parameters as JSON: in full for the built-in tasks whose parameters are
        settings (disks, steps), else only when content is captured (a prompt task's are its
        prompts), and otherwise their digest."""
        text = _json.encode(params).decode()
        if self.capture_content or task in SETTINGS_ONLY_TASKS:
            return text
        return content_digest(text)

    # -- handlers --------------------------------------------------------------------------------

    def _run_started(self, e: RunStarted) -> None:
        old = self._runs.pop(e.run_id, None)
        if old is not None and old.span is not None:
            self._interrupt(old, e.seq, _ns(old.last_ts), "restarted")
        attrs: dict[str, Any] = {
            "maker.run_id": e.run_id,
            "maker.task": e.task,
            "maker.task.params": self._params(e.task, e.task_params),
            "maker.k": _recorded_k(e),
            "maker.policy": _json.encode(e.policy).decode(),
            "maker.seed": e.seed,
            "maker.models": list(e.models),
            "maker.version": e.version,
        }
        run = _Run(e, attrs)
        run.span = self._start(
            run, e.seq, f"maker.run {e.task}", self._parent, _INTERNAL, attrs, _ns(e.ts)
        )
        run.ctx = trace.set_span_in_context(run.span, _EMPTY_CONTEXT)
        self._runs[e.run_id] = run

    def _step_started(self, run: _Run, e: StepStarted) -> None:
        at = _ns(e.ts)
        old = run.steps.pop(e.step, None)
        if old is not None:
            self._end(old.span, at)
        attrs: dict[str, Any] = {"maker.step": e.step, "maker.k": run.k}
        # A pipelined run's starts: left out when they say nothing, as in the log.
        if e.branch:
            attrs["maker.step.branch"] = e.branch
        if e.speculative:
            attrs["maker.step.speculative"] = True
        span = self._start(run, e.seq, STEP_SPAN, run.ctx, _INTERNAL, attrs, at)
        run.steps[e.step] = _Step(span)

    def _sample_requested(self, run: _Run, e: SampleRequested) -> None:
        name, provider, model = self._model(e.model)
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider,
            "gen_ai.request.model": model,
            "gen_ai.request.temperature": e.temperature,
            # Every request carries its seed, a function of the run's seed and the sample id.
            "gen_ai.request.seed": sample_seed(run.seed, e.sample_id),
            "maker.sample_id": e.sample_id,
        }
        if e.max_tokens:
            attrs["gen_ai.request.max_tokens"] = e.max_tokens
        if run.server:
            attrs.update(run.server)
        if run.hedges:
            straggler = run.hedges.pop(e.sample_id, None)
            if straggler is not None:
                attrs["maker.sample.hedge_of"] = straggler
        run.samples[e.sample_id] = _Sample(str(e.seq), name, e.step, _ns(e.ts), attrs)
        if self._metrics is not None:
            self._metrics.samples.add(1, self._metric_attrs(run, attrs))

    def _sample_received(self, run: _Run, e: SampleReceived) -> None:
        at = _ns(e.ts)
        sample = self._sample(run, e.step, e.sample_id, e.seq, at)
        attrs = sample.attrs
        # Each attribute costs the SDK a validation: the ones that would repeat the request's
        # model or say "free" are left out (the span's duration already gives the latency).
        served = self._model(e.model)[2]
        if served != attrs.get("gen_ai.request.model"):
            attrs["gen_ai.response.model"] = served
        attrs["gen_ai.usage.input_tokens"] = e.input_tokens
        attrs["gen_ai.usage.output_tokens"] = e.output_tokens
        attrs["gen_ai.response.finish_reasons"] = (e.finish_reason,)
        if type(e.response_id) is str:
            attrs["gen_ai.response.id"] = e.response_id
        if e.cost_usd:
            attrs["maker.cost_usd"] = e.cost_usd
        if self.capture_content:
            attrs["gen_ai.output.messages"] = _json.encode(
                [
                    {
                        "role": "assistant",
                        "parts": [{"type": "text", "content": e.text}],
                        "finish_reason": e.finish_reason,
                    }
                ]
            ).decode()
        # The span ends here; it is built at the verdict that follows, so it carries it.
        sample.end = at
        metrics = self._metrics
        if metrics is not None:
            base = self._metric_attrs(run, attrs)
            if served != base["gen_ai.request.model"]:
                base = {**base, "gen_ai.response.model": served}
            metrics.duration.record((at - sample.attempt) / 1e9, base)
            inputs, outputs = {**base, **_INPUT}, {**base, **_OUTPUT}
            metrics.token_usage.record(e.input_tokens, inputs)
            metrics.token_usage.record(e.output_tokens, outputs)
            metrics.tokens.add(e.input_tokens, inputs)
            metrics.tokens.add(e.output_tokens, outputs)
            if e.cost_usd:
                metrics.cost.add(e.cost_usd, base)

    def _red_flagged(self, run: _Run, e: RedFlagged) -> None:
        at = _ns(e.ts)
        sample = self._sample(run, e.step, e.sample_id, e.seq, at)
        sample.attrs["maker.red_flag.reason"] = e.reason
        flag: dict[str, Any] = {"maker.red_flag.reason": e.reason}
        if self.capture_content and e.detail:
            # A user's check may quote the response in its detail.
            sample.attrs["maker.red_flag.detail"] = e.detail
            flag["maker.red_flag.detail"] = e.detail
        sample.event("maker.red_flag", flag, at)
        self._finish(run, sample, e.seq, at)
        if self._metrics is not None:
            self._metrics.red_flags.add(
                1, {**self._metric_attrs(run, sample.attrs), "maker.red_flag.reason": e.reason}
            )

    def _vote_counted(self, run: _Run, e: VoteCounted) -> None:
        at = _ns(e.ts)
        sample = self._sample(run, e.step, e.sample_id, e.seq, at)
        sample.attrs["maker.candidate"] = self._content(e.candidate)
        self._finish(run, sample, e.seq, at)

    def _sample_failed(self, run: _Run, e: SampleFailed) -> None:
        at = _ns(e.ts)
        sample = self._sample(run, e.step, e.sample_id, e.seq, at)
        sample.attrs["maker.attempts"] = e.attempt
        if self._metrics is not None:
            failed = {**self._metric_attrs(run, sample.attrs), "error.type": e.error_kind}
            self._metrics.failures.add(1, failed)
            self._metrics.duration.record((at - sample.attempt) / 1e9, failed)
        # The next attempt starts after the backoff (scheduler waits aside).
        sample.attempt = at + int(e.backoff_s * 1e9)
        if e.retryable and e.attempt < run.max_attempts:
            retry: dict[str, Any] = {
                "error.type": e.error_kind,
                "maker.attempt": e.attempt,
                "maker.backoff_s": e.backoff_s,
                "maker.error.message": e.message,
            }
            if e.retry_after_s is not None:
                retry["maker.retry_after_s"] = e.retry_after_s
            sample.event("maker.retry", retry, at)
            return
        sample.attrs["error.type"] = e.error_kind
        sample.status = Status(StatusCode.ERROR, f"{e.error_kind}: {e.message}")
        sample.end = at
        self._finish(run, sample, e.seq, at)

    def _sample_cancelled(self, run: _Run, e: SampleCancelled) -> None:
        at = _ns(e.ts)
        sample = self._sample(run, e.step, e.sample_id, e.seq, at)
        sample.attrs["maker.cancelled"] = e.reason
        sample.event("maker.cancelled", {"maker.cancelled.reason": e.reason}, at)
        if e.reason == "run_cancelled":
            run.stopped[e.sample_id] = sample  # a resumption asks for it again
        sample.end = at
        self._finish(run, sample, e.seq, at)

    def _step_decided(self, run: _Run, e: StepDecided) -> None:
        step = self._step(run, e.step, e.seq, _ns(e.ts))
        step.span.set_attributes(
            {
                "maker.winner": self._content(e.winner),
                "maker.votes": self._votes(e.votes),
                "maker.lead": _lead(e.votes),
                "maker.samples": e.samples,
                "maker.red_flags": e.red_flags,
            }
        )
        if self._metrics is not None:
            self._metrics.votes.record(sum(e.votes.values()))

    def _step_abandoned(self, run: _Run, e: StepAbandoned) -> None:
        at = _ns(e.ts)
        # The start's samples were settled (or cancelled) before it was abandoned; one still
        # pending is ended here, so that it stays a child of the start it was drawn for.
        for sample in [s for s in run.samples.values() if s.step == e.step]:
            if sample.end is None:
                sample.event("maker.abandoned", {"maker.step.abandoned.reason": e.reason}, at)
            self._finish(run, sample, e.seq, at)
        step = self._step(run, e.step, e.seq, at)
        del run.steps[e.step]
        step.span.set_attributes(
            {
                "maker.step.abandoned": True,
                "maker.step.abandoned.reason": e.reason,
                "maker.step.branch": e.branch,
                "maker.votes": self._votes(e.votes),
                "maker.samples": e.samples,
                "maker.red_flags": e.red_flags,
            }
        )
        self._end(step.span, at)
        run.misspeculated[0] += e.samples
        run.misspeculated[1] += 1
        if self._metrics is not None and e.samples:
            self._metrics.misspeculated.add(e.samples, self._run_metric_attrs(run))

    def _sample_hedged(self, run: _Run, e: SampleHedged) -> None:
        run.hedges[e.sample_id] = e.straggler
        straggler = run.samples.get(e.straggler)
        if straggler is not None:
            hedge: dict[str, Any] = {
                "maker.hedge.sample_id": e.sample_id,
                "maker.hedge.in_flight_s": e.in_flight_s,
                "maker.hedge.threshold_s": e.threshold_s,
            }
            straggler.event("maker.hedged", hedge, _ns(e.ts))
        run.misspeculated[2] += 1
        if self._metrics is not None:
            self._metrics.hedged.add(1, self._run_metric_attrs(run))

    def _run_metric_attrs(self, run: _Run) -> dict[str, Any]:
        """The metric attributes of a point about the run's model rather than one sample."""
        _, provider, model = self._model(run.model)
        return self._metric_attrs(
            run, {"gen_ai.provider.name": provider, "gen_ai.request.model": model}
        )

    def _state_changed(self, run: _Run, e: StateChanged) -> None:
        step = run.steps.pop(e.step, None)
        if step is not None:
            self._end(step.span, _ns(e.ts))

    def _observed(
        self, run: _Run, step: int, sample_id: str, name: str, attrs: dict[str, Any], at: int
    ) -> None:
        sample = run.samples.get(sample_id)
        if sample is not None:
            sample.event(name, attrs, at)
            return
        holder = run.steps.get(step)
        span = holder.span if holder is not None else run.span
        if span is not None:
            span.add_event(name, {**attrs, "maker.sample_id": sample_id}, at)

    def _scheduler_waited(self, run: _Run, e: SchedulerWaited) -> None:
        attrs = {"maker.wait.reason": e.reason, "maker.wait.seconds": e.waited_s}
        self._observed(run, e.step, e.sample_id, "maker.scheduler.wait", attrs, _ns(e.ts))

    def _breaker_changed(self, run: _Run, e: BreakerChanged) -> None:
        attrs: dict[str, Any] = {
            "maker.breaker.state": e.state,
            "maker.breaker.failures": e.failures,
            "gen_ai.request.model": self._model(e.model)[2],
        }
        self._observed(run, e.step, e.sample_id, "maker.breaker", attrs, _ns(e.ts))

    def _run_resumed(self, run: _Run, e: RunResumed) -> None:
        if run.span is not None:
            # Still open: a crash, or a live resumption that replayed the prefix into us.
            self._interrupt(run, e.seq, _ns(run.last_ts), "interrupted")
        links: list[Link] = []
        if run.previous is not None:
            links.append(Link(run.previous, {"maker.link": "resumes"}))
        attrs = dict(run.attrs)
        attrs["maker.resumed"] = True
        attrs["maker.replayed"] = e.replayed
        if e.version:
            attrs["maker.version"] = e.version
        start = _ns(e.ts)
        span = self._start(
            run, e.seq, f"maker.run {run.task}", self._parent, _INTERNAL, attrs, start, links
        )
        run.span = span
        run.ctx = trace.set_span_in_context(span, _EMPTY_CONTEXT)
        run.resumed_at = start

    def _run_finished(self, run: _Run, e: RunFinished) -> None:
        end = _ns(e.ts)
        for sample in list(run.samples.values()):
            if sample.end is None:
                # Requested and never settled: the run ended around it.
                sample.event("maker.abandoned", {"maker.run.status": e.status}, end)
            self._finish(run, sample, e.seq, end)
        failed = e.status == "failed"
        for step in run.steps.values():
            if failed:
                step.span.set_status(Status(StatusCode.ERROR, e.reason))
            elif e.status == "cancelled":
                step.span.set_attribute("maker.interrupted", "cancelled")
            self._end(step.span, end)
        run.steps.clear()
        span = run.span
        if span is None:
            return
        attrs: dict[str, Any] = {
            "maker.status": e.status,
            "maker.steps": e.steps,
            "maker.samples": e.samples,
            "maker.red_flags": e.red_flags,
            "maker.wall_s": e.wall_s,
        }
        if e.reason:
            attrs["maker.reason"] = e.reason
        # What pipelining and hedging cost, when they cost anything (in maker.samples too).
        samples, starts, hedged = run.misspeculated
        if starts:
            attrs["maker.misspeculated_samples"] = samples
            attrs["maker.misspeculated_steps"] = starts
        if hedged:
            attrs["maker.hedged_samples"] = hedged
        span.set_attributes(attrs)
        if failed:
            span.set_status(Status(StatusCode.ERROR, e.reason))
        self._end(span, end)
        run.span = None
        if e.status == "cancelled":
            # Kept: a resumption links back to this span and reopens what was cut.
            run.previous = span.get_span_context()
        else:
            del self._runs[run.run_id]


# ---------------------------------------------------------------------------------------------
# Providers, accounting, exporters


class _Account:
    """What a provider built here did with its spans: ended, exported, rejected."""

    def __init__(self, provider: TracerProvider, high_water: int) -> None:
        self._provider = weakref.ref(provider)
        self.high_water = high_water
        self.ended = 0
        self.exported = 0
        self.failed = 0

    @property
    def lost(self) -> int:
        return self.ended - self.exported

    def relieve(self) -> None:
        # A producer faster than the exporter: export now, on this thread, rather than let the
        # queue overflow and drop spans.
        if self.ended - self.exported - self.failed > self.high_water:
            provider = self._provider()
            if provider is not None:
                provider.force_flush()


_ACCOUNTS: weakref.WeakKeyDictionary[object, _Account] = weakref.WeakKeyDictionary()
"""The accounts of the providers that ``maker.otel`` built (filled by ._sdk)."""


def _account_of(provider: object) -> _Account | None:
    try:
        return _ACCOUNTS.get(provider)
    except TypeError:  # a provider that cannot be weakly referenced was not built here
        return None


@dataclass(frozen=True)
class ProviderLosses:
    """What a provider built by :func:`tracer_provider_for` did with its spans."""

    ended: int
    exported: int
    failed: int

    @property
    def lost(self) -> int:
        """Spans ended but never accepted by the exporter (dropped or rejected)."""
        return self.ended - self.exported


def provider_losses(provider: trace.TracerProvider) -> ProviderLosses | None:
    """Spans ended, exported and rejected by a provider built here (None for others).

    Exact after ``force_flush()`` or ``shutdown()``; ``lost`` counts spans the batch queue
    dropped or the exporter failed to deliver.
    """
    account = _account_of(provider)
    if account is None:
        return None
    return ProviderLosses(account.ended, account.exported, account.failed)


def export_run(
    events: Iterable[AnyEvent | Event],
    tracer_provider: trace.TracerProvider,
    *,
    capture_content: bool = False,
    meter_provider: MeterProvider | None = None,
    flush_every: int = FLUSH_EVERY,
) -> int:
    """Build a recorded run's spans from its events and export them; return how many.

    The same builder as live tracing (:class:`TraceSink`), so the same tree, times and ids.
    The provider is flushed every ``flush_every`` spans, so a batch processor's queue
    (at least ``flush_every`` long) never overflows, however long the run; it is not shut
    down. With a provider from :func:`tracer_provider_for`, the count is the spans the exporter
    accepted and a shortfall raises :class:`maker.MakerError`; with another provider it is the
    spans built. A run that never finished has its open spans ended at its last event. Ids are
    deterministic (the same on every export) when the provider's id generator is a
    :class:`DeterministicIdGenerator`, as in every provider :func:`tracer_provider_for` builds.
    """
    if flush_every < 1:
        raise ConfigError("flush_every", f"must be at least 1, got {flush_every}")
    sink = TraceSink(tracer_provider, meter_provider, capture_content=capture_content)
    before = provider_losses(tracer_provider)
    flushed = 0
    flush = getattr(tracer_provider, "force_flush", None)
    for event in events:
        sink(event)
        if flush is not None and sink.spans_ended - flushed >= flush_every:
            flush()
            flushed = sink.spans_ended
    sink.close()
    if flush is not None and not flush():
        raise MakerError("the tracer provider did not flush its spans")
    after = provider_losses(tracer_provider)
    if before is None or after is None:
        return sink.spans_ended
    exported = after.exported - before.exported
    if exported != sink.spans_ended:
        missing = sink.spans_ended - exported
        raise MakerError(
            f"{missing} of {sink.spans_ended} spans were not exported "
            f"({after.failed - before.failed} rejected by the exporter)"
        )
    return exported


_ENV_EXPORTERS = {"otlp": "otlp", "otlp_proto_http": "otlp", "console": "console"}


def _env_exporter(env: Mapping[str, str], signal: str) -> str | None:
    """The exporter the standard variables ask for one signal (``TRACES`` or ``METRICS``):
    ``otlp``, ``console`` or None (none, or the SDK disabled)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    variable = f"OTEL_{signal}_EXPORTER"
    named = env.get(variable, "").strip().lower()
    if named:
        first = named.split(",")[0].strip()
        if first == "none":
            return None
        if first not in _ENV_EXPORTERS:
            raise ConfigError(variable, f"{first!r} is not supported; use otlp, console or none")
        kind = _ENV_EXPORTERS[first]
    elif env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        # The SDK's default is otlp; maker exports only where an endpoint was given, so that a
        # run with no collector configured does not retry against localhost at every export.
        kind = "otlp"
    else:
        return None
    if kind == "otlp":
        _check_protocol(env, signal)
    return kind


def _check_protocol(env: Mapping[str, str], signal: str) -> None:
    for name in (f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = env.get(name, "").strip()
        if protocol:
            if protocol != "http/protobuf":
                raise ConfigError(
                    name, f"{protocol!r} is not supported; maker exports http/protobuf"
                )
            return


# ---------------------------------------------------------------------------------------------
# Metrics accounting


class _MetricAccount:
    """What a meter provider built here did with its exports: attempted and failed."""

    def __init__(self) -> None:
        self.exports = 0
        self.failed = 0


_METRIC_ACCOUNTS: weakref.WeakKeyDictionary[object, _MetricAccount] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class MetricLosses:
    """What a meter provider built by :func:`meter_provider_for` did with its exports."""

    exports: int
    failed: int


def metric_losses(provider: MeterProvider) -> MetricLosses | None:
    """Exports attempted and failed by a provider built here (None for others); exact after
    ``shutdown()``."""
    try:
        account = _METRIC_ACCOUNTS.get(provider)
    except TypeError:  # not weakly referenceable, so not built here
        return None
    if account is None:
        return None
    return MetricLosses(account.exports, account.failed)
