"""``maker mcp``: MAKER's tools for MCP clients (coding agents, desktop assistants).

The tools of :mod:`maker.apps.mcp._mcp_tools` behind the official MCP Python SDK's low-level server,
over stdio (the default, for local clients) or streamable HTTP on 127.0.0.1. Each tool's input
schema is its msgspec argument struct's JSON schema; arguments are decoded by the same struct,
so an unknown field, a wrong type or a value out of range is a tool error naming the field, and
the server goes on serving. Each tool has a title and annotations (:data:`HINTS`) and an output
schema from its result structs (:mod:`maker.apps.mcp._mcp_results`); the log's runs are
resources (:mod:`maker.apps.mcp._mcp_resources`).

Over HTTP the server is guarded as ``maker serve`` is (:mod:`maker.apps.service._guard`): every
request sends the token (``Authorization: Bearer TOKEN``; 401 otherwise), checked in constant
time by a small ASGI middleware in front of the SDK's app (the SDK's own bearer hook wants an
OAuth authorization server to name, which a shared token has not); its Host, and its Origin if
any, must name this server (421, 403: against DNS rebinding), which the SDK's transport
security checks against the names ``--host`` and ``--allow-host`` give; the SDK takes only
JSON bodies. The tools that start runs are bounded (:class:`ToolLimits`).

stdout belongs to the protocol on stdio: diagnostics go to stderr through :mod:`logging`, and
the SDK's stdio transport moves file descriptor 1 aside, so even a stray ``print`` cannot
corrupt the stream.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import click
import msgspec

from ...core._errors import ConfigError, MakerError
from ...core._version import __version__
from ...engine._run import EventSink
from .._http import base_url, cancelled_on_sigterm
from .._options import allow_plugin_option, rate_limit_options
from .._telemetry import otel_sink_from_env
from ..service._guard import ServiceLimits, allowed_hosts, is_loopback, quote
from ..service._options import guard_options, token_from
from ._mcp_config import McpConfig, load_mcp_config
from ._mcp_resources import RunResources
from ._mcp_results import RESULTS, output_schema
from ._mcp_tools import TOOLS, McpTools, Progress, ToolError, ToolLimits

if TYPE_CHECKING:
    import uvicorn
    from mcp.server import Server, ServerRequestContext
    from mcp.server.transport_security import TransportSecuritySettings
    from mcp_types import CallToolRequestParams, CallToolResult, ListToolsResult
    from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger("maker.mcp")

INSTRUCTIONS = (
    "MAKER: error-corrected decisions by voting. `vote` samples a model until one parsed answer "
    "leads by k (red-flagged responses never vote); `validate` checks one response; `kmin` and "
    "`plan` apply the paper's formulas; `calibrate` measures p on prompts with known answers; "
    "`run` starts a task (`run_status`, `cancel`, `resume`); `show` and `replay_verify` "
    "read the "
    "log; `health` reports models and limits. Every call that reaches a model is a run in the "
    "server's event log."
)

_DESCRIPTIONS: Mapping[str, str] = {
    "vote": (
        "One error-corrected decision (MAKER): samples the model (first at temperature 0, then "
        "0.1) until one parsed answer has k more votes than any other. Responses over "
        "max_output_tokens, cut off, or not matching pattern/schema are red-flagged and never "
        "vote. Give k, or target with p (k_min by Eq 14). Without pattern or schema the whole "
        "stripped response is the answer, so only terse answers can agree: ask for a final line "
        "such as 'answer = ...' and give a pattern for it. Returns the winner (parsed answer and "
        "the original text), votes per candidate, samples, red flags, tokens, cost and run_id."
    ),
    "validate": (
        "Red-flag check of one response against token limits, a regex pattern or a JSON "
        "schema. Returns every flag with its reason, and the parsed answer when there is none."
    ),
    "kmin": (
        "The paper's Eq 14: the smallest vote margin k for which all `steps` steps succeed "
        "with probability `target` at per-step success p; with Eq 13's success probability at "
        "that k and Eq 16's expected votes per step."
    ),
    "plan": (
        "Choose model and k for a task of `steps` steps and a target: per model k_min at the "
        "lower bound of p, probability of success, expected samples, cost (Eq 19, with the "
        "red-flag factor v) and wall time; names the recommended (cheapest reliable) model. "
        "Estimates come from `models`, or from calibration runs in the log (`calibrations`)."
    ),
    "calibrate": (
        "Estimate a configured model's per-step success rate p by really calling it on prompts "
        "with known answers. Returns p with its 95% Wilson interval, the valid rate v, red "
        "flags, cost per call, and the recommended k (Eq 14 at the interval's lower bound)."
    ),
    "run": (
        "Start a task (hanoi, arithmetic, or one the server trusts) in the background; returns "
        "its run_id at once. With wait=true, follows it to the end with progress notifications "
        "(step/total)."
    ),
    "run_status": (
        "A run's state rebuilt from the log: status, steps, samples, red flags, cost. wait_s "
        "follows a running run with progress notifications first."
    ),
    "cancel": "Cancel a run this server is running. It is recorded as cancelled and resumable.",
    "resume": (
        "Continue a cancelled or crashed run from the log: the recorded prefix is re-executed "
        "without calling the model again, then the run goes on live. wait=true follows it with "
        "progress notifications. A finished run is reported unchanged."
    ),
    "show": "A run's summary from the server's log; without run_id, every run in the log.",
    "replay_verify": (
        "Re-execute a finished run from its recorded responses and compare the new events "
        "with the log, field for field; reports the first divergence."
    ),
    "health": (
        "The server's configuration (models, limits, log; never keys), whether each model "
        "is reachable (a probe that generates nothing), and the scheduler's statistics."
    ),
}


def input_schema(args_type: type[Any]) -> dict[str, Any]:
    """The JSON schema of a tool's arguments, with its root inlined (MCP wants an object)."""
    raw = msgspec.json.schema(args_type)
    defs = dict(raw.get("$defs", {}))
    name = raw["$ref"].rsplit("/", 1)[-1]
    root = dict(defs.pop(name))
    root.pop("title", None)
    for obj in (root, *defs.values()):
        for prop in obj.get("properties", {}).values():
            _hoist_description(prop, defs)
    if defs:
        root["$defs"] = defs
    return root


