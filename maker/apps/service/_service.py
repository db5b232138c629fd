"""``maker serve``: the engine behind HTTP, with every run's events as server-sent events.

An aiohttp application over one :class:`~maker.Engine` (and so one scheduler and one log):

- ``POST /runs`` starts a run of a task and answers 201 at once with its links;
- ``GET /runs`` lists the runs in the log;
- ``GET /runs/{id}`` gives a run's state, rebuilt from the log (``maker show --json``);
- ``GET /runs/{id}/events`` streams its events as server-sent events. Each event is one message:
  ``id`` is its seq, ``event`` its type and ``data`` its JSON, byte for byte a line of
  ``maker export``. A ``Last-Event-ID`` header (or ``?after=SEQ``) resumes after that seq. The
  stream ends after the run's final ``run_finished``;
- ``POST /runs/{id}/cancel`` cancels a run this engine started; it stays resumable;
- ``GET /runs/{id}/report`` gives its report's data, folded from the log as ``maker report``
  folds it (:func:`replay.report_data`), with the data of each plot;
- ``GET /runs/{id}/live`` is a page that follows the run: it loads the report, then the
  events from its last seq on, and updates its figures and plots as they come; when the run
  ends it shows the final report. A finished run opens the same page, from the log. The page
  (``static/live.html`` with its script and style, no library, nothing fetched from elsewhere)
  holds no run's data, so it is served without the token: it takes the token from the
  address's fragment (``#token=TOKEN``, which a browser never sends) or asks for it.

Every request carries the service's token (``Authorization: Bearer TOKEN``) and a Host the
service answers for; bodies are JSON; requests and the service are bounded (see
:mod:`._guard` and :class:`ServiceLimits`). Errors are JSON, ``{"error": "one line"}``: 400
for a bad request, 401 without the token, 403 for what the service was not set up to allow,
404 for an unknown run, 415 for a body that is not JSON, 421 for another Host, 429 (with
``Retry-After``) when the service holds all the runs it may.

>>> import asyncio, json, tempfile, os, urllib.request
>>> from maker import Engine, SimulatedModel
>>> async def main(path: str) -> str:
...     async with Engine(log=path, client=SimulatedModel(preset="ideal")) as engine:
...         async with serve(engine) as server:
...             auth = {"Authorization": f"Bearer {server.token}"}
...             body = json.dumps({"task": "hanoi", "params": {"disks": 3}, "k": 2}).encode()
...             headers = {**auth, "Content-Type": "application/json"}
...             post = urllib.request.Request(server.base_url + "/runs", body, headers)
...             answer = await asyncio.to_thread(lambda: urllib.request.urlopen(post).read())
...             run_id = json.loads(answer)["run_id"]
...             await engine.handle(run_id).result()
...             get = urllib.request.Request(f"{server.base_url}/runs/{run_id}", None, auth)
...             state = await asyncio.to_thread(lambda: urllib.request.urlopen(get).read())
...     return json.loads(state)["status"]
>>> asyncio.run(main(os.path.join(tempfile.mkdtemp(), "log.db")))
'succeeded'
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection, Mapping
from contextlib import aclosing, asynccontextmanager, suppress
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.lowlevel
import click
import msgspec

from events import AnyEvent, RunFinished, RunInfo, Store, UnknownRunError, encode, event_tag

from ...clients import close_client
from ...clients._sim import SimulatedModel, sim_config
from ...core._client import Client
from ...core._errors import (
    ConfigError,
    MakerError,
    TaskPluginError,
    UnknownTaskError,
    UntrustedPluginError,
)
from ...core._policy import Policy
from ...core._pricing import PriceTable
from ...core._task import Task
from ...engine._engine import Engine
from ...engine._handle import RunHandle
from ...engine._run import EventSink
from ...engine._scheduler import Limits, Scheduler
from ...tasks import PromptTask, TaskFile, make_task
from .._http import base_url, listen, serving
from .._options import (
    allow_plugin_option,
    base_url_option,
    concurrency_option,
    hedge_from,
    latency_ms_option,
    listen_options,
    log_option,
    model_option,
    pipelining_for,
    prices_option,
    rate_limit_options,
)
from .._telemetry import otel_sink_from_env
from ._guard import (
    MAX_PIPELINE,
    ServiceLimits,
    check_token,
    clip,
    is_loopback,
    middlewares,
    new_token,
    prefix,
    quote,
    worst_cost,
    worst_samples,
)
from ._guard import (
    allowed_hosts as allowed_hosts_of,
)
from ._options import limits_from, service_options, token_from

CLIENT_REGEX_ENGINE: Final = "re2"
"""The regex engine of prompt tasks' patterns from requests: linear time, so that no
client's pattern can freeze the event loop (see :class:`maker.tasks.AnswerParser`)."""

if TYPE_CHECKING:
    # aiohttp is optional ('maker[providers]'): imported where it is used, so that the CLI
    # that registers `serve` loads without it.
    from aiohttp import web

