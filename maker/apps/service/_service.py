"""``maker serve``: the engine behind HTTP, with every run's events as server-sent events.

An aiohttp application over one :class:`~maker.Engine` (and so one scheduler and one log):

- ``POST /runs`` starts a run of a built-in task and answers 201 at once with its links;
- ``GET /runs`` lists the runs in the log;
- ``GET /runs/{id}`` gives a run's state, rebuilt from the log (``maker show --json``);
- ``GET /runs/{id}/events`` streams its events as server-sent events. Each event is one message:
  ``id`` is its seq, ``event`` its type and ``data`` its JSON, byte for byte a line of
  ``maker export``. A ``Last-Event-ID`` header (or ``?after=SEQ``) resumes after that seq. The
  stream ends after the run's final ``run_finished``;
- ``POST /runs/{id}/cancel`` cancels a run this engine started; it stays resumable.

Errors are JSON, ``{"error": "one line"}``: 400 for a bad request, 404 for an unknown run.

>>> import asyncio, json, tempfile, os, urllib.request
>>> from maker import Engine, SimulatedModel
>>> async def main(path: str) -> str:
...     async with Engine(log=path, client=SimulatedModel(preset="ideal")) as engine:
...         async with serve(engine) as server:
...             body = json.dumps({"task": "hanoi", "params": {"disks": 3}, "k": 2}).encode()
...             post = urllib.request.Request(server.base_url + "/runs", data=body)
...             answer = await asyncio.to_thread(lambda: urllib.request.urlopen(post).read())
...             run_id = json.loads(answer)["run_id"]
...             await engine.handle(run_id).result()
...             url = f"{server.base_url}/runs/{run_id}"
...             state = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read())
...     return json.loads(state)["status"]
>>> asyncio.run(main(os.path.join(tempfile.mkdtemp(), "log.db")))
'succeeded'
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import click
import msgspec

from events import AnyEvent, EventLog, RunFinished, RunInfo, UnknownRunError, encode, event_tag

from ...clients import close_client
from ...clients._sim import SimulatedModel, sim_config
from ...core._client import Client
from ...core._errors import ConfigError, MakerError, UnknownTaskError
from ...core._policy import Policy
from ...engine._engine import Engine
from ...engine._handle import RunHandle
from ...engine._scheduler import Limits, Scheduler
from ...tasks import make_task
from .._http import base_url, listen, serving
from .._options import (
    base_url_option,
    concurrency_option,
    latency_ms_option,
    listen_options,
    log_option,
    model_option,
    rate_limit_options,
)

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


class RunRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /runs``.

    ``task`` and ``params`` name a built-in task (:func:`maker.tasks.make_task`); ``k``,
    ``max_samples`` and ``speculative`` make its :class:`~maker.Policy`. ``model`` defaults to
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


_decode_request = msgspec.json.Decoder(RunRequest).decode


class _BadRequest(MakerError):
    """A request the service refuses, with the one-line reason it answers (400)."""


@dataclass(frozen=True)
class Server:
    """Where :func:`serve` listens."""

    host: str
    port: int

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT``, with no trailing slash."""
        return base_url(self.host, self.port)


async def _no_events() -> AsyncIterator[AnyEvent]:
    """An empty stream: the fold of a run that has not recorded ``run_started`` yet."""
    nothing: tuple[AnyEvent, ...] = ()
    for event in nothing:
        yield event


def _error(status: int, message: str) -> web.Response:
    from aiohttp import web

    return web.json_response({"error": " ".join(message.split())}, status=status)


def _frame(event: AnyEvent) -> bytes:
    # The JSON is compact and escapes newlines inside strings, so it is always one data line.
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (
        event.seq,
        event_tag(type(event)).encode(),
        encode(event),
    )


def _resume_point(request: web.Request) -> int:
    """The seq the client has seen: ``Last-Event-ID`` (a reconnect) wins over ``?after=``."""
    raw = request.headers.get("Last-Event-ID")
    if raw is None:
        raw = request.query.get("after")
    if raw is None or not raw.strip():
        return -1  # the SSE spec: an empty Last-Event-ID means from the start
    try:
        seq = int(raw.strip())
    except ValueError:
        raise _BadRequest(f"Last-Event-ID/after must be an event seq, got {raw!r}") from None
    if seq < -1:
        raise _BadRequest(f"Last-Event-ID/after must be >= -1, got {seq}")
    return seq