def _hoist_description(prop: dict[str, Any], defs: Mapping[str, Any]) -> None:
    """Put a property's description at its top, where clients show it: msgspec leaves it in
    the non-null branch of an optional field, or on the definition a ``$ref`` names."""
    if "description" in prop:
        return
    for branch in prop.get("anyOf", ()):
        if "description" in branch:
            prop["description"] = branch.pop("description")
            return
    ref = prop.get("$ref") or prop.get("items", {}).get("$ref")
    if isinstance(ref, str):
        target = defs.get(ref.rsplit("/", 1)[-1], {})
        if "description" in target:
            prop["description"] = target["description"]


SCHEMAS: Mapping[str, dict[str, Any]] = {name: input_schema(t) for name, (t, _) in TOOLS.items()}
"""Every tool's input schema by name."""

OUTPUT_SCHEMAS: Mapping[str, dict[str, Any]] = {
    name: output_schema(*RESULTS[name]) for name in TOOLS
}
"""Every tool's output schema by name: its result types' JSON schema, references inlined."""


@dataclass(frozen=True, kw_only=True)
class ToolHints:
    """A tool's title and its annotations (MCP ``ToolAnnotations``): hints to clients, which
    ask before a call to a tool not read-only (unannotated tools count as destructive)."""

    title: str
    read_only: bool
    """It changes nothing: no log entry, no run started or stopped."""
    destructive: bool
    """It may change or remove what exists (meaningful when not read-only)."""
    idempotent: bool
    """A second call with the same arguments changes nothing more."""
    open_world: bool
    """It reaches outside the server: a model provider's API."""


