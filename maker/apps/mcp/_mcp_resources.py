"""The runs of the server's log as MCP resources, with subscriptions to the live ones.

- ``maker://runs/{run_id}``: the run's summary as JSON, what the ``show`` tool returns for it
  (``maker show --json`` for a run that has ended; the counters of one that is going);
- ``maker://runs/{run_id}/events{?after,limit}``: its events as JSON lines (one event a line,
  as the log encodes them), a page at a time: at most ``limit`` (default
  :data:`EVENTS_PAGE`, at most :data:`EVENTS_PAGE_MAX`) with seq > ``after``, read from the
  log no further than that, so a run of a million steps is read a page at a time. When more
  follow, the contents' ``_meta`` names the next page's URI under :data:`NEXT_PAGE`.

``resources/list`` lists the runs of the log (by full id, a page of :data:`LIST_PAGE` at a
time). A client told of a run (``run`` returns its id) subscribes to either URI: while a run
started by ``run`` or ``resume`` goes on, both are announced updated (at most four times a
second), and once more when it ends. The SDK speaks two eras of the protocol, and so does
this: ``resources/subscribe`` with ``notifications/resources/updated`` on the session (up to
2025-11-25), and the ``subscriptions/listen`` stream that replaces them (2026-07-28).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, urlsplit

import msgspec

from events import encode

from ...core._errors import ConfigError
from ._mcp_tools import McpTools, ShowArgs, ToolError

if TYPE_CHECKING:
    from mcp.server import ServerRequestContext
    from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler
    from mcp_types import (
        EmptyResult,
        ListResourcesResult,
        ListResourceTemplatesResult,
        PaginatedRequestParams,
        ReadResourceRequestParams,
        ReadResourceResult,
        SubscribeRequestParams,
        UnsubscribeRequestParams,
    )

logger = logging.getLogger("maker.mcp")

RUN_TEMPLATE: Final = "maker://runs/{run_id}"
EVENTS_TEMPLATE: Final = "maker://runs/{run_id}/events{?after,limit}"
EVENTS_PAGE: Final = 1000
"""Events in a page of ``maker://runs/{run_id}/events`` unless ``limit`` says."""
EVENTS_PAGE_MAX: Final = 10_000
"""The most events one read returns, whatever ``limit`` says."""
LIST_PAGE: Final = 100
"""Runs in a page of ``resources/list``."""
NEXT_PAGE: Final = "maker/next"
"""The key, in an events page's ``_meta``, of the URI of the page that follows."""
JSON: Final = "application/json"
JSON_LINES: Final = "application/jsonl"

_URI = re.compile(r"maker://runs/(?P<run_id>[^/?#]+)(?P<events>/events)?")


def run_uri(run_id: str) -> str:
    """The URI of a run's summary."""
    return f"maker://runs/{run_id}"


def events_uri(run_id: str, after: int | None = None) -> str:
    """The URI of a run's events, from the first or after seq ``after``."""
    base = f"maker://runs/{run_id}/events"
    return base if after is None else f"{base}?after={after}"


def parse_uri(uri: str) -> tuple[str, bool, int, int]:
    """``(run_id, events, after, limit)`` of a run resource's URI; ConfigError otherwise.

    >>> parse_uri("maker://runs/ab12/events?after=9&limit=5")
    ('ab12', True, 9, 5)
    >>> parse_uri("maker://runs/ab12")
    ('ab12', False, -1, 1000)
    """
    split = urlsplit(uri)
    found = _URI.fullmatch(f"{split.scheme}://{split.netloc}{split.path}")
    if found is None or split.fragment:
        raise ConfigError("uri", f"not a run resource: {uri!r} (maker://runs/ID[/events])")
    query = parse_qs(split.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"after", "limit"})
    if unknown or (query and found["events"] is None):
        raise ConfigError("uri", f"{uri!r}: unknown query {', '.join(unknown) or split.query}")

    def number(name: str, default: int, least: int) -> int:
        given = query.get(name)
        if not given:
            return default
        try:
            value = int(given[-1])
        except ValueError:
            raise ConfigError(name, f"must be an integer, got {given[-1]!r}") from None
        if value < least:
            raise ConfigError(name, f"must be at least {least}, got {value}")
        return value

    after = number("after", -1, -1)
    limit = min(number("limit", EVENTS_PAGE, 1), EVENTS_PAGE_MAX)
    return found["run_id"], found["events"] is not None, after, limit


