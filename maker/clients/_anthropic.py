"""Anthropic's Messages API through the official SDK."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..core._client import Completion, SampleRequest
from ._common import SDKArgs, SDKClient, Transport

if TYPE_CHECKING:
    import anthropic
    from anthropic.types import Message


def _api_message(exc: anthropic.APIStatusError) -> str:
    message = exc.api_message
    if isinstance(message, str) and message:
        return message
    return exc.message


def _is_api_not_found(exc: anthropic.NotFoundError) -> bool:
    """Whether a 404 carries the API's own ``not_found_error`` body (rather than any server's
    404 for a path it does not have)."""
    body = exc.body
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and error.get("type") == "not_found_error"


class AnthropicClient(SDKClient["anthropic.AsyncAnthropic"]):
    """A model behind Anthropic's Messages API. The system prompt goes in ``system``.

    The key comes from ``api_key`` or ``ANTHROPIC_API_KEY``; ``base_url`` is the root
    (``http://HOST:PORT``). The SDK's own retries are off: the engine retries.

    The finish reason is Anthropic's ``stop_reason``, so a response cut at the cap ends with
    ``"max_tokens"``, which the red-flag rules flag as truncated. The request's seed travels in an
    ``x-maker-seed`` header: the real API ignores it, and serve-sim answers deterministically.

    Temperature: the SDK (2.x) speaks API version 2026-10-21, which rejects ``temperature``,
    ``top_p`` and ``top_k`` outright. So by default none is sent and
    :attr:`~maker.Completion.temperature_sent` is None. With ``send_temperature=True`` (a proxy
    or server that accepts it), it is sent, and dropped for good after the first rejection.

    >>> client = AnthropicClient("claude-haiku-4-5", api_key="sk-ant-example")
    >>> client.model, client.describe()["provider"]
    ('anthropic:claude-haiku-4-5', 'anthropic')
    """

    provider = "anthropic"
    package = "anthropic"
    title = "Anthropic"

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 60.0,
        send_temperature: bool = False,
        transport: Transport | None = None,
    ) -> None:
        super().__init__(
            model, api_key=api_key, base_url=base_url, timeout=timeout, transport=transport
        )
        self._send_temperature = send_temperature

    def _connect(self, args: SDKArgs) -> anthropic.AsyncAnthropic:
        import anthropic

        return anthropic.AsyncAnthropic(**args)

    async def probe(self) -> None:
        """Check that the model is reachable and known, without generating (see
        :class:`maker.Probe`): ``GET /v1/models/{name}``, which costs no tokens.

        A model the API does not know is a ``bad_request`` whose message says it was not found;
        a refused key is ``auth``.
        """
        import anthropic
        from anthropic.types import ModelInfo

        try:
            info = await self._client.models.retrieve(self._name)
        except anthropic.NotFoundError as exc:
            if _is_api_not_found(exc):
                raise self._unknown_model(_api_message(exc)) from exc
            # Any other 404 means the path itself is missing (a wrong base URL), which says
            # nothing about the model.
            raise self._sdk_error(anthropic, exc, _api_message) from exc
        except (anthropic.AnthropicError, ValueError) as exc:
            raise self._sdk_error(anthropic, exc, _api_message) from exc
        # The SDK does not validate bodies: a proxy may send anything.
        if not isinstance(info, ModelInfo):
            raise self._bad_response(f"expected a model, got {type(info).__name__}")

    async def complete(self, request: SampleRequest) -> Completion:
        """Answer one request; every failure is a :class:`maker.ClientError`."""
        import anthropic

        for _ in range(2):
            send_temperature = self._send_temperature
            # The SDK has no temperature argument any more; the body still can carry one.
            extra_body: dict[str, Any] | None = (
                {"temperature": request.temperature} if send_temperature else None
            )
            try:
                message = await self._client.messages.create(
                    model=self._name,
                    system=request.system,
                    messages=[{"role": "user", "content": request.user}],
                    max_tokens=request.max_tokens,
                    extra_headers={"x-maker-seed": str(request.seed)},
                    extra_body=extra_body,
                )
            except anthropic.BadRequestError as exc:
                if send_temperature and "temperature" in _api_message(exc).lower():
                    self._send_temperature = False
                    continue
                raise self._sdk_error(anthropic, exc, _api_message) from exc
            except (anthropic.AnthropicError, ValueError) as exc:
                raise self._sdk_error(anthropic, exc, _api_message) from exc
            temperature = request.temperature if send_temperature else None
            return self._completion(message, temperature)
        raise self._error(
            "the server kept rejecting the temperature", kind="bad_request", retryable=False
        )

    def _completion(self, message: Message, temperature: float | None) -> Completion:
        from anthropic.types import Message, TextBlock

        # The SDK does not validate bodies: a proxy may send anything, or text.
        if not isinstance(message, Message):
            raise self._bad_response(f"expected a message, got {type(message).__name__}")
        try:
            text = "".join(block.text for block in message.content if isinstance(block, TextBlock))
            finish = str(message.stop_reason or "")
            input_tokens = int(message.usage.input_tokens)
            output_tokens = int(message.usage.output_tokens)
            served = message.model
            response_id = message.id
        except (AttributeError, TypeError, ValueError) as exc:
            raise self._bad_response(f"{type(exc).__name__}: {exc}") from exc
        return Completion(
            text=text,
            finish_reason=finish,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            model=self._served_as(served),
            temperature_sent=temperature,
            response_id=response_id if isinstance(response_id, str) and response_id else None,
        )