# The log is append-only: no tool removes or rewrites what it holds, so no tool is destructive.
HINTS: Mapping[str, ToolHints] = {
    # Every vote is a new run in the log, from a fresh random seed unless one is given.
    "vote": ToolHints(
        title="Vote on one decision",
        read_only=False,
        destructive=False,
        idempotent=False,
        open_world=True,
    ),
    "validate": ToolHints(
        title="Red-flag check of a response",
        read_only=True,
        destructive=False,
        idempotent=True,
        open_world=False,
    ),
    "kmin": ToolHints(
        title="Smallest vote margin k (Eq 14)",
        read_only=True,
        destructive=False,
        idempotent=True,
        open_world=False,
    ),
    # Reads calibrations from the log; writes nothing.
    "plan": ToolHints(
        title="Choose model and k for a target",
        read_only=True,
        destructive=False,
        idempotent=True,
        open_world=False,
    ),
    # Each call records a new calibration run (the same seed asks again), and its model may be
    # a provider's.
    "calibrate": ToolHints(
        title="Measure a model's success rate p",
        read_only=False,
        destructive=False,
        idempotent=False,
        open_world=True,
    ),
    "run": ToolHints(
        title="Start a task run",
        read_only=False,
        destructive=False,
        idempotent=False,
        open_world=True,
    ),
    # Follows a run (wait_s) without touching it.
    "run_status": ToolHints(
        title="A run's status",
        read_only=True,
        destructive=False,
        idempotent=True,
        open_world=False,
    ),
    # Stops work, but only appends run_finished "cancelled": the run resumes from the log.
    # A second cancel finds it not running and changes nothing.
    "cancel": ToolHints(
        title="Cancel a run",
        read_only=False,
        destructive=False,
        idempotent=True,
        open_world=False,
    ),
    # The live part of a resumed run calls its model. Idempotent: a second call finds the run
    # going (refused) or finished (reported unchanged); it continues nothing twice.
    "resume": ToolHints(
        title="Resume a run from the log",
        read_only=False,
        destructive=False,
        idempotent=True,
        open_world=True,
    ),
    "show": ToolHints(
        title="Show a run or the log's runs",
        read_only=True,
        destructive=False,
        idempotent=True,
        open_world=False,
    ),
    # Re-executes from the recorded responses: no model is called, nothing is written.
    "replay_verify": ToolHints(
        title="Verify a run by replay",
        read_only=True,
        destructive=False,
        idempotent=True,
        open_world=False,
    ),
    # Its probe reaches each configured provider's API (a model lookup: nothing generated, no
    # cost), which is the open world even though nothing changes.
    "health": ToolHints(
        title="Server health and models",
        read_only=True,
        destructive=False,
        idempotent=True,
        open_world=True,
    ),
}
"""Every tool's title and annotations by name."""


def _text(data: Any) -> str:
    return json.dumps(data, indent=1, allow_nan=False, default=str)


def create_mcp_server(tools: McpTools) -> Server[Any]:
    """An MCP low-level server whose tools call ``tools``."""
    from mcp import types
    from mcp.server import Server

    def tool(name: str) -> types.Tool:
        hints = HINTS[name]
        return types.Tool(
            name=name,
            title=hints.title,
            description=_DESCRIPTIONS[name],
            input_schema=SCHEMAS[name],
            output_schema=OUTPUT_SCHEMAS[name],
            annotations=types.ToolAnnotations(
                title=hints.title,  # where clients older than Tool.title look for it
                read_only_hint=hints.read_only,
                destructive_hint=hints.destructive,
                idempotent_hint=hints.idempotent,
                open_world_hint=hints.open_world,
            ),
        )

    listed = [tool(name) for name in TOOLS]
    resources = RunResources(tools)

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> ListToolsResult:
        return types.ListToolsResult(tools=listed)

    async def call_tool(
        ctx: ServerRequestContext[Any], params: CallToolRequestParams
    ) -> CallToolResult:
        async def progress(done: float, total: float | None, message: str | None) -> None:
            await ctx.session.report_progress(done, total, message)

        return await call(tools, params.name, params.arguments, progress)

    return Server(
        "maker",
        version=__version__,
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        get_tool_input_schema=SCHEMAS.get,
        on_list_resources=resources.list_resources,
        on_list_resource_templates=resources.list_templates,
        on_read_resource=resources.read,
        on_subscribe_resource=resources.subscribe,
        on_unsubscribe_resource=resources.unsubscribe,
        on_subscriptions_listen=resources.listen,
    )


