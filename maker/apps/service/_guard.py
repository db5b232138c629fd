"""What stands between ``maker serve`` and the network: the bearer token, the Host and Origin
checks, JSON-only bodies, the limits of requests and of the server, and error messages that
quote little of what they reject.

The checks run as aiohttp middlewares, before any handler, in this order: the Host header
(421, against DNS rebinding: a page of ``evil.example`` whose name resolves to 127.0.0.1 sends
``Host: evil.example``), the Origin header (403: a browser names the page that sent a request,
and only a page of the service itself may), the token (401), then the body's type (415). No
response carries ``Access-Control-Allow-Origin``, so a browser lets no other page read one.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ...core._errors import ConfigError
from ...core._policy import Policy
from ...core._pricing import PriceTable
from ...tasks import CHARS_PER_TOKEN

if TYPE_CHECKING:
    from aiohttp import web
    from aiohttp.typedefs import Handler, Middleware

QUOTE_CHARS = 80
"""How much of a rejected value an error message quotes."""

MIN_TOKEN_CHARS = 16
"""The shortest token the service accepts: shorter ones are guessable."""

MAX_PIPELINE = 64
"""The deepest pipeline a request (or an MCP ``run``) may ask for: each step open ahead of the
oldest undecided one has samples in flight."""

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
"""Host names that always reach the service when it listens on loopback."""


@dataclass(frozen=True, kw_only=True)
class ServiceLimits:
    """Bounds of what one request may ask and of what the service holds at once.

    - ``max_steps``: a run's step budget (:meth:`Task.max_steps`) may not exceed this;
    - ``max_samples``: nor may its samples per step (``max_samples``, and ``k`` and
      ``speculative`` with it);
    - ``max_cost_usd``: nor may its worst case cost, when the model's price is known: every
      step drawing all its samples, each with the first step's prompt and ``max_tokens`` of
      output. None: no cost bound;
    - ``max_running``: runs of the service executing at once;
    - ``max_queued``: accepted runs waiting for one of those places; a request beyond both is
      answered 429 with ``Retry-After: retry_after_s``;
    - ``max_body_bytes``: the largest request body (413 beyond).

    >>> ServiceLimits(max_running=0)
    Traceback (most recent call last):
    ...
    maker.core._errors.ConfigError: max_running: must be at least 1, got 0
    """

    max_steps: int = 10_000
    max_samples: int = 100
    max_cost_usd: float | None = 10.0
    max_running: int = 4
    max_queued: int = 16
    max_body_bytes: int = 64 * 1024
    retry_after_s: int = 2

    def __post_init__(self) -> None:
        for name in ("max_steps", "max_samples", "max_running", "max_body_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, f"must be at least 1, got {value!r}")
        for name in ("max_queued", "retry_after_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(name, f"must be >= 0, got {value!r}")
        cost = self.max_cost_usd
        if cost is not None and not (isinstance(cost, int | float) and 0 <= cost < float("inf")):
            raise ConfigError("max_cost_usd", f"must be a finite number >= 0, got {cost!r}")


def worst_cost(
    prices: PriceTable, model: str, *, prompt_chars: int, max_tokens: int, samples: int
) -> float | None:
    """The most ``samples`` samples of ``model`` can cost: each with a prompt of
    ``prompt_chars`` characters and ``max_tokens`` of output. None when the price of ``model``
    is unknown (there is then nothing to bound).

    >>> prices = PriceTable({"m": {"input": 1.0, "output": 10.0}})
    >>> round(worst_cost(prices, "m", prompt_chars=4000, max_tokens=1000, samples=100), 6)
    1.1
    >>> worst_cost(PriceTable({}), "unpriced", prompt_chars=1, max_tokens=1, samples=1) is None
    True
    """
    if not prices.known(model):
        return None
    prompt_tokens = -(-prompt_chars // CHARS_PER_TOKEN)
    return samples * prices.cost(model, prompt_tokens, max_tokens)


def worst_samples(policy: Policy, steps: int) -> int:
    """The most samples a run of ``steps`` steps under ``policy`` may request: every step
    drawing its cap, and with hedging, ``per_step`` hedges beside each step's start (a hedge
    goes only to the step holding up the run, whose start is the one that counts).

    It bounds the starts that count: the samples of speculative starts that a pipelined run
    abandons come on top, at most ``pipeline`` starts' worth for each misspeculation (see
    :attr:`maker.RunResult.misspeculated_samples`), which no figure known before the run bounds.

    >>> from maker.core._policy import Hedge
    >>> worst_samples(Policy(max_samples_per_step=10), 5)
    50
    >>> worst_samples(Policy(max_samples_per_step=10, hedge=Hedge(per_step=2)), 5)
    60
    """
    hedges = 0 if policy.hedge is None else policy.hedge.per_step * steps
    return steps * policy.max_samples_per_step + hedges


def quote(value: object) -> str:
    """``repr(value)``, cut to :data:`QUOTE_CHARS` characters: what an error may echo.

    >>> quote("x" * 200) == repr("x" * 200)[:80] + "..."
    True
    """
    text = repr(value)
    return text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + "..."


def prefix(text: str) -> str:
    """``text`` cut to :data:`QUOTE_CHARS` characters, unquoted (a run id from a path)."""
    return text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + "..."


_QUOTED = re.compile(r"'[^']*'|`[^`]*`|\"[^\"]*\"")


def clip(message: str) -> str:
    """One line, each quoted part (in '', \"\" or ``) and each word cut to
    :data:`QUOTE_CHARS`, and the whole to a few hundred characters: messages of the parsers
    quote what they reject.

    >>> clip("unknown field `" + "a" * 100 + "`") == "unknown field `" + "a" * 79 + "..."
    True
    """
    line = " ".join(message.split())

    def cut(found: re.Match[str]) -> str:
        part = found.group(0)
        return part if len(part) <= QUOTE_CHARS else part[:QUOTE_CHARS] + "..."

    line = _QUOTED.sub(cut, line)
    # Some messages echo a name unquoted (a ConfigError's field): cut any long word too.
    line = " ".join(
        word if len(word) <= QUOTE_CHARS else word[:QUOTE_CHARS] + "..." for word in line.split(" ")
    )
    return line if len(line) <= 4 * QUOTE_CHARS else line[: 4 * QUOTE_CHARS] + "..."


def new_token() -> str:
    """A fresh random token (32 bytes, URL-safe)."""
    return secrets.token_urlsafe(32)


def check_token(token: str) -> str:
    """``token`` if it can serve as one: at least :data:`MIN_TOKEN_CHARS` printable ASCII
    characters without spaces (it travels in a header)."""
    if not re.fullmatch(r"[\x21-\x7e]+", token):
        raise ConfigError("token", "must be printable ASCII without spaces")
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError("token", f"must have at least {MIN_TOKEN_CHARS} characters")
    return token


def read_token_file(path: Path) -> str:
    """The token in ``path``: its text without surrounding whitespace."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("token_file", f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError:
        raise ConfigError("token_file", f"{path} is not UTF-8 text") from None
    try:
        return check_token(text.strip())
    except ConfigError as exc:
        raise ConfigError(
            "token_file", f"{path}: the token {str(exc).split(': ', 1)[-1]}"
        ) from None


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (``localhost`` or a loopback address)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_PORT = re.compile(r"[0-9]{1,5}")


def _split_host(value: str) -> tuple[str, int | None] | None:
    """``(name, port)`` of a Host header (``name``, ``name:port``, ``[v6]:port``); None when
    it is none of those."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
        if not rest:
            return name.lower(), None
        if rest[0] != ":" or not _PORT.fullmatch(rest[1:]):
            return None
        return name.lower(), int(rest[1:])
    name, sep, port = value.rpartition(":")
    if not sep:
        name, port = value, ""
    if not name or ":" in name or (sep and not _PORT.fullmatch(port)):
        return None
    return name.lower().rstrip("."), int(port) if port else None


@dataclass(frozen=True)
class _Allowed:
    """The names a request's Host (and Origin) may carry."""

    bound: frozenset[str]  # with the port the service listens on
    extra: frozenset[tuple[str, int | None]]  # as given: a name alone allows any port

    def admits(self, name: str, port: int | None, local: tuple[str, int] | None) -> bool:
        if local is not None:
            local_ip, local_port = local
            # An IP address is no DNS name to rebind: the address a request reached is fine.
            names = self.bound | {local_ip.lower()}
            if name in names and (port == local_port or (port is None and local_port == 80)):
                return True
        return (name, port) in self.extra or (name, None) in self.extra


def allowed_hosts(host: str | None, extra: Collection[str] = ()) -> _Allowed:
    """The loopback names and ``host`` (unless it is a wildcard such as 0.0.0.0), at the bound
    port, and the ``extra`` names (``name`` for any port, or ``name:port``)."""
    bound = set(LOOPBACK_NAMES)
    if host and host not in ("0.0.0.0", "::", ""):
        bound.add(host.lower().strip("[]").rstrip("."))
    names: set[tuple[str, int | None]] = set()
    for entry in extra:
        split = _split_host(entry.strip())
        if split is None:
            raise ConfigError("allowed_hosts", f"not a host name or host:port: {quote(entry)}")
        names.add(split)
    return _Allowed(frozenset(bound), frozenset(names))


def middlewares(
    token: str | None,
    allowed: _Allowed,
    error: Callable[..., web.Response],
    public: Callable[[str], bool] = lambda path: False,
) -> list[Middleware]:
    """The checks, outermost first, as aiohttp middlewares. ``token`` None: no token asked
    (``--no-auth``); ``error(status, message, headers=None)`` makes the error responses.

    A GET or HEAD of a path ``public`` admits needs no token (the live page's static files,
    which hold no run's data: a browser opening a link cannot send the header); the Host and
    Origin checks still apply."""
    from aiohttp import web
    from yarl import URL

    expected = None if token is None else token.encode()

    def local(request: web.Request) -> tuple[str, int] | None:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if isinstance(sockname, tuple) and len(sockname) >= 2:
            return str(sockname[0]), int(sockname[1])
        return None

    @web.middleware
    async def hosts(request: web.Request, handler: Handler) -> web.StreamResponse:
        where = local(request)
        split = _split_host(request.headers.get("Host", "").strip())
        if split is None or not allowed.admits(*split, where):
            return error(421, f"this service does not answer for Host {quote(request.host)}")
        origin = request.headers.get("Origin")
        if origin is not None:
            try:
                url = URL(origin)
                name, port = (url.host or "").lower().rstrip("."), url.port
                scheme = url.scheme
            except ValueError:
                name, port, scheme = "", None, ""
            if scheme not in ("http", "https") or not allowed.admits(name, port, where):
                return error(403, f"cross-origin requests are refused (Origin {quote(origin)})")
        return await handler(request)

    @web.middleware
    async def bearer(request: web.Request, handler: Handler) -> web.StreamResponse:
        static = request.method in ("GET", "HEAD") and public(request.path)
        if expected is not None and not static:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            # Constant time: how much of a guess matched must not show in the answer's timing.
            ok = hmac.compare_digest(given.strip().encode("utf-8", "replace"), expected)
            if scheme.lower() != "bearer" or not ok:
                return error(
                    401,
                    "a bearer token is required: Authorization: Bearer TOKEN",
                    headers={"WWW-Authenticate": 'Bearer realm="maker"'},
                )
        return await handler(request)

    @web.middleware
    async def json_only(request: web.Request, handler: Handler) -> web.StreamResponse:
        # A page may POST text/plain or a form anywhere without asking first (no preflight);
        # JSON it may not. A request without a body (cancel) needs no type.
        if request.body_exists and request.content_type != "application/json":
            return error(
                415, f"the body must be application/json, got {quote(request.content_type)}"
            )
        return await handler(request)

    return [hosts, bearer, json_only]
