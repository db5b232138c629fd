"""What the provider clients share: their construction, error mapping at the boundary,
Retry-After, key hygiene."""

from __future__ import annotations

import asyncio
import importlib
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, ClassVar, Generic, Literal, NotRequired, Protocol, Self, TypedDict, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ..core._errors import ClientError, ConfigError

_MESSAGE_LIMIT = 300

STATUS_KINDS: dict[int, tuple[str, bool]] = {
    400: ("bad_request", False),
    401: ("auth", False),
    403: ("auth", False),
    404: ("bad_request", False),
    408: ("timeout", True),
    422: ("bad_request", False),
    429: ("rate_limited", True),
    500: ("server_error", True),
    502: ("server_error", True),
    503: ("unavailable", True),
    504: ("server_error", True),
    529: ("overloaded", True),
}
"""HTTP status -> (ClientError kind, retryable). Other 4xx are ``bad_request`` (not retryable),
other 5xx ``server_error`` (retryable), anything else ``bad_response`` (retryable)."""

# Keys that look like provider keys, masked or not (OpenAI echoes "sk-abc*****wxyz" on a 401).
_KEYLIKE = re.compile(r"\b(sk|sk-ant|sk-proj)-[A-Za-z0-9_\-*]{6,}")


def classify_status(status: int) -> tuple[str, bool]:
    """The error kind of an HTTP status, and whether the same request may succeed later.

    >>> classify_status(429), classify_status(529), classify_status(418)
    (('rate_limited', True), ('overloaded', True), ('bad_request', False))
    """
    known = STATUS_KINDS.get(status)
    if known is not None:
        return known
    if 400 <= status < 500:
        return ("bad_request", False)
    if 500 <= status < 600:
        return ("server_error", True)
    return ("bad_response", True)


def parse_retry_after(
    headers: Mapping[str, str] | None, *, now: float | None = None
) -> float | None:
    """The wait a response asks for, in seconds: ``retry-after-ms``, else ``Retry-After`` as
    seconds or as an HTTP date. None when there is none or it cannot be read.

    >>> parse_retry_after({"retry-after": "2.5"})
    2.5
    >>> parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"})
    1.5
    >>> parse_retry_after({}) is None
    True
    """
    if headers is None:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    millis = lowered.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        value = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, value)
    return value if math.isfinite(value) and value >= 0 else None