async def call(
    tools: McpTools, name: str, arguments: Mapping[str, Any] | None, progress: Progress | None
) -> CallToolResult:
    """Run one tool call to its result; every failure is a tool error, never a crash.

    A result is sent twice: as JSON text (for clients before structured content) and as
    structured content, which the tool's output schema describes. An error is one line of
    text without structured content (the output schema describes results, not errors); what
    the tool found nonetheless (a failed vote's tallies) follows as a second text, in JSON.
    """
    from mcp import types

    def error(message: str, data: dict[str, Any] | None = None) -> types.CallToolResult:
        text = " ".join(message.split())
        content: list[types.ContentBlock] = [types.TextContent(text=text)]
        if data:
            content.append(types.TextContent(text=_text(data)))
        return types.CallToolResult(content=content, is_error=True)

    entry = TOOLS.get(name)
    if entry is None:
        return error(f"unknown tool {name!r}; the tools are {', '.join(TOOLS)}")
    args_type, method = entry
    try:
        args = msgspec.convert(dict(arguments or {}), args_type)
    except msgspec.ValidationError as exc:
        return error(f"{name}: invalid arguments: {exc}")
    run: Callable[[Any, Progress | None], Awaitable[dict[str, Any]]] = getattr(tools, method)
    try:
        data = await run(args, progress)
    except ToolError as exc:
        return error(f"{name}: {exc}", exc.data)
    except (ConfigError, MakerError) as exc:
        return error(f"{name}: {exc}")
    except Exception as exc:
        # A bug, not bad input: say so on stderr with the traceback, and keep serving.
        logger.exception("tool %s failed", name)
        return error(f"{name}: internal error: {type(exc).__name__}: {exc}")
    return types.CallToolResult(
        content=[types.TextContent(text=_text(data))], structured_content=data
    )


async def serve_stdio(
    config: McpConfig,
    limits: ToolLimits | None = None,
    allow_plugins: Collection[str] = (),
    sinks: Sequence[EventSink] = (),
) -> None:
    """Serve MCP over this process's stdin and stdout until the client closes them; ``limits``
    bounds the tools (none unless given); ``allow_plugins`` are the task plugins a call or a
    log may name (see :func:`maker.tasks.plugin_allowed`); ``sinks`` observe every run."""
    from mcp.server.stdio import stdio_server

    async with McpTools(config, limits, allow_plugins, sinks) as tools:
        server = create_mcp_server(tools)
        logger.info("maker mcp: serving on stdio (log %s)", config.shown)
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())


async def serve_http(
    config: McpConfig,
    port: int,
    ready: Callable[[str], None] | None = None,
    *,
    token: str | None,
    host: str = "127.0.0.1",
    allow_hosts: Collection[str] = (),
    limits: ToolLimits | None = None,
    allow_plugins: Collection[str] = (),
    sinks: Sequence[EventSink] = (),
) -> None:
    """Serve MCP as streamable HTTP on ``host:port`` (0 picks a free port) until interrupted.
    ``ready`` receives the endpoint's URL once the server listens.

    Every request must send ``Authorization: Bearer`` ``token`` (None: none asked, for a
    loopback server only) and a Host naming the server: a loopback name, ``host``, at the
    port bound, or one of ``allow_hosts`` (``name``: any port, ``name:port``). ``limits``
    bounds the tools (:class:`ToolLimits`; those of ``maker serve`` unless given);
    ``allow_plugins`` are the task plugins a call or a log may name; ``sinks`` observe every
    run.
    """
    import uvicorn

    if token is None and not is_loopback(host):
        raise ConfigError("token", f"a server on {quote(host)} must ask for a token")
    allowed_hosts(host, allow_hosts)  # a bad name is an error now, before listening
    sock = _bind(host, port)
    bound = int(sock.getsockname()[1])
    url = base_url(host, bound) + "/mcp"
    with sock:  # closed however the server ends, also when the log cannot be opened
        tools_limits = limits if limits is not None else HTTP_LIMITS
        async with McpTools(config, tools_limits, allow_plugins, sinks) as tools:
            server = create_mcp_server(tools)
            app: ASGIApp = server.streamable_http_app(
                host=host, transport_security=transport_security(host, bound, allow_hosts)
            )
            if token is not None:
                app = BearerToken(app, token)
            uv = _graceful_server(
                uvicorn.Config(
                    app, log_config=None, access_log=False, lifespan="on", log_level="warning"
                )
            )
            if ready is not None:
                ready(url)
            with _stopping_gracefully(uv):
                await uv.serve(sockets=[sock])


def _graceful_server(config: uvicorn.Config) -> uvicorn.Server:
    """uvicorn's server, leaving signals to :func:`_stopping_gracefully`.

    uvicorn's own handler shuts down gracefully, but the loop's SIGTERM handler (the
    cancellation every maker server stops by) fires beside it, on the same signal, and cancels
    the ASGI lifespan mid-shutdown: a traceback in the log instead of a clean stop.
    """
    import uvicorn

    class GracefulServer(uvicorn.Server):
        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return GracefulServer(config)


