"""Closing any client: a provider's connection pool, or nothing for a client without one."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import anyio

from ..core._client import Client


@runtime_checkable
class Closable(Protocol):
    """A client with something to release: its connection pool, a session."""

    async def aclose(self) -> None:
        """Release what the client holds. It may be called more than once."""
        ...


async def close_client(client: Client) -> None:
    """Close ``client``: await its ``aclose()`` if it has one, else nothing.

    Shielded from cancellation, so that a run or a server being cancelled still releases its
    clients' connections on the way out.

    >>> import anyio
    >>> from maker.clients import close_client
    >>> class Plain:  # a client of one's own, with nothing to close
    ...     model = "plain"
    >>> anyio.run(close_client, Plain()) is None
    True
    """
    if isinstance(client, Closable):
        with anyio.CancelScope(shield=True):
            await client.aclose()
