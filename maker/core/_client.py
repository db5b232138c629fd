"""The one small async interface every model client implements."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import msgspec


class SampleRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One request for one sample of one step.

    ``seed`` is derived from the run's seed and the sample id, so a client that can honour it
    (the simulated model, OpenAI's ``seed``) answers reproducibly.
    """

    sample_id: str
    step: int
    model: str
    system: str
    user: str
    temperature: float
    max_tokens: int
    seed: int


class Completion(msgspec.Struct, frozen=True, kw_only=True):
    """What a model returned for one request."""

    text: str
    finish_reason: str
    input_tokens: int
    output_tokens: int
    model: str
    temperature_sent: float | None = None
    """The temperature actually sent: None when the model rejects one and none was sent."""
    response_id: str | None = None
    """The provider's id for the response, when it gives one (recorded in ``sample_received``)."""


@runtime_checkable
class Client(Protocol):
    """A model behind one async call. Raise :class:`maker.ClientError` on transport failure.

    A client that holds something to release (a connection pool) says so with an
    ``async def aclose(self) -> None``; it is not part of this protocol, so that a client of
    your own without one is still a client. The provider clients and the simulated model have
    one; :func:`maker.clients.close_client` closes any client, calling ``aclose`` when there is one.
    """

    @property
    def model(self) -> str:
        """The model name recorded in events, e.g. ``"sim"`` or ``"openai:gpt-4.1-mini"``."""
        ...

    def describe(self) -> dict[str, Any]:
        """Parameters that identify the model's configuration (recorded in ``run_started``).

        Never include secrets.
        """
        ...

    async def complete(self, request: SampleRequest) -> Completion:
        """Answer one request."""
        ...


@runtime_checkable
class ImmediateClient(Protocol):
    """A client that can sometimes answer without awaiting anything: an in-process model.

    Optional beside :class:`Client`: the scheduler calls :meth:`complete_now` when no limit of
    the model is in force, which spares the engine a task per sample. Implement it only if the
    answer is the one :meth:`Client.complete` would give and it never blocks (there is no
    timeout around it).
    """

    def complete_now(self, request: SampleRequest) -> Completion | None:
        """Answer one request at once, or None when it has to wait (then ``complete`` is
        called); raise :class:`maker.ClientError` as ``complete`` would."""
        ...


@runtime_checkable
class Probe(Protocol):
    """A client that can check its model is there without paying for a generation.

    Separate from :class:`Client`, so that a client of your own need not implement it; test for
    it with ``isinstance(client, Probe)``. The provider clients in :mod:`maker.clients` and
    :class:`maker.SimulatedModel` implement it.

    >>> import anyio
    >>> from maker import SimulatedModel
    >>> model = SimulatedModel()
    >>> isinstance(model, Probe), anyio.run(model.probe)
    (True, None)
    """

    async def probe(self) -> None:
        """Check that the model is reachable and known, without generating.

        Raise :class:`maker.ClientError` (with ``kind``, ``retryable`` and ``retry_after``) when
        it is not.
        """
        ...