@contextmanager
def _stopping_gracefully(server: uvicorn.Server) -> Iterator[None]:
    """For the block, SIGTERM and Ctrl-C ask ``server`` to stop as uvicorn's handler would (it
    stops accepting, ends its connections and the lifespan, then returns), rather than
    cancelling it; what follows the block then closes the tools, which cancels the runs still
    going and records them as cancelled."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)

    def stop() -> None:
        server.should_exit = True

    try:
        for sig in signals:
            loop.add_signal_handler(sig, stop)
    except NotImplementedError:  # no signal handlers on this platform: Ctrl-C as it comes
        yield
        return
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


_SERVE = ServiceLimits()
HTTP_LIMITS = ToolLimits(
    max_steps=_SERVE.max_steps,
    max_samples=_SERVE.max_samples,
    max_cost_usd=_SERVE.max_cost_usd,
    max_running=_SERVE.max_running,
)
"""The bounds of ``maker mcp --http`` unless told: those of ``maker serve``."""


def _bind(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port``; a ConfigError naming the address otherwise."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError("host", f"cannot listen on {quote(host)}: {exc.strerror or exc}") from exc
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        # Listening now, not when uvicorn starts: "listening on" is printed before uvicorn
        # serves, and a client that connects in between waits in the backlog rather than
        # being refused. (uvicorn's own listen() on the socket only sets the backlog again.)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError("port", f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


def transport_security(
    host: str, port: int, allow_hosts: Collection[str] = ()
) -> TransportSecuritySettings:
    """The SDK's DNS-rebinding protection, admitting the Host names ``maker serve`` admits
    (:func:`maker.apps.service._guard.allowed_hosts`): the loopback names and ``host`` at
    ``port``, and each of ``allow_hosts`` (a name alone at any port); Origins of those, over
    http or https. A wildcard ``host`` (0.0.0.0) adds no name: name the addresses clients
    use with ``allow_hosts``.

    >>> transport_security("127.0.0.1", 8770, ["mcp.example"]).allowed_hosts
    ['127.0.0.1:8770', '[::1]:8770', 'localhost:8770', 'mcp.example', 'mcp.example:*']
    """
    from mcp.server.transport_security import TransportSecuritySettings

    allowed = allowed_hosts(host, allow_hosts)
    names: set[str] = set()

    def add(name: str, at: int | str | None) -> None:
        shown = f"[{name}]" if ":" in name else name
        if at is None or at == 80:  # a Host without a port means port 80
            names.add(shown)
        if at is not None:
            names.add(f"{shown}:{at}")

    for name in allowed.bound:
        add(name, port)
    for name, at in allowed.extra:
        add(name, at)
        if at is None:  # a name alone: at any port
            add(name, "*")
    origins = {f"{scheme}://{name}" for name in names for scheme in ("http", "https")}
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=sorted(names),
        allowed_origins=sorted(origins),
    )


class BearerToken:
    """ASGI middleware: a request without ``Authorization: Bearer TOKEN`` is answered 401, as
    ``maker serve`` answers it; the comparison takes constant time, so how much of a guess
    matched does not show in the answer's timing. The token is never logged or echoed."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = next((v for k, v in scope["headers"] if k.lower() == b"authorization"), b"")
            scheme, _, value = bytes(given).partition(b" ")
            ok = hmac.compare_digest(value.strip(), self._expected)
            if scheme.lower() != b"bearer" or not ok:
                from starlette.responses import JSONResponse

                refused = JSONResponse(
                    {"error": "a bearer token is required: Authorization: Bearer TOKEN"},
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="maker"'},
                )
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)