class _Service:
    """The handlers, and what they share: the engine, the clients made for requests, the
    streams open now (so that shutting down ends them at once)."""

    def __init__(
        self,
        engine: Engine,
        make_client: Callable[[str], Client] | None,
        heartbeat_s: float,
    ) -> None:
        from replay import summarize_async  # replay/ builds on maker's public API: lazily

        self.engine = engine
        self.summarize = summarize_async
        self.make_client = make_client
        self.heartbeat_s = heartbeat_s
        self.clients: dict[str, Client] = {}
        self.streams: set[anyio.CancelScope] = set()

    @property
    def log(self) -> EventLog:
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
            task = make_task(body.task, body.params)
            policy = Policy(
                k=body.k, max_samples_per_step=body.max_samples, speculative=body.speculative
            )
            client = self._client_for(body)
        except (_BadRequest, ConfigError, UnknownTaskError) as exc:
            return _error(400, str(exc))
        handle = self.engine.start(task, policy=policy, seed=body.seed, client=client)
        # One turn of the loop lets the run record run_started before anyone asks about it.
        await anyio.lowlevel.checkpoint()
        location = f"/runs/{handle.run_id}"
        return web.json_response(
            {"run_id": handle.run_id, "events": f"{location}/events", "state": location},
            status=201,
            headers={"Location": location},
        )

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
        handle = self.engine.handle(run_id)
        if handle is None:
            if not await self._exists(run_id):
                return _error(404, f"no run {run_id}")
            await self._flush()
            info = await self.log.run(run_id)
            if info.finished is None:
                return _error(409, f"run {run_id} is not running in this service")
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
        return web.json_response({"runs": out})

    async def run_state(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        run_id = request.match_info["run_id"]
        await self._flush()
        try:
            async with aclosing(self.log.read(run_id)) as events:
                summary = await self.summarize(events, per_step=False)
        except UnknownRunError:
            if self.engine.handle(run_id) is None:
                return _error(404, f"no run {run_id}")
            summary = await self.summarize(_no_events(), per_step=False)  # no run_started yet
        summary.run_id = run_id
        return web.json_response(summary.to_json())

    async def run_events(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        run_id = request.match_info["run_id"]
        try:
            after = _resume_point(request)
        except _BadRequest as exc:
            return _error(400, str(exc))
        handle = self.engine.handle(run_id)
        if handle is None and not await self._exists(run_id):
            return _error(404, f"no run {run_id}")
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        with anyio.CancelScope() as scope:
            self.streams.add(scope)
            try:
                await self._pump(response, self._follow(run_id, handle, after))
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
        self, run_id: str, handle: RunHandle | None, after: int
    ) -> AsyncGenerator[AnyEvent, None]:
        """The run's events after seq ``after``, until its final ``run_finished``: live from
        the handle of a run this engine started, then (or else) followed in the log."""
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
    make_client: Callable[[str], Client] | None = None,
    heartbeat_s: float = HEARTBEAT_S,
) -> web.Application:
    """The aiohttp application serving runs of ``engine`` (which must be entered).

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
    from aiohttp import web

    service = _Service(engine, make_client, heartbeat_s)
    app = web.Application()
    app.router.add_post("/runs", service.start_run)
    app.router.add_get("/runs", service.list_runs)
    app.router.add_get("/runs/{run_id}", service.run_state)
    app.router.add_get("/runs/{run_id}/events", service.run_events)
    app.router.add_post("/runs/{run_id}/cancel", service.cancel_run)
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
) -> AsyncIterator[Server]:
    """Serve :func:`create_service` on ``host:port`` (0: an ephemeral port) for the block.

    Needs the asyncio event loop (aiohttp). Leaving the block ends the open event streams and
    closes the server; the runs themselves belong to the engine.
    """
    # listen() ends the handler of a client that disconnects at once, which releases its
    # event stream's subscription.
    app = create_service(engine, make_client=make_client, heartbeat_s=heartbeat_s)
    async with listen(app, host, port) as bound:
        yield Server(host, bound)


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
    help="Let POST /runs choose another model (keys come from the environment).",
)
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
    heartbeat: float,
) -> None:
    """Serve runs over HTTP, their events as server-sent events, until interrupted.

    POST /runs {"task": "hanoi", "params": {"disks": 10}, "k": 3} starts a run; GET /runs/ID
    gives its state; GET /runs/ID/events streams its events (Last-Event-ID resumes).
    """
    from ...clients import make_client

    try:
        import aiohttp  # noqa: F401
    except ImportError as exc:
        raise click.ClickException("serve needs aiohttp: pip install 'maker[providers]'") from exc
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
    except ConfigError as exc:
        option = "--" + exc.field.replace("_", "-")
        if option not in ("--base-url", "--latency-ms", "--concurrency", "--rpm", "--tpm"):
            option = "--model"
        raise click.BadParameter(str(exc).split(": ", 1)[-1], param_hint=option) from exc

    def per_request(spec: str) -> Client:
        return make_client(spec, timeout=timeout)

    serve_args = _ServeArgs(
        log, host, port, client, Scheduler(limits), per_request if allow_models else None, heartbeat
    )
    # asyncio.run cancels the service before it raises KeyboardInterrupt: the runs in flight
    # have recorded "cancelled" by then.
    with suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(serve_args))
    click.echo(
        f"maker serve: stopped; continue a cancelled run with: maker resume {log} --run ID",
        err=True,
    )


@dataclass(frozen=True)
class _ServeArgs:
    """What ``maker serve`` serves, read from its options: the log, the address, the default
    model and its scheduler, the factory of per-request models (None: not allowed)."""

    log: Path
    host: str
    port: int
    client: Client
    scheduler: Scheduler
    make_client: Callable[[str], Client] | None
    heartbeat_s: float


async def _serve_forever(args: _ServeArgs) -> None:
    with serving(args.host, args.port):
        try:
            async with (
                Engine(log=args.log, client=args.client, scheduler=args.scheduler) as engine,
                serve(
                    engine,
                    host=args.host,
                    port=args.port,
                    make_client=args.make_client,
                    heartbeat_s=args.heartbeat_s,
                ) as server,
            ):
                click.echo(
                    f"maker serve: listening on {server.base_url} (log {args.log}); "
                    f"POST /runs, GET /runs/ID, GET /runs/ID/events; Ctrl-C stops",
                    err=True,
                )
                # Leaving by cancellation (SIGTERM, Ctrl-C) cancels the runs in flight, and
                # each records run_finished "cancelled": they stay resumable.
                await anyio.sleep_forever()
        finally:
            await close_client(args.client)
