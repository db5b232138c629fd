"""OpenAI chat completions through the official SDK; also any OpenAI-compatible server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from ..core._client import Completion, SampleRequest
from ._common import SDKArgs, SDKClient, Transport

if TYPE_CHECKING:
    import openai


class _Message(msgspec.Struct):
    content: Any = None


class _Choice(msgspec.Struct):
    message: _Message
    finish_reason: Any = None


class _Usage(msgspec.Struct):
    prompt_tokens: Any = 0
    completion_tokens: Any = 0


class _ChatCompletion(msgspec.Struct):
    """What maker reads of a chat completion; a compatible server's other fields are ignored.

    The fields are loosely typed because a server that is not OpenAI's may send anything:
    each is checked where it is read, so that a wrong one is a ``bad_response`` naming it.
    """

    choices: list[_Choice]
    id: Any = None
    model: Any = None
    usage: _Usage | None = None


_decode_completion = msgspec.json.Decoder(_ChatCompletion).decode


def _api_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        message = body.get("message")
        if isinstance(message, str):
            return message
    return exc.message


def _rejects_temperature(exc: openai.BadRequestError) -> bool:
    # OpenAI names the parameter (reasoning models: "Unsupported parameter: 'temperature' ..."
    # or "Unsupported value: 'temperature' does not support 0 ..."); compatible servers often
    # only say it in the message.
    return exc.param == "temperature" or "temperature" in _api_message(exc).lower()


def _rejects_max_tokens(exc: openai.BadRequestError) -> bool:
    # Newer OpenAI models answer "Unsupported parameter: 'max_tokens' ... Use
    # 'max_completion_tokens' instead." A cap that is merely too large must not switch.
    message = _api_message(exc)
    return "max_completion_tokens" in message or (
        exc.param == "max_tokens" and exc.code == "unsupported_parameter"
    )


class OpenAIClient(SDKClient["openai.AsyncOpenAI"]):
    """A model behind OpenAI's chat completions API, or any server that speaks it.

    ``base_url`` points at another server (vLLM, llama.cpp's server, LM Studio, serve-sim):
    ``http://HOST:PORT/v1``. The key comes from ``api_key`` or ``OPENAI_API_KEY``; a local
    server takes any non-empty value. The SDK's own retries are off: the engine retries, so that
    every attempt is recorded.

    A model that rejects ``temperature`` gets the request again without it, once; the client
    remembers, and :attr:`~maker.Completion.temperature_sent` is None from then on. A model that
    rejects ``max_tokens`` gets ``max_completion_tokens`` instead, the same way.

    >>> client = OpenAIClient("gpt-4.1-mini", api_key="sk-example", base_url="http://127.0.0.1:9/v1")
    >>> client.model, client.describe()["base_url"]
    ('openai:gpt-4.1-mini', 'http://127.0.0.1:9/v1/')
    >>> "sk-example" in repr(client)
    False
    """

    provider = "openai"
    package = "openai"
    title = "OpenAI"
    key_hint = " (any non-empty value serves a local OpenAI-compatible server)"

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 60.0,
        organization: str | None = None,
        transport: Transport | None = None,
    ) -> None:
        self._organization = organization  # read by _connect
        super().__init__(
            model, api_key=api_key, base_url=base_url, timeout=timeout, transport=transport
        )
        self._send_temperature = True
        self._cap_param = "max_tokens"

    def _connect(self, args: SDKArgs) -> openai.AsyncOpenAI:
        import openai

        return openai.AsyncOpenAI(**args, organization=self._organization)

    async def probe(self) -> None:
        """Check that the model is reachable and known, without generating (see
        :class:`maker.Probe`): ``GET /models/{name}``, which costs no tokens.

        A model the server does not know is a ``bad_request`` whose message says it was not
        found; a refused key is ``auth``. Some OpenAI-compatible servers (vLLM, llama.cpp's
        server) serve the list ``GET /models`` but not one model: after a 404 that does not
        say ``model_not_found``, the list decides.
        """
        import openai
        from openai.types import Model

        try:
            info = await self._client.models.retrieve(self._name)
        except openai.NotFoundError as exc:
            if exc.code == "model_not_found":
                raise self._unknown_model(_api_message(exc)) from exc
            await self._find_in_list(exc)
            return
        except (openai.OpenAIError, ValueError) as exc:
            raise self._sdk_error(openai, exc, _api_message) from exc
        # The SDK does not validate bodies: a server that is not OpenAI's may send anything.
        if not isinstance(info, Model):
            raise self._bad_response(f"expected a model, got {type(info).__name__}")

    async def _find_in_list(self, not_found: openai.NotFoundError) -> None:
        import openai

        try:
            page = await self._client.models.list()
            names = {entry.id for entry in page.data}
        except (openai.OpenAIError, ValueError) as exc:
            # A 404 here too means neither endpoint exists: most likely a wrong base URL, not a
            # missing model, so it is reported as the plain status it is.
            raise self._sdk_error(openai, exc, _api_message) from exc
        except (AttributeError, TypeError) as exc:  # the SDK does not validate: not a list
            raise self._bad_response(f"{type(exc).__name__}: {exc}") from exc
        if self._name not in names:
            detail = f"not among the {len(names)} models the server lists"
            raise self._unknown_model(detail) from not_found

    async def complete(self, request: SampleRequest) -> Completion:
        """Answer one request; every failure is a :class:`maker.ClientError`."""
        import openai

        # At most one retry for temperature and one for max_tokens: three calls in all.
        for _ in range(3):
            send_temperature = self._send_temperature
            cap_param = self._cap_param
            body: dict[str, object] = {
                "model": self._name,
                "messages": [
                    {"role": "system", "content": request.system},
                    {"role": "user", "content": request.user},
                ],
                cap_param: request.max_tokens,
                "seed": request.seed,
            }
            if send_temperature:
                body["temperature"] = request.temperature
            try:
                # The SDK's own POST, with its client, headers, errors and timeout: what
                # chat.completions.create sends, built here, and the body returned as bytes.
                # create() first walks its typed parameters to transform them (a no-op for
                # these plain values), and building the typed ChatCompletion is pydantic's
                # work on fields maker never reads: together about a third of the SDK's CPU
                # per request, the floor of a pipelined run against a fast model.
                raw = await self._client.post("/chat/completions", body=body, cast_to=bytes)
            except openai.BadRequestError as exc:
                if send_temperature and _rejects_temperature(exc):
                    self._send_temperature = False
                    continue
                if cap_param == "max_tokens" and _rejects_max_tokens(exc):
                    self._cap_param = "max_completion_tokens"
                    continue
                raise self._sdk_error(openai, exc, _api_message) from exc
            except (openai.OpenAIError, ValueError) as exc:
                raise self._sdk_error(openai, exc, _api_message) from exc
            temperature = request.temperature if send_temperature else None
            return self._completion(raw, temperature)
        raise self._error(
            "the server kept rejecting the request's parameters",
            kind="bad_request",
            retryable=False,
        )

    def _completion(self, raw: object, temperature: float | None) -> Completion:
        if not isinstance(raw, bytes):
            raise self._bad_response(f"expected a body, got {type(raw).__name__}")
        try:
            response = _decode_completion(raw)
        except msgspec.DecodeError as exc:
            # A body that is not JSON, or not a chat completion: the server may send anything.
            raise self._bad_response(f"{type(exc).__name__}: {exc}") from exc
        if not response.choices:
            raise self._bad_response("the completion has no choices")
        choice = response.choices[0]
        text = choice.message.content
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise self._bad_response("the message content is not text")
        usage = response.usage
        try:
            input_tokens = int(usage.prompt_tokens or 0) if usage is not None else 0
            output_tokens = int(usage.completion_tokens or 0) if usage is not None else 0
        except (TypeError, ValueError) as exc:
            raise self._bad_response(f"usage: {type(exc).__name__}: {exc}") from exc
        finish = choice.finish_reason
        response_id = response.id
        return Completion(
            text=text,
            finish_reason=str(finish) if finish else "",
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            model=self._served_as(response.model),
            temperature_sent=temperature,
            # A compatible server may send no id, or not a string: record only a real one.
            response_id=response_id if isinstance(response_id, str) and response_id else None,
        )