class RunResources:
    """The request handlers of the run resources over ``tools``, and the subscriptions to
    them, for the SDK's ``Server``: from the moment it is made, subscribers hear of the runs
    that ``tools`` starts."""

    def __init__(self, tools: McpTools) -> None:
        from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler

        self.tools = tools
        self.bus: InMemorySubscriptionBus = InMemorySubscriptionBus()
        self.listen: ListenHandler = ListenHandler(self.bus)
        # Sessions of the handshake era that subscribed, by URI; each is told on its own.
        self._sessions: dict[str, list[Any]] = {}
        tools.watch_runs(self.updated)

    async def updated(self, run_id: str, ended: bool) -> None:
        """Announce a run's two resources updated, on every era's channel."""
        from mcp.server.subscriptions import ResourceUpdated

        for uri in (run_uri(run_id), events_uri(run_id)):
            await self.bus.publish(ResourceUpdated(uri=uri))
            for session in list(self._sessions.get(uri, ())):
                try:
                    await session.send_resource_updated(uri)
                except Exception:  # the client has gone: forget it
                    logger.info("dropped a subscriber of %s", uri, exc_info=True)
                    self._forget(uri, session)

    def _forget(self, uri: str, session: Any) -> None:
        sessions = self._sessions.get(uri, [])
        self._sessions[uri] = [s for s in sessions if s is not session]
        if not self._sessions[uri]:
            del self._sessions[uri]

    async def list_resources(
        self, ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> ListResourcesResult:
        from mcp import types

        runs = (await self.tools.show(ShowArgs()))["runs"]
        start = _cursor(params.cursor if params is not None else None)
        page = runs[start : start + LIST_PAGE]
        more = start + LIST_PAGE < len(runs)
        return types.ListResourcesResult(
            resources=[
                types.Resource(
                    uri=run_uri(run["run_id"]),
                    name=run["run_id"],
                    title=f"{run['task']} run {run['run_id'][:8]} ({run['status']})",
                    description=f"A {run['task']} run on {', '.join(run['models'])}: "
                    f"{run['status']}, {run['events']} events.",
                    mime_type=JSON,
                )
                for run in page
            ],
            next_cursor=str(start + LIST_PAGE) if more else None,
        )

    async def list_templates(
        self, ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> ListResourceTemplatesResult:
        from mcp import types

        return types.ListResourceTemplatesResult(
            resource_templates=[
                types.ResourceTemplate(
                    uri_template=RUN_TEMPLATE,
                    name="run",
                    title="A run's summary",
                    description="The run's summary as the show tool gives it (maker show "
                    "--json once it has ended); subscribe to hear of a live run's progress.",
                    mime_type=JSON,
                ),
                types.ResourceTemplate(
                    uri_template=EVENTS_TEMPLATE,
                    name="run-events",
                    title="A run's events",
                    description=f"The run's events as JSON lines, {EVENTS_PAGE} a page (limit: "
                    f"at most {EVENTS_PAGE_MAX}) after seq `after`; _meta['{NEXT_PAGE}'] is "
                    "the next page's URI when there is one.",
                    mime_type=JSON_LINES,
                ),
            ]
        )

    async def read(
        self, ctx: ServerRequestContext[Any], params: ReadResourceRequestParams
    ) -> ReadResourceResult:
        from mcp import types

        uri = str(params.uri)
        run_id, events, after, limit = _checked(parse_uri, uri)
        if not events:
            summary = await _checked_async(self.tools.show(ShowArgs(run_id=run_id)))
            text = msgspec.json.encode(summary).decode()
            return types.ReadResourceResult(
                contents=[types.TextResourceContents(uri=uri, mime_type=JSON, text=text)]
            )
        full, page, more = await _checked_async(
            self.tools.run_events(run_id, after_seq=after, limit=limit)
        )
        text = "".join(encode(event).decode() + "\n" for event in page)
        meta = {NEXT_PAGE: events_uri(full, page[-1].seq)} if more else None
        return types.ReadResourceResult(
            contents=[
                types.TextResourceContents(uri=uri, mime_type=JSON_LINES, text=text, _meta=meta)
            ]
        )

    async def subscribe(
        self, ctx: ServerRequestContext[Any], params: SubscribeRequestParams
    ) -> EmptyResult:
        from mcp import types

        uri = str(params.uri)
        run_id, _, _, _ = _checked(parse_uri, uri)
        await _checked_async(self.tools.show(ShowArgs(run_id=run_id)))  # a run of the log
        sessions = self._sessions.setdefault(uri, [])
        if not any(s is ctx.session for s in sessions):
            sessions.append(ctx.session)
        return types.EmptyResult()

    async def unsubscribe(
        self, ctx: ServerRequestContext[Any], params: UnsubscribeRequestParams
    ) -> EmptyResult:
        from mcp import types

        self._forget(str(params.uri), ctx.session)
        return types.EmptyResult()


def _cursor(cursor: str | None) -> int:
    if cursor is None:
        return 0
    if not cursor.isdigit():
        _invalid(f"not a cursor of this server: {cursor!r}")
    return int(cursor)


def _invalid(message: str) -> Any:
    from mcp.shared.exceptions import MCPError
    from mcp_types import INVALID_PARAMS

    raise MCPError(INVALID_PARAMS, message)


def _checked(parse: Callable[[str], Any], uri: str) -> Any:
    """``parse(uri)``; a bad URI is the protocol's invalid-params error, naming it."""
    try:
        return parse(uri)
    except ConfigError as exc:
        return _invalid(str(exc))


async def _checked_async(pending: Any) -> Any:
    """Await ``pending``; an unknown run is an invalid-params error naming it."""
    try:
        return await pending
    except (ToolError, ConfigError) as exc:
        return _invalid(str(exc))


__all__ = [
    "EVENTS_PAGE",
    "EVENTS_PAGE_MAX",
    "EVENTS_TEMPLATE",
    "LIST_PAGE",
    "NEXT_PAGE",
    "RUN_TEMPLATE",
    "RunResources",
    "events_uri",
    "parse_uri",
    "run_uri",
]
