"""Clients for real model providers, each behind the one :class:`maker.Client` interface.

- :class:`OpenAIClient`: OpenAI's chat completions through the official SDK, or any
  OpenAI-compatible server (vLLM, llama.cpp, LM Studio) through ``base_url``;
- :class:`AnthropicClient`: Anthropic's Messages API through the official SDK;
- :class:`OllamaClient`: Ollama's native chat API over aiohttp;
- :func:`make_client`: the client for a spec such as ``"openai:gpt-4.1-mini"`` or ``"sim"``;
- :func:`make_matcher`: the answer matcher for a spec such as ``"text"``, with the
  ``embedding`` matcher's model loaded from its installed package (:func:`load_embedder`).

The SDKs are optional (``pip install 'maker[providers]'``); a client whose SDK is missing raises
:class:`maker.ConfigError` with the install line when it is built. Every transport failure is a
:class:`maker.ClientError` whose ``kind`` is one of :data:`ERROR_KINDS`, with ``retryable`` and
``retry_after`` set; the SDKs' own retries are off, so the engine sees and records every attempt.
API keys come from the argument or the environment, and appear in no ``describe()``, ``repr``
or error message.

Every client here is also a :class:`maker.Probe`: ``await client.probe()`` checks that the model
is reachable and known by looking it up (``GET /models/{name}``, Ollama's ``POST /api/show``),
which generates nothing and costs no tokens. A model the server does not know is a
``bad_request`` whose message says ``model '...' not found``; a refused key is ``auth``.
"""

from __future__ import annotations

from ._anthropic import AnthropicClient
from ._closing import Closable, close_client
from ._common import STATUS_KINDS, TRANSPORTS, Transport, classify_status, parse_retry_after
from ._embedding import EMBEDDING_MODELS, SentenceEmbedder, load_embedder, make_matcher
from ._ollama import DEFAULT_OLLAMA_URL, OllamaClient
from ._openai import OpenAIClient
from ._sim import PRESETS, SimConfig, SimResponse, SimulatedModel
from ._spec import PROVIDERS, make_client

ERROR_KINDS = (
    "auth",
    "bad_request",
    "bad_response",
    "connection",
    "overloaded",
    "rate_limited",
    "server_error",
    "timeout",
    "unavailable",
)
"""Every ``ClientError.kind`` these clients raise (besides ``"error"`` for an SDK surprise)."""

__all__ = [
    "DEFAULT_OLLAMA_URL",
    "EMBEDDING_MODELS",
    "ERROR_KINDS",
    "PRESETS",
    "PROVIDERS",
    "STATUS_KINDS",
    "TRANSPORTS",
    "AnthropicClient",
    "Closable",
    "OllamaClient",
    "OpenAIClient",
    "SentenceEmbedder",
    "SimConfig",
    "SimResponse",
    "SimulatedModel",
    "Transport",
    "classify_status",
    "close_client",
    "load_embedder",
    "make_client",
    "make_matcher",
    "parse_retry_after",
]
