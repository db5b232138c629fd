"""Ollama's native chat API over aiohttp."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..core._client import Completion, SampleRequest
from ._common import ProviderClient

if TYPE_CHECKING:
    import aiohttp

DEFAULT_OLLAMA_URL = "http://127.0.0.1:11434"


class OllamaClient(ProviderClient):
    """A model served by Ollama: ``POST /api/chat`` with ``"stream": false``.

    The temperature, the cap (``num_predict``) and the seed go in ``options``; Ollama honours
    all three, so answers are reproducible. No key is involved. One aiohttp session per client,
    opened at the first request; close it with :meth:`aclose` or ``async with``.

    >>> client = OllamaClient("llama3.1:8b")
    >>> client.model, client.describe()["base_url"]
    ('ollama:llama3.1:8b', 'http://127.0.0.1:11434')
    """

    provider = "ollama"
    package = "aiohttp"

    def __init__(
        self, model: str, *, base_url: str = DEFAULT_OLLAMA_URL, timeout: float = 60.0
    ) -> None:
        name, seconds = self._checked(model, timeout)
        super().__init__(name, base_url.rstrip("/"), seconds)
        self._session: aiohttp.ClientSession | None = None

    async def aclose(self) -> None:
        """Close the session, if one was opened."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _open(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
        return self._session

    async def complete(self, request: SampleRequest) -> Completion:
        """Answer one request; every failure is a :class:`maker.ClientError`."""
        payload: dict[str, Any] = {
            "model": self._name,
            "messages": [
                {"role": "system", "content": request.system},
                {"role": "user", "content": request.user},
            ],
            "stream": False,
            "options": {
                "temperature": request.temperature,
                "num_predict": request.max_tokens,
                "seed": request.seed,
            },
        }
        status, headers, raw = await self._post("/api/chat", payload)
        return self._completion(self._json(status, headers, raw), request.temperature)

    async def probe(self) -> None:
        """Check that the model is reachable and known, without generating (see
        :class:`maker.Probe`): ``POST /api/show``, which reads the model's metadata and loads
        nothing.

        A model Ollama has not pulled is a ``bad_request`` whose message says it was not found.
        """
        status, headers, raw = await self._post("/api/show", {"model": self._name})
        # Ollama answers an unknown model with a JSON error; a path it lacks (a wrong base URL)
        # gets a plain-text 404, which says nothing about the model.
        if status == 404 and _has_json_error(raw):
            raise self._unknown_model(_error_text(raw))
        data = self._json(status, headers, raw)
        if not isinstance(data, dict):
            raise self._bad_response(f"expected an object, got {type(data).__name__}")

    async def _post(self, path: str, payload: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body of ``POST path``; a transport failure is a ClientError."""
        import aiohttp

        session = self._open()
        try:
            async with session.post(self._base_url + path, json=payload) as response:
                return response.status, dict(response.headers), await response.read()
        except TimeoutError as exc:  # aiohttp's timeouts are TimeoutErrors too
            raise self._timeout_error() from exc
        except aiohttp.ClientError as exc:
            raise self._connection_error(exc) from exc

    def _json(self, status: int, headers: dict[str, str], raw: bytes) -> object:
        """The decoded body of a 200; any other status is a ClientError."""
        if status != 200:
            raise self._status_error(status, _error_text(raw), headers)
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise self._bad_response(f"{type(exc).__name__}: {exc}") from exc

    def _completion(self, data: object, temperature: float) -> Completion:
        message = data.get("message") if isinstance(data, dict) else None
        text = message.get("content") if isinstance(message, dict) else None
        if not isinstance(data, dict) or not isinstance(text, str):
            raise self._bad_response("no message content")
        served = data.get("model")
        # Ollama leaves prompt_eval_count out when the whole prompt came from its cache.
        input_tokens = data.get("prompt_eval_count") or 0
        output_tokens = data.get("eval_count") or 0
        if not (isinstance(input_tokens, int) and isinstance(output_tokens, int)):
            raise self._bad_response("token counts are not integers")
        finish = data.get("done_reason") or ("stop" if data.get("done") else "")
        return Completion(
            text=text,
            finish_reason=str(finish),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            model=self._served_as(served),
            temperature_sent=temperature,
        )


def _has_json_error(raw: bytes) -> bool:
    try:
        body = json.loads(raw)
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("error"), str)


def _error_text(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip()
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return json.dumps(body)
