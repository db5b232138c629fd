"""What the HTTP servers share: listening with aiohttp, their base URL, and the life of a
server command (SIGTERM stops it as Ctrl-C does).

``maker serve`` and ``maker serve-sim`` listen through :func:`listen`; they and ``maker mcp``
stop on SIGTERM through :func:`cancelled_on_sigterm`.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING

import anyio
import click

if TYPE_CHECKING:
    from aiohttp import web


def base_url(host: str, port: int) -> str:
    """``http://HOST:PORT``, with no trailing slash; an IPv6 host in brackets.

    >>> base_url("127.0.0.1", 8080), base_url("::1", 80)
    ('http://127.0.0.1:8080', 'http://[::1]:80')
    """
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


@asynccontextmanager
async def listen(app: web.Application, host: str, port: int) -> AsyncIterator[int]:
    """Serve ``app`` on ``host:port`` (0: an ephemeral port) for the block; yields the port
    bound. Needs the asyncio event loop (aiohttp).

    A client that disconnects ends its handler at once (``handler_cancellation``), so that a
    client's timeout frees what its request held; leaving the block gives the handlers still
    running two seconds, and is shielded, so that a caller's cancellation does not leave the
    server half stopped.
    """
    from aiohttp import web

    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        yield int(runner.addresses[0][1])
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()


@contextmanager
def cancelled_on_sigterm() -> Iterator[anyio.CancelScope]:
    """A cancel scope that SIGTERM cancels, for the block: a server stopped by its supervisor
    leaves as one stopped by Ctrl-C does, by cancellation, so that what it runs records how it
    ended. Needs the asyncio event loop; on Windows, which has no signal handlers, only Ctrl-C
    stops it.
    """
    with anyio.CancelScope() as scope:
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGTERM, scope.cancel)
        except NotImplementedError:
            yield scope
            return
        try:
            yield scope
        finally:
            loop.remove_signal_handler(signal.SIGTERM)


@contextmanager
def serving(host: str, port: int) -> Iterator[None]:
    """The life of a server command: SIGTERM stops it (see :func:`cancelled_on_sigterm`), and
    an address it cannot listen on is a one-line error rather than a traceback."""
    with cancelled_on_sigterm():
        try:
            yield
        except OSError as exc:
            raise click.ClickException(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from exc