def should_retry_header(headers: Mapping[str, str] | None) -> bool | None:
    """The server's explicit ``x-should-retry: true|false``, which both SDKs honour too."""
    if headers is None:
        return None
    for key, value in headers.items():
        if key.lower() == "x-should-retry":
            if value == "true":
                return True
            if value == "false":
                return False
    return None


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` without any of ``secrets``, nor anything that looks like a provider key."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return _KEYLIKE.sub("[redacted]", text)


def public_url(url: str) -> str:
    """``url`` without user info, query or fragment: safe to record.

    >>> public_url("https://user:pw@host:8443/v1/?key=x")
    'https://host:8443/v1/'
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def check_model_name(name: object, provider: str) -> str:
    """The model name, or ConfigError("model") when it is not a non-empty string."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("model", f"{provider} needs a model name, e.g. '{provider}:NAME'")
    return name


def check_timeout(timeout: object) -> float:
    """The timeout in seconds, or ConfigError("timeout") when it is not a positive number."""
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise ConfigError("timeout", f"must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


KEY_VARIABLES = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
"""The environment variable each provider's key comes from when none is passed."""


def resolve_key(given: str | None, provider: str, title: str, hint: str = "") -> str:
    """The key passed, else the provider's variable's; ConfigError("api_key") when neither is
    set. ``title`` names the provider in the message, ``hint`` is appended to it."""
    variable = KEY_VARIABLES[provider]
    key = given if given is not None else os.environ.get(variable)
    if not key:
        raise ConfigError("api_key", f"no {title} API key: set {variable} or pass api_key{hint}")
    return key


def missing_sdk(provider: str, package: str) -> ConfigError:
    """The error for a provider whose SDK is not installed, with the one-line fix."""
    return ConfigError(
        "model", f"{provider} models need the {package} package: pip install 'maker[{provider}]'"
    )


class ProviderClient:
    """The parts of a provider client that do not depend on its SDK."""

    provider: ClassVar[str]
    package: ClassVar[str]
    """The package the client cannot work without (its SDK, or aiohttp), which the
    ``maker[PROVIDER]`` extra installs."""

    @classmethod
    def _checked(cls, model: object, timeout: object) -> tuple[str, float]:
        """The model name and the timeout, checked, once the client's package is known to be
        installed: ConfigError("model"), ConfigError("timeout"), or the one-line install hint.
        """
        name = check_model_name(model, cls.provider)
        seconds = check_timeout(timeout)
        try:
            importlib.import_module(cls.package)
        except ImportError as exc:
            raise missing_sdk(cls.provider, cls.package) from exc
        return name, seconds

    def __init__(self, name: str, base_url: str, timeout: float) -> None:
        self._name = name
        self._base_url = base_url
        self._timeout = timeout
        self._secrets: tuple[str, ...] = ()

    @property
    def model(self) -> str:
        """The model as recorded in events: ``"PROVIDER:NAME"``."""
        return f"{self.provider}:{self._name}"

    @property
    def name(self) -> str:
        """The provider's own name of the model."""
        return self._name

    def describe(self) -> dict[str, Any]:
        """Provider, model, base URL and timeout. Never a key."""
        return {
            "provider": self.provider,
            "model": self._name,
            "base_url": public_url(self._base_url),
            "timeout": self._timeout,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={self._name!r}, "
            f"base_url={public_url(self._base_url)!r}, timeout={self._timeout!r})"
        )

    async def aclose(self) -> None:
        """Release the connection pool."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _error(
        self,
        message: str,
        *,
        kind: str,
        retryable: bool,
        retry_after: float | None = None,
    ) -> ClientError:
        text = redact(f"{self.provider}: {message}", self._secrets)
        if len(text) > _MESSAGE_LIMIT:
            text = text[: _MESSAGE_LIMIT - 3] + "..."
        return ClientError(text, kind=kind, retryable=retryable, retry_after=retry_after)

    def _status_error(
        self, status: int, detail: str, headers: Mapping[str, str] | None
    ) -> ClientError:
        kind, retryable = classify_status(status)
        override = should_retry_header(headers)
        if override is not None:
            retryable = override
        retry_after = parse_retry_after(headers) if retryable else None
        message = f"HTTP {status}" + (f": {detail}" if detail else "")
        return self._error(message, kind=kind, retryable=retryable, retry_after=retry_after)

    def _timeout_error(self) -> ClientError:
        return self._error(
            f"no response within the {self._timeout:g} s timeout", kind="timeout", retryable=True
        )

    def _connection_error(self, exc: BaseException) -> ClientError:
        cause = exc.__cause__ or exc
        detail = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
        return self._error(f"connection failed ({detail})", kind="connection", retryable=True)

    def _sdk_error(
        self, sdk: Any, exc: Exception, api_message: Callable[[Any], str]
    ) -> ClientError:
        """Map an error of the openai or anthropic SDK, which share one exception hierarchy.

        ``sdk`` is the SDK module; ``api_message`` reads the server's message off a status error.
        """
        if isinstance(exc, sdk.APIStatusError):
            return self._status_error(exc.status_code, api_message(exc), exc.response.headers)
        if isinstance(exc, sdk.APITimeoutError) and not _disconnected(exc):
            return self._timeout_error()
        if isinstance(exc, sdk.APITimeoutError):
            return self._connection_error(_disconnected(exc) or exc)
        if isinstance(exc, sdk.APIConnectionError):
            return self._connection_error(exc)
        if isinstance(exc, sdk.APIError):  # e.g. APIResponseValidationError
            return self._bad_response(str(exc.message))
        if isinstance(exc, ValueError):  # the body is not JSON (json.JSONDecodeError)
            return self._bad_response(f"{type(exc).__name__}: {exc}")
        return self._error(f"{type(exc).__name__}: {exc}", kind="error", retryable=False)

    def _unknown_model(self, detail: str) -> ClientError:
        """A probe's 404 that concerns the model: the server does not know it. The kind stays
        the status's own (``bad_request``, not retryable); the message says what is missing.
        """
        kind, retryable = classify_status(404)
        suffix = f": {detail}" if detail else ""
        return self._error(
            f"model {self._name!r} not found (HTTP 404){suffix}", kind=kind, retryable=retryable
        )

    def _bad_response(self, detail: str) -> ClientError:
        return self._error(f"unreadable response: {detail}", kind="bad_response", retryable=True)

    def _served_as(self, served: object) -> str:
        """The model a completion records: the one the server says it served, else ours."""
        return f"{self.provider}:{served}" if isinstance(served, str) and served else self.model


def _disconnected(exc: BaseException) -> BaseException | None:
    """The aiohttp connection error under an SDK's timeout error, if that is what it was.

    The SDKs' aiohttp transport maps every ``aiohttp.ClientConnectionError`` it does not know
    better, a server that closed the connection among them, to httpx's ``ConnectTimeout``, so
    the SDK reports a disconnect as a timeout. The cause chain still holds the truth.
    """
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is None:
        return None
    connection_error: type[BaseException] = aiohttp.ClientConnectionError
    cause = exc.__cause__ or exc.__context__
    seen = 0
    while cause is not None and seen < 8:  # a chain of a few links: guard against a cycle
        if isinstance(cause, connection_error) and not isinstance(cause, TimeoutError):
            return cause
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return None


class SDKArgs(TypedDict):
    """What an official SDK's async client (openai's, anthropic's) is built from."""

    api_key: str
    base_url: str | None
    timeout: float
    max_retries: int
    http_client: NotRequired[Any]


class _AsyncSDKClient(Protocol):
    @property
    def base_url(self) -> object: ...

    async def close(self) -> None: ...


S = TypeVar("S", bound=_AsyncSDKClient)

Transport = Literal["aiohttp", "httpx"]
"""The HTTP transport under an official SDK's client."""

TRANSPORTS: tuple[Transport, ...] = ("aiohttp", "httpx")


def _running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or None outside one (no loop, or another async library)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class SDKClient(ProviderClient, Generic[S]):
    """A provider client over an official SDK: the key from the argument or the provider's
    variable, the SDK's client built by :meth:`_connect`, its connection pool closed by
    :meth:`aclose`. The key is kept only by the SDK's client and in the secrets redacted
    from errors: never in ``describe()`` or ``repr``.

    ``transport="aiohttp"`` (the default where the SDK offers it and aiohttp is installed)
    sends the SDK's requests through aiohttp instead of its own httpx pool: the SDK still
    builds every request, maps every error and applies the timeout, but aiohttp's C parser
    and single-write sends cost the client's process about a fifth less CPU per request, which
    is the floor of a pipelined run's wall time against a fast model. An aiohttp session
    belongs to the event loop it was opened on, so the client opens one per loop it is used
    in (a CLI may use a client in two ``anyio.run`` calls) and :meth:`aclose` closes the
    current loop's. Outside asyncio, or with ``transport="httpx"``, the SDK's own pool serves.
    """

    title: ClassVar[str]
    """The provider's name in messages: "OpenAI"."""
    key_hint: ClassVar[str] = ""
    """Appended to the message of a missing key."""

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None,
        base_url: str | None,
        timeout: float,
        transport: Transport | None = None,
    ) -> None:
        name, seconds = self._checked(model, timeout)
        if transport is not None and transport not in TRANSPORTS:
            raise ConfigError(
                "transport", f"must be one of {', '.join(TRANSPORTS)}, got {transport!r}"
            )
        key = resolve_key(api_key, self.provider, self.title, self.key_hint)
        # The SDK's own retries are off: the engine retries, so that every attempt is recorded.
        self._args = SDKArgs(api_key=key, base_url=base_url, timeout=seconds, max_retries=0)
        self._httpx = self._connect(self._args)
        self._aiohttp_class = self._aiohttp_client_class() if transport != "httpx" else None
        if transport == "aiohttp" and self._aiohttp_class is None:
            raise ConfigError(
                "transport",
                f"the aiohttp transport needs aiohttp and a {self.package} SDK that offers it: "
                f"pip install 'maker[{self.provider}]'",
            )
        self._on_loop: tuple[asyncio.AbstractEventLoop, S] | None = None
        super().__init__(name, str(self._httpx.base_url), seconds)
        self._secrets = (key,)

    def _aiohttp_client_class(self) -> Callable[[], Any] | None:
        """The SDK's aiohttp-backed HTTP client class, or None where it cannot serve."""
        try:
            importlib.import_module("aiohttp")
        except ImportError:
            return None
        sdk = importlib.import_module(self.package)
        found: Callable[[], Any] | None = getattr(sdk, "DefaultAioHttpClient", None)
        return found

    @property
    def transport(self) -> Transport:
        """The transport requests take inside an asyncio loop."""
        return "aiohttp" if self._aiohttp_class is not None else "httpx"

    @property
    def _client(self) -> S:
        """The SDK's client for the running event loop."""
        loop = _running_asyncio_loop()
        if self._aiohttp_class is None or loop is None:
            return self._httpx
        here = self._on_loop
        if here is None or here[0] is not loop:
            # A loop that ended took its session's connections with it; nothing to close there.
            args = SDKArgs(**self._args, http_client=self._aiohttp_class())
            here = self._on_loop = (loop, self._connect(args))
        return here[1]

    def describe(self) -> dict[str, Any]:
        """Provider, model, base URL, timeout and transport. Never a key."""
        return {**super().describe(), "transport": self.transport}

    def _connect(self, args: SDKArgs) -> S:
        """The SDK's async client, built from ``args`` (the SDK is installed by now)."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Close the SDK's connection pools: the running loop's aiohttp session and httpx's."""
        here, self._on_loop = self._on_loop, None
        if here is not None and here[0] is _running_asyncio_loop():
            await here[1].close()
        await self._httpx.close()
