"""From a model spec (``"openai:gpt-4.1-mini"``) to a client."""

from __future__ import annotations

from ..core._client import Client
from ..core._errors import ConfigError
from ._anthropic import AnthropicClient
from ._common import Transport
from ._ollama import DEFAULT_OLLAMA_URL, OllamaClient
from ._openai import OpenAIClient
from ._sim import SimConfig, SimulatedModel

PROVIDERS = ("anthropic", "ollama", "openai")
"""The providers a spec may name, besides ``sim``."""

_USAGE = "use sim, openai:NAME, anthropic:NAME or ollama:NAME"


def make_client(
    spec: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
    sim: SimConfig | None = None,
    transport: Transport | None = None,
) -> Client:
    """The client for a model spec: ``sim``, ``openai:NAME``, ``anthropic:NAME`` or
    ``ollama:NAME``.

    ``base_url`` is the root each SDK expects (``http://HOST:PORT/v1`` for openai,
    ``http://HOST:PORT`` for anthropic and ollama); ``sim`` configures the simulated model;
    ``transport`` picks the HTTP transport under the openai and anthropic SDKs (``"aiohttp"``,
    the default where it is installed, or the SDK's own ``"httpx"``).
    Raises :class:`maker.ConfigError` naming the field: ``model`` for an unknown provider, an
    empty name or a missing SDK (with the ``pip install`` line), ``api_key`` for a missing key.

    >>> make_client("sim").model
    'sim'
    >>> make_client("ollama:llama3.1:8b").model
    'ollama:llama3.1:8b'
    >>> make_client("gemini:pro")
    Traceback (most recent call last):
    ...
    maker.core._errors.ConfigError: model: unknown provider 'gemini'; use sim, openai:NAME, \
anthropic:NAME or ollama:NAME
    """
    if not isinstance(spec, str):
        raise ConfigError("model", f"must be a string, got {spec!r}; {_USAGE}")
    if spec == "sim":
        given = (("base_url", base_url), ("api_key", api_key), ("transport", transport))
        for field, value in given:
            if value is not None:
                raise ConfigError(field, "does not apply to the simulated model")
        return SimulatedModel(sim)
    provider, sep, name = spec.partition(":")
    if not sep:
        raise ConfigError("model", f"unknown model {spec!r}; {_USAGE}")
    if provider not in PROVIDERS:
        raise ConfigError("model", f"unknown provider {provider!r}; {_USAGE}")
    if not name.strip():
        raise ConfigError("model", f"{spec!r} names no model; write {provider}:NAME")
    if sim is not None:
        raise ConfigError("sim", f"a simulated model's config does not apply to {spec!r}")
    if provider == "openai":
        return OpenAIClient(
            name, api_key=api_key, base_url=base_url, timeout=timeout, transport=transport
        )
    if provider == "anthropic":
        return AnthropicClient(
            name, api_key=api_key, base_url=base_url, timeout=timeout, transport=transport
        )
    if transport is not None:
        raise ConfigError("transport", "applies to the openai and anthropic SDKs only")
    if api_key is not None:
        raise ConfigError("api_key", "ollama takes no API key")
    return OllamaClient(name, base_url=base_url or DEFAULT_OLLAMA_URL, timeout=timeout)