HEARTBEAT_S = 15.0
"""Seconds an event stream may stay silent before a ``: keep-alive`` comment is sent."""

_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    # Proxies such as nginx buffer responses by default, which would hold events back.
    "X-Accel-Buffering": "no",
}
_KEEP_ALIVE = b": keep-alive\n\n"

_PUBLIC = re.compile(r"/runs/[^/]+/live|/live/live\.(?:js|css)")
"""The paths served without the token: the live page and its script and style, the same bytes
for every run (the run's data comes from the API, with the token)."""

_STATIC_TYPES = {
    "live.html": "text/html; charset=utf-8",
    "live.js": "text/javascript; charset=utf-8",
    "live.css": "text/css; charset=utf-8",
}

_STATIC_HEADERS = {
    # The page may load its own script and style and talk to this service, nothing else; no
    # other site may frame it.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _static(name: str) -> bytes:
    """A file of the live page, shipped in the package (``static/``)."""
    return resources.files(__package__).joinpath("static", name).read_bytes()


MAX_LATENCY_MS = 60_000.0
"""The slowest simulated model a request may ask for."""


class RunRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /runs``.

    ``task`` and ``params`` name a task (:func:`maker.tasks.make_task`): a built-in one, one an
    installed package registers, or a plugin the service trusts (``--allow-plugin``); ``k``,
    ``max_samples``, ``speculative``, ``pipeline`` and ``hedge`` make its :class:`~maker.Policy`.
    ``pipeline`` is the depth (0: off); ``hedge`` is a number, the quantile of the run's
    latencies past which a straggler gets a hedge (0 or null: off), and ``hedge_min_s`` its
    floor in seconds, as ``maker run --pipeline --hedge --hedge-min-s`` take them. Left out,
    they are on where the run's model waits for its answers, as for ``maker run`` (see
    :func:`maker.apps._options.pipelining_for`). ``matcher`` is the spec of the policy's
    matcher (``"exact"`` unless given; see :class:`maker.Matcher`). ``model`` defaults to
    the engine's client (the simulated model unless the service was set up otherwise); ``p``
    and ``latency_ms`` adjust the simulated model for this run only.
    """

    task: str
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    k: int = 3
    seed: int = 0
    model: str | None = None
    p: float | None = None
    latency_ms: float | None = None
    max_samples: int = 100
    speculative: int = 0
    pipeline: int | msgspec.UnsetType = msgspec.UNSET
    hedge: float | msgspec.UnsetType | None = msgspec.UNSET
    hedge_min_s: float | None = None
    matcher: str = "exact"


_decode_request = msgspec.json.Decoder(RunRequest).decode


class _BadRequest(MakerError):
    """A request the service refuses, with the one-line reason it answers (400 unless
    ``status`` says otherwise)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Server:
    """Where :func:`serve` listens."""

    host: str
    port: int
    token: str | None = field(default=None, repr=False)
    """What requests send as ``Authorization: Bearer TOKEN``; None when none is asked."""

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT``, with no trailing slash."""
        return base_url(self.host, self.port)


async def _no_events() -> AsyncIterator[AnyEvent]:
    """An empty stream: the fold of a run that has not recorded ``run_started`` yet."""
    nothing: tuple[AnyEvent, ...] = ()
    for event in nothing:
        yield event


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    from aiohttp import web

    return web.json_response({"error": clip(message)}, status=status, headers=headers)


def _frame(event: AnyEvent) -> bytes:
    # The JSON is compact and escapes newlines inside strings, so it is always one data line.
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (
        event.seq,
        event_tag(type(event)).encode(),
        encode(event),
    )


_SEQ = re.compile(r"[0-9]{1,18}")
"""An event seq as a client may send it: ASCII digits, short enough for SQLite's integers
(``int()`` would also take ``+5``, ``1_0``, other scripts' digits and numbers past 2**63)."""


def _resume_point(request: web.Request) -> int:
    """The seq the client has seen: ``Last-Event-ID`` (a reconnect) wins over ``?after=``."""
    raw = request.headers.get("Last-Event-ID")
    if raw is None:
        raw = request.query.get("after")
    if raw is None or not raw.strip():
        return -1  # the SSE spec: an empty Last-Event-ID means from the start
    if not _SEQ.fullmatch(raw.strip()):
        raise _BadRequest(
            f"Last-Event-ID/after must be an event seq (0 or more, at most 18 digits),"
            f" got {quote(raw)}"
        )
    return int(raw.strip())


@dataclass(eq=False)
class _Queued:
    """An accepted run waiting for a place among the running ones."""

    run_id: str
    task: Task[Any, Any]
    policy: Policy
    seed: int
    client: Client
    started: asyncio.Event = field(default_factory=asyncio.Event)


class _Service:
    """The handlers, and what they share: the engine, the clients made for requests, the
    streams open now (so that shutting down ends them at once), the runs this service started
    that are running and those waiting for a place."""

    def __init__(
        self,
        engine: Engine,
        make_client: Callable[[str], Client] | None,
        heartbeat_s: float,
        limits: ServiceLimits,
        allow_prompts: bool,
        allow_plugins: Collection[str] = (),
    ) -> None:
        # replay/ builds on maker's public API: imported lazily.
        from replay import report_data_async, summarize_async
        from replay._plots import plots_for

        self.engine = engine
        self.summarize = summarize_async
        self.report = report_data_async
        self.plots_for = plots_for
        self.static = {name: _static(name) for name in _STATIC_TYPES}
        self.make_client = make_client
        self.heartbeat_s = heartbeat_s
        self.limits = limits
        self.allow_prompts = allow_prompts
        self.allow_plugins = tuple(allow_plugins)
        self.clients: dict[str, Client] = {}
        self.streams: set[anyio.CancelScope] = set()
        self.running = 0
        self.queue: deque[_Queued] = deque()
        self.queued: dict[str, _Queued] = {}
        self.watchers: set[asyncio.Task[None]] = set()

    @property
    def log(self) -> Store:
        return self.engine.log

    # -- starting runs ---------------------------------------------------------------------

    async def start_run(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        try:
            body = _decode_request(await request.read())
        except msgspec.ValidationError as exc:
            return _error(400, str(exc))
        except msgspec.DecodeError as exc:
            return _error(400, f"the body is not valid JSON: {exc}")
        try:
            if body.task in (PromptTask.name, TaskFile.name) and not self.allow_prompts:
                # Prompts of anyone's choosing, on the owner's key: only when the owner says.
                raise _BadRequest(
                    "prompt tasks are not enabled on this service (maker serve --allow-prompts)",
                    403,
                )
            self._check_request(body)
            params = body.params
            if body.task == PromptTask.name:
                # A client's patterns run on the linear-time engine, whatever the body asks:
                # Python's re would let one pattern freeze the server's event loop.
                params = {**params, "engine": CLIENT_REGEX_ENGINE}
            elif body.task == TaskFile.name:  # a task file's prompts and patterns likewise
                params = TaskFile.with_engine(params, CLIENT_REGEX_ENGINE)
            # A request is data: a plugin it names is imported only if the owner trusts it.
            task = make_task(body.task, params, allow_plugins=self.allow_plugins)
            client = self._client_for(body)
            pipeline, hedge = pipelining_for(
                client,
                None if body.pipeline is msgspec.UNSET else body.pipeline,
                None if body.hedge is msgspec.UNSET else body.hedge or 0.0,
            )
            policy = Policy(
                k=body.k,
                max_samples_per_step=body.max_samples,
                speculative=body.speculative,
                pipeline=pipeline,
                hedge=hedge_from(hedge, body.hedge_min_s),
                matcher=body.matcher,
            )
            self._check_budget(task, policy, client)
        except _BadRequest as exc:
            return _error(exc.status, str(exc))
        except UntrustedPluginError as exc:
            module = exc.reference.partition(":")[0]
            return _error(
                403,
                f"task plugin {quote(exc.reference)} is not trusted by this service: a request "
                f"may not make it import a module (maker serve --allow-plugin {prefix(module)})",
            )
        except (ConfigError, UnknownTaskError, TaskPluginError) as exc:
            return _error(400, str(exc))
        except (ValueError, TypeError, OverflowError) as exc:  # a task's own validation
            return _error(400, f"{body.task}: {exc}")
        if self.running >= self.limits.max_running and len(self.queue) >= self.limits.max_queued:
            retry = self.limits.retry_after_s
            return _error(
                429,
                f"the service is full ({self.running} runs running, {len(self.queue)} queued);"
                f" retry in {retry} s",
                headers={"Retry-After": str(retry)},
            )
        entry = _Queued(uuid.uuid4().hex, task, policy, body.seed, client)
        if self.running < self.limits.max_running:
            self._launch(entry)
            # One turn of the loop lets the run record run_started, and the flush commits it,
            # before the id is handed out: whoever asks about it next, this process or another
            # sharing the store, finds it in the log.
            await anyio.lowlevel.checkpoint()
            await self._flush()
        else:
            self.queue.append(entry)
            self.queued[entry.run_id] = entry
        location = f"/runs/{entry.run_id}"
        return web.json_response(
            {
                "run_id": entry.run_id,
                "events": f"{location}/events",
                "state": location,
                "live": f"{location}/live",
            },
            status=201,
            headers={"Location": location},
        )

    def _check_request(self, body: RunRequest) -> None:
        """The per-request bounds that need no task: samples per step, the simulated model's
        latency (a run held back for hours would hold its place as long)."""
        limit = self.limits.max_samples
        for name, value in (
            ("k", body.k),
            ("max_samples", body.max_samples),
            ("speculative", body.speculative),
        ):
            if value > limit:
                raise _BadRequest(f"{name}: at most {limit} on this service, got {value}")
        if body.pipeline is not msgspec.UNSET and body.pipeline > MAX_PIPELINE:
            raise _BadRequest(f"pipeline: at most {MAX_PIPELINE}, got {body.pipeline}")
        if body.latency_ms is not None and body.latency_ms > MAX_LATENCY_MS:
            raise _BadRequest(f"latency_ms: at most {MAX_LATENCY_MS:g}, got {body.latency_ms}")
        if not 0 <= body.seed < 2**63:
            raise _BadRequest(f"seed: must be in 0..2**63-1, got {quote(body.seed)}")

    def _check_budget(self, task: Task[Any, Any], policy: Policy, client: Client) -> None:
        """The step bound, and the worst case cost when the model's price is known."""
        steps = task.max_steps()
        if steps is not None and steps > self.limits.max_steps:
            raise _BadRequest(
                f"the task has up to {steps} steps; this service runs at most"
                f" {self.limits.max_steps}"
            )
        cap = self.limits.max_cost_usd
        if cap is None:
            return
        first = task.prompt(task.initial_state())
        worst = worst_cost(
            self.engine.prices,
            client.model,
            prompt_chars=len(first.system) + len(first.user),
            max_tokens=policy.max_tokens,
            samples=worst_samples(policy, steps or 1),
        )
        if worst is not None and worst > cap:
            hedged = "" if policy.hedge is None else f", {policy.hedge.per_step} hedged"
            raise _BadRequest(
                f"this run could cost up to ${worst:.2f} on {client.model} ({steps} steps of up to"
                f" {policy.max_samples_per_step} samples{hedged}); this service allows ${cap:.2f}:"
                " lower max_samples or the task's size"
            )

    def _launch(self, entry: _Queued) -> None:
        """Start a run in a free place; when it ends, the next queued one takes the place."""
        handle = self.engine.start(
            entry.task,
            policy=entry.policy,
            seed=entry.seed,
            run_id=entry.run_id,
            client=entry.client,
        )
        self.running += 1
        entry.started.set()
        watcher = asyncio.get_running_loop().create_task(self._release(handle))
        self.watchers.add(watcher)
        watcher.add_done_callback(self.watchers.discard)

    async def _release(self, handle: RunHandle) -> None:
        try:
            with suppress(Exception):  # how the run ended is the log's, not this watcher's
                await handle.result()
        finally:
            self.running -= 1
            while self.queue and self.running < self.limits.max_running:
                entry = self.queue.popleft()
                del self.queued[entry.run_id]
                self._launch(entry)

    def _client_for(self, body: RunRequest) -> Client:
        default = self.engine.client
        tuned = body.p is not None or body.latency_ms is not None
        if (body.model is None or body.model == default.model) and not tuned:
            return default
        simulated = isinstance(default, SimulatedModel)
        if body.model == "sim" or (body.model in (None, default.model) and simulated):
            return self._sim(default, body)
        model = body.model or default.model
        if tuned:
            raise _BadRequest(
                f"p and latency_ms apply only to the simulated model (sim), not to {model}"
            )
        if self.make_client is None:
            raise _BadRequest(
                f"model: this service runs {default.model} and sim only; it was not set up to"
                f" choose other models (got {model!r})"
            )
        client = self.clients.get(model)
        if client is None:
            # One client per model for the service's life: it shares its connection pool.
            client = self.clients[model] = self.make_client(model)
        return client

    @staticmethod
    def _sim(default: Client, body: RunRequest) -> SimulatedModel:
        base = default.config if isinstance(default, SimulatedModel) else None
        return SimulatedModel(sim_config(base, p=body.p, latency_ms=body.latency_ms))

    async def cancel_run(self, request: web.Request) -> web.StreamResponse:
        run_id = request.match_info["run_id"]
        entry = self.queued.pop(run_id, None)
        if entry is not None:
            # It leaves the queue as a run that was cancelled before its first step, recorded
            # (and resumable) like any other.
            self.queue.remove(entry)
            entry_handle = self.engine.start(
                entry.task,
                policy=entry.policy,
                seed=entry.seed,
                run_id=entry.run_id,
                client=entry.client,
            )
            entry.started.set()
            from aiohttp import web

            return web.json_response((await entry_handle.cancel()).to_json())
        handle = self.engine.handle(run_id)
        if handle is None:
            if not await self._exists(run_id):
                return _error(404, f"no run {prefix(run_id)}")
            await self._flush()
            info = await self.log.run(run_id)
            if info.finished is None:
                return _error(409, f"run {prefix(run_id)} is not running in this service")
            # It has already ended: cancelling changes nothing; answer with how it ended.
            from aiohttp import web

            # Folded as it is read: a finished run of any length in bounded memory.
            async with aclosing(self.log.read(run_id)) as events:
                summary = await self.summarize(events, per_step=False)
            return web.json_response(summary.to_json())
        try:
            result = await handle.cancel()
        except Exception as exc:  # a bug in task code ended the run before the cancel
            return _error(500, f"run {run_id} failed: {type(exc).__name__}: {exc}")
        from aiohttp import web

        return web.json_response(result.to_json())

    # -- reading runs ----------------------------------------------------------------------

    async def list_runs(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        await self._flush()
        out = []
        for info in await self.log.runs():
            handle = self.engine.handle(info.run_id)
            out.append(
                {
                    "run_id": info.run_id,
                    "task": info.started.task,
                    "status": _status(info),
                    "events": info.last_seq + 1,
                    "live": handle is not None and not handle.done,
                }
            )
        out.extend(
            {
                "run_id": entry.run_id,
                "task": entry.task.name,
                "status": "queued",
                "events": 0,
                "live": True,
            }
            for entry in self.queue
        )
        return web.json_response({"runs": out})

    async def run_state(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        run_id = request.match_info["run_id"]
        await self._flush()
        status = None
        try:
            async with aclosing(self.log.read(run_id)) as events:
                summary = await self.summarize(events, per_step=False)
        except UnknownRunError:
            if self.engine.handle(run_id) is None and run_id not in self.queued:
                return _error(404, f"no run {prefix(run_id)}")
            summary = await self.summarize(_no_events(), per_step=False)  # no run_started yet
            status = "queued" if run_id in self.queued else None
        summary.run_id = run_id
        state = summary.to_json()
        if status is not None:
            state["status"] = status
        return web.json_response(state)

    async def run_report(self, request: web.Request) -> web.StreamResponse:
        """The report's data (without the votes of every step, which the page does not draw
        and which grow with the run), the data of each plot, and the task's step budget."""
        from aiohttp import web

        run_id = request.match_info["run_id"]
        await self._flush()
        try:
            async with aclosing(self.log.read(run_id)) as events:
                data = await self.report(events, allow_plugins=self.allow_plugins)
        except (UnknownRunError, ConfigError):  # not in the log, or no event recorded yet
            if self.engine.handle(run_id) is None and run_id not in self.queued:
                return _error(404, f"no run {prefix(run_id)}")
            status = "queued" if run_id in self.queued else "running"
            return web.json_response(
                {
                    "run_id": run_id,
                    "status": status,
                    "report": None,
                    "plots": None,
                    "max_steps": None,
                }
            )
        report = data.to_json()
        del report["votes_to_decide"]
        return web.json_response(
            {
                "run_id": run_id,
                "status": data.summary.status,
                "report": report,
                "plots": {plot.name: plot.data(data) for plot in self.plots_for(data)},
                "max_steps": self._max_steps(data.summary.task, data.summary.task_params),
            }
        )

    def _max_steps(self, name: str, params: dict[str, Any]) -> int | None:
        try:
            return make_task(name, params, allow_plugins=self.allow_plugins).max_steps()
        except Exception:  # a task this service cannot rebuild: the page shows no bound
            return None

    async def live_page(self, request: web.Request) -> web.StreamResponse:
        return self._serve_static("live.html")

    async def live_file(self, request: web.Request) -> web.StreamResponse:
        return self._serve_static(request.match_info["name"])

    def _serve_static(self, name: str) -> web.StreamResponse:
        from aiohttp import web

        body = self.static.get(name)
        if body is None:
            return _error(404, f"no file {prefix(name)}")
        return web.Response(
            body=body,
            headers={**_STATIC_HEADERS, "Content-Type": _STATIC_TYPES[name]},
        )

    async def run_events(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        run_id = request.match_info["run_id"]
        try:
            after = _resume_point(request)
        except _BadRequest as exc:
            return _error(400, str(exc))
        handle = self.engine.handle(run_id)
        queued = self.queued.get(run_id)
        if handle is None and queued is None and not await self._exists(run_id):
            return _error(404, f"no run {prefix(run_id)}")
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        with anyio.CancelScope() as scope:
            self.streams.add(scope)
            try:
                await self._pump(response, self._follow(run_id, handle, after, queued))
            finally:
                self.streams.discard(scope)
        return response

    async def _pump(
        self, response: web.StreamResponse, events: AsyncGenerator[AnyEvent, None]
    ) -> None:
        """Write events as they come, and a comment whenever the stream has been idle a while
        (so proxies and clients keep the connection, and a gone client is noticed)."""
        lock = anyio.Lock()
        last_write = anyio.current_time()

        async def write(data: bytes) -> None:
            nonlocal last_write
            async with lock:
                await response.write(data)
                last_write = anyio.current_time()

        async def heartbeat() -> None:
            while True:
                await anyio.sleep(max(0.0, last_write + self.heartbeat_s - anyio.current_time()))
                if anyio.current_time() - last_write >= self.heartbeat_s:
                    await write(_KEEP_ALIVE)

        try:
            async with aclosing(events), anyio.create_task_group() as tg:
                tg.start_soon(heartbeat)
                async for event in events:
                    await write(_frame(event))
                tg.cancel_scope.cancel()
        except* ConnectionError:
            pass  # the client went away; closing the generator released its subscription

    async def _follow(
        self, run_id: str, handle: RunHandle | None, after: int, queued: _Queued | None = None
    ) -> AsyncGenerator[AnyEvent, None]:
        """The run's events after seq ``after``, until its final ``run_finished``: live from
        the handle of a run this engine started (once it has, for a queued one), then (or
        else) followed in the log."""
        if queued is not None:
            await queued.started.wait()  # the heartbeats keep the stream open meanwhile
            handle = self.engine.handle(run_id)
        last = after
        if handle is not None:
            async with aclosing(handle.events(after_seq=last)) as live:
                async for event in live:
                    last = event.seq
                    yield event
        # A run only in the log, or one resumed elsewhere after this engine's part of it ended.
        while not await self._ended_at(run_id, last):
            try:
                async with aclosing(self.log.tail(run_id, after_seq=last)) as tail:
                    async for event in tail:
                        last = event.seq
                        yield event
            except UnknownRunError:
                return  # a run of this engine cancelled before it recorded anything

    async def _ended_at(self, run_id: str, last: int) -> bool:
        """Whether the run's last committed event is a ``run_finished`` at or before ``last``.

        A cancelled run that was resumed has events after its first ``run_finished``: it has
        not ended until the last one.
        """
        if last < 0:
            return False
        await self._flush()
        seen: AnyEvent | None = None
        async with aclosing(self.log.read(run_id, after_seq=last - 1)) as events:
            async for event in events:
                if seen is not None:
                    return False  # more follows
                seen = event
        if seen is not None:
            return isinstance(seen, RunFinished)
        # ``last`` is past the run's end (a made-up Last-Event-ID): ask how the run ends.
        info = await self._info(run_id)
        return info is not None and _status(info) != "running"

    async def _exists(self, run_id: str) -> bool:
        await self._flush()
        try:
            async with aclosing(self.log.read(run_id)) as events:
                async for _ in events:
                    return True
        except UnknownRunError:
            return False
        return False

    async def _info(self, run_id: str) -> RunInfo | None:
        try:
            info = await self.log.run(run_id)
        except UnknownRunError:
            return None
        return info if info.run_id == run_id else None  # run() also takes a unique prefix

    async def _flush(self) -> None:
        # Readers see committed events only; a run of this engine may have some queued.
        if self.log.mode == "w":
            await self.log.flush()

    # -- lifecycle -------------------------------------------------------------------------

    async def on_shutdown(self, app: web.Application) -> None:
        # Open streams would otherwise hold the shutdown for its whole timeout.
        for scope in list(self.streams):
            scope.cancel()
        # Queued runs recorded nothing yet: they are dropped, and no watcher starts them.
        self.queue.clear()
        self.queued.clear()
        for watcher in list(self.watchers):
            watcher.cancel()

    async def on_cleanup(self, app: web.Application) -> None:
        for client in self.clients.values():
            await close_client(client)
        self.clients.clear()


def _status(info: RunInfo) -> str:
    # Like the summary: a run resumed after its run_finished is running again.
    if info.finished is not None and info.finished.seq == info.last_seq:
        return info.finished.status
    return "running"


def create_service(
    engine: Engine,
    *,
    token: str | None,
    make_client: Callable[[str], Client] | None = None,
    heartbeat_s: float = HEARTBEAT_S,
    limits: ServiceLimits | None = None,
    allow_prompts: bool = False,
    host: str | None = None,
    allowed_hosts: Collection[str] = (),
    allow_plugins: Collection[str] = (),
) -> web.Application:
    """The aiohttp application serving runs of ``engine`` (which must be entered).

    Every request must send ``Authorization: Bearer TOKEN`` with this ``token`` (None: no
    token is asked, for a service only this machine reaches), and a Host header naming
    localhost, 127.0.0.1, [::1], ``host`` (the address it listens on) or the address the
    request reached, at the port it listens on, or one of ``allowed_hosts`` (``name``: any
    port, ``name:port``). ``limits`` bounds requests and runs (:class:`ServiceLimits`);
    ``prompt`` tasks are refused (403) unless ``allow_prompts``, and task plugins
    (``package.module:factory``) unless ``allow_plugins`` trusts them (see
    :func:`maker.tasks.plugin_allowed`): a request must not make the service import a module
    of its choosing.

    Runs use the engine's client unless a request asks for another model: ``"sim"`` (with its
    ``p`` and ``latency_ms``) is always allowed, any other model only when ``make_client`` is
    given; it is called once per model spec, and the client is closed with the application.
    ``heartbeat_s`` is how long an event stream may stay silent before a comment is sent.

    Run it with :func:`serve`, or with aiohttp's own runners; with those, pass
    ``handler_cancellation=True`` so that a client that disconnects releases its stream at once
    rather than at the next heartbeat.
    """
    if not heartbeat_s > 0:
        raise ConfigError("heartbeat_s", f"must be positive, got {heartbeat_s}")
    if token is not None:
        check_token(token)
    limits = limits if limits is not None else ServiceLimits()
    from aiohttp import web

    service = _Service(engine, make_client, heartbeat_s, limits, allow_prompts, allow_plugins)
    app = web.Application(
        middlewares=middlewares(
            token,
            allowed_hosts_of(host, allowed_hosts),
            _error,
            public=lambda path: _PUBLIC.fullmatch(path) is not None,
        ),
        client_max_size=limits.max_body_bytes,
    )
    app.router.add_post("/runs", service.start_run)
    app.router.add_get("/runs", service.list_runs)
    app.router.add_get("/runs/{run_id}", service.run_state)
    app.router.add_get("/runs/{run_id}/events", service.run_events)
    app.router.add_post("/runs/{run_id}/cancel", service.cancel_run)
    app.router.add_get("/runs/{run_id}/report", service.run_report)
    app.router.add_get("/runs/{run_id}/live", service.live_page)
    app.router.add_get("/live/{name:live\\.(?:js|css)}", service.live_file)
    app.on_shutdown.append(service.on_shutdown)
    app.on_cleanup.append(service.on_cleanup)
    return app


@asynccontextmanager
async def serve(
    engine: Engine,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    make_client: Callable[[str], Client] | None = None,
    heartbeat_s: float = HEARTBEAT_S,
    token: str | None = None,
    auth: bool = True,
    limits: ServiceLimits | None = None,
    allow_prompts: bool = False,
    allowed_hosts: Collection[str] = (),
    allow_plugins: Collection[str] = (),
) -> AsyncIterator[Server]:
    """Serve :func:`create_service` on ``host:port`` (0: an ephemeral port) for the block.

    Requests must send ``token`` (a new random one when None: see ``Server.token``);
    ``auth=False`` asks for none, and only on a loopback ``host``. The other options are
    :func:`create_service`'s.

    Needs the asyncio event loop (aiohttp). Leaving the block ends the open event streams and
    closes the server; the runs themselves belong to the engine.
    """
    if not auth:
        if token is not None:
            raise ConfigError("token", "is not asked for with auth=False")
        if not is_loopback(host):
            raise ConfigError(
                "auth", f"may be turned off only on a loopback address, not {quote(host)}"
            )
    elif token is None:
        token = new_token()
    # listen() ends the handler of a client that disconnects at once, which releases its
    # event stream's subscription.
    app = create_service(
        engine,
        token=token if auth else None,
        make_client=make_client,
        heartbeat_s=heartbeat_s,
        limits=limits,
        allow_prompts=allow_prompts,
        host=host,
        allowed_hosts=allowed_hosts,
        allow_plugins=allow_plugins,
    )
    async with listen(app, host, port) as bound:
        yield Server(host, bound, token if auth else None)


# --- the command ----------------------------------------------------------------------------


@click.command("serve")
@log_option("SQLite event log the runs are appended to.")
@listen_options(port=8080)
@concurrency_option
@rate_limit_options
@model_option("The runs' model: sim, openai:NAME, anthropic:NAME or ollama:NAME.")
@base_url_option
@latency_ms_option
@click.option(
    "--allow-models",
    is_flag=True,
    help="Let POST /runs choose another model (keys come from the environment; with"
    " --base-url, only models of that provider, reached there).",
)
@prices_option
@service_options
@allow_plugin_option
@click.option(
    "--heartbeat",
    type=click.FloatRange(0.0, min_open=True),
    default=HEARTBEAT_S,
    show_default=True,
    help="Seconds of silence before an event stream sends a keep-alive comment.",
)
def serve_command(
    log: Path,
    host: str,
    port: int,
    concurrency: int | None,
    rpm: int | None,
    tpm: int | None,
    timeout: float,
    model: str,
    base_url: str | None,
    latency_ms: float | None,
    allow_models: bool,
    prices: Path | None,
    token_file: Path | None,
    no_auth: bool,
    allow_hosts: tuple[str, ...],
    allow_prompts: bool,
    max_steps: int,
    max_samples: int,
    max_cost: float,
    max_running: int,
    max_queued: int,
    allow_plugins: tuple[str, ...],
    heartbeat: float,
) -> None:
    """Serve runs over HTTP, their events as server-sent events, until interrupted.

    POST /runs {"task": "hanoi", "params": {"disks": 10}, "k": 3} starts a run; GET /runs/ID
    gives its state; GET /runs/ID/events streams its events (Last-Event-ID resumes); GET
    /runs/ID/report gives its report's data. Every request sends Authorization: Bearer TOKEN
    (MAKER_TOKEN, --token-file, or the token printed at start). A browser follows a run at
    /runs/ID/live#token=TOKEN.
    """
    from ...clients import make_client

    try:
        import aiohttp  # noqa: F401
    except ImportError as exc:
        raise click.ClickException("serve needs aiohttp: pip install 'maker[providers]'") from exc
    token, generated = token_from(host, token_file, no_auth)
    try:
        if model == "sim":
            if base_url is not None:
                raise ConfigError("base_url", "does not apply to the simulated model")
            client = make_client("sim", sim=sim_config(latency_ms=latency_ms))
        else:
            if latency_ms is not None:
                raise ConfigError("latency_ms", "applies only to the simulated model (--model sim)")
            client = make_client(model, base_url=base_url, timeout=timeout)
        limits = Limits(concurrency=concurrency, rpm=rpm, tpm=tpm, timeout_s=timeout)
        table = PriceTable.load(prices) if prices is not None else PriceTable()
        allowed_hosts_of(host, allow_hosts)  # a bad --allow-host is a usage error, now
    except ConfigError as exc:
        option = "--" + exc.field.replace("_", "-")
        if option == "--allowed-hosts":
            option = "--allow-host"
        known = ("--base-url", "--latency-ms", "--concurrency", "--rpm", "--tpm", "--prices")
        if option not in (*known, "--allow-host"):
            option = "--model"
        raise click.BadParameter(str(exc).split(": ", 1)[-1], param_hint=option) from exc

    serve_args = _ServeArgs(
        log,
        host,
        port,
        client,
        Scheduler(limits),
        table,
        request_models(model, base_url, timeout) if allow_models else None,
        heartbeat,
        token,
        generated,
        limits_from(
            max_steps=max_steps,
            max_samples=max_samples,
            max_cost=max_cost,
            max_running=max_running,
            max_queued=max_queued,
        ),
        allow_prompts,
        allow_hosts,
        allow_plugins,
    )
    # Every run the service starts is traced, and its metrics exported, where the OTEL_*
    # variables say (one sink serves all runs); set up first, so a bad setting is one line.
    traced = otel_sink_from_env()
    if traced is not None:
        serve_args = replace(serve_args, sinks=(traced[0],))
    # asyncio.run cancels the service before it raises KeyboardInterrupt: the runs in flight
    # have recorded "cancelled" by then.
    try:
        with suppress(KeyboardInterrupt):
            asyncio.run(_serve_forever(serve_args))
    finally:
        if traced is not None:
            traced[1]()  # ends open spans, flushes both signals; warns if anything was lost
    click.echo(
        f"maker serve: stopped; continue a cancelled run with: maker resume {log} --run ID",
        err=True,
    )


def request_models(model: str, base_url: str | None, timeout: float) -> Callable[[str], Client]:
    """The factory of the models requests choose (``--allow-models``): each reached where the
    service's own model is. With a ``base_url``, only that provider's models, reached there: a
    request never makes the service dial another address with its keys."""
    from ...clients import make_client

    provider = model.partition(":")[0]

    def per_request(spec: str) -> Client:
        if base_url is None:
            return make_client(spec, timeout=timeout)
        if spec.partition(":")[0] != provider:
            raise ConfigError(
                "model",
                f"this service reaches {provider} models at its --base-url only; got {quote(spec)}",
            )
        return make_client(spec, base_url=base_url, timeout=timeout)

    return per_request


@dataclass(frozen=True)
class _ServeArgs:
    """What ``maker serve`` serves, read from its options: the log, the address, the default
    model, its scheduler and prices, the factory of per-request models (None: not allowed),
    the token (generated: to be shown once) and what guards the service."""

    log: Path
    host: str
    port: int
    client: Client
    scheduler: Scheduler
    prices: PriceTable
    make_client: Callable[[str], Client] | None
    heartbeat_s: float
    token: str | None
    generated: bool
    limits: ServiceLimits
    allow_prompts: bool
    allowed_hosts: tuple[str, ...]
    allow_plugins: tuple[str, ...]
    sinks: tuple[EventSink, ...] = ()


async def _serve_forever(args: _ServeArgs) -> None:
    with serving(args.host, args.port):
        try:
            async with (
                Engine(
                    log=args.log,
                    client=args.client,
                    scheduler=args.scheduler,
                    prices=args.prices,
                    sinks=args.sinks,
                ) as engine,
                serve(
                    engine,
                    host=args.host,
                    port=args.port,
                    make_client=args.make_client,
                    heartbeat_s=args.heartbeat_s,
                    token=args.token,
                    auth=args.token is not None,
                    limits=args.limits,
                    allow_prompts=args.allow_prompts,
                    allowed_hosts=args.allowed_hosts,
                    allow_plugins=args.allow_plugins,
                ) as server,
            ):
                click.echo(
                    f"maker serve: listening on {server.base_url} (log {args.log}); "
                    f"POST /runs, GET /runs/ID, GET /runs/ID/events; a browser follows a run at "
                    f"{server.base_url}/runs/ID/live#token=TOKEN; Ctrl-C stops",
                    err=True,
                )
                if args.generated:
                    # Shown this once, and nowhere else: keep it, or set MAKER_TOKEN next time.
                    click.echo(
                        f"maker serve: token (send Authorization: Bearer TOKEN): {server.token}",
                        err=True,
                    )
                elif args.token is None:
                    click.echo("maker serve: no token asked (--no-auth, loopback only)", err=True)
                # Leaving by cancellation (SIGTERM, Ctrl-C) cancels the runs in flight, and
                # each records run_finished "cancelled": they stay resumable.
                await anyio.sleep_forever()
        finally:
            await close_client(args.client)