@click.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    envvar="MAKER_MCP_CONFIG",
    show_envvar=True,
    help="TOML file: log, [[models]] with limits, [prices].",
)
@click.option(
    "--log",
    type=click.Path(dir_okay=False),
    envvar="MAKER_MCP_LOG",
    show_envvar=True,
    help="The event log every tool call is recorded in: a SQLite file (default maker-mcp.db)"
    " or a postgresql:// URL.",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    envvar="MAKER_MCP_MODELS",
    show_envvar=True,
    help="A model the tools may use (repeat; the first is the default): sim, openai:NAME, "
    "anthropic:NAME, ollama:NAME. Replaces the file's list.",
)
@click.option("--base-url", help="API root of the one --model (OpenAI-compatible servers).")
@click.option("--concurrency", type=click.IntRange(1), help="Cap on calls in flight per model.")
@rate_limit_options
@click.option("--http", is_flag=True, help="Serve streamable HTTP (on --host), not stdio.")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="HTTP: the interface to listen on."
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8770,
    show_default=True,
    help="HTTP port (0: any free).",
)
@guard_options("--token-file", "--no-auth", "--allow-host")
@guard_options("--max-steps", "--max-samples", "--max-cost", "--max-running")
@allow_plugin_option
@click.option("-v", "--verbose", is_flag=True, help="Log diagnostics (to stderr) at INFO.")
@click.pass_context
def mcp_command(
    ctx: click.Context,
    config_file: Path | None,
    log: str | None,
    models: tuple[str, ...],
    base_url: str | None,
    concurrency: int | None,
    rpm: int | None,
    tpm: int | None,
    timeout: float,
    http: bool,
    host: str,
    port: int,
    token_file: Path | None,
    no_auth: bool,
    allow_hosts: tuple[str, ...],
    max_steps: int,
    max_samples: int,
    max_cost: float,
    max_running: int,
    allow_plugins: tuple[str, ...],
    verbose: bool,
) -> None:
    """Serve MAKER's tools to MCP clients: vote, validate, kmin, plan, calibrate, run,
    run_status, cancel, resume, show, replay_verify, health.

    stdio by default (for local clients); --http serves streamable HTTP at
    http://127.0.0.1:PORT/mcp, where every request sends Authorization: Bearer TOKEN
    (MAKER_TOKEN, --token-file, or the token printed at start) and the tools are bounded
    (--max-*; on stdio only the bounds given apply). Options override MAKER_MCP_* variables
    (MAKER_MCP_MODELS is space-separated), which override the --config file. Diagnostics go to
    stderr only.
    """
    try:
        import mcp  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise click.ClickException("maker mcp needs the MCP SDK: pip install 'maker[mcp]'") from exc
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    def source(name: str) -> str:
        found = ctx.get_parameter_source(name)
        return "env" if found == click.core.ParameterSource.ENVIRONMENT else "cli"

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT

    if not http:
        for name in ("host", "token_file", "no_auth", "allow_hosts"):
            if given(name):
                flag = "--allow-host" if name == "allow_hosts" else "--" + name.replace("_", "-")
                raise click.UsageError(f"{flag} applies to --http only")
    # Over HTTP every bound holds; on stdio, whose one client is the user who started the
    # server, only those asked for.
    limits = ToolLimits(
        max_steps=max_steps if http or given("max_steps") else None,
        max_samples=max_samples if http or given("max_samples") else None,
        max_cost_usd=max_cost if http or given("max_cost") else None,
        max_running=max_running if http or given("max_running") else None,
    )
    token, generated = token_from(host, token_file, no_auth) if http else (None, False)
    try:
        allowed_hosts(host, allow_hosts)
    except ConfigError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[-1], param_hint="--allow-host") from None
    explicit_timeout = given("timeout")
    config = load_mcp_config(
        config_file=config_file,
        log=log,
        log_source=source("log"),
        models=models,
        models_source=source("models"),
        base_url=base_url,
        concurrency=concurrency,
        rpm=rpm,
        tpm=tpm,
        timeout=timeout if explicit_timeout else None,
    )

    async def main() -> None:
        with cancelled_on_sigterm():
            if http:

                def ready(url: str) -> None:
                    click.echo(f"maker mcp: listening on {url} (log {config.shown})", err=True)
                    if generated:
                        # Shown this once, and nowhere else: keep it, or set MAKER_TOKEN.
                        click.echo(
                            f"maker mcp: token (send Authorization: Bearer TOKEN): {token}",
                            err=True,
                        )
                    elif token is None:
                        click.echo("maker mcp: no token asked (--no-auth, loopback only)", err=True)

                await serve_http(
                    config,
                    port,
                    ready,
                    token=token,
                    host=host,
                    allow_hosts=allow_hosts,
                    limits=limits,
                    allow_plugins=allow_plugins,
                    sinks=sinks,
                )
            else:
                await serve_stdio(config, limits, allow_plugins, sinks)

    # The runs the tools start are traced, and their metrics exported, where the OTEL_*
    # variables say (on stderr for console: stdout is the protocol's); set up first, so a bad
    # setting is one line.
    traced = otel_sink_from_env()
    sinks = (traced[0],) if traced is not None else ()
    try:
        with suppress(KeyboardInterrupt):
            anyio.run(main, backend="asyncio")
    finally:
        if traced is not None:
            traced[1]()
