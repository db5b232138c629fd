"""``maker serve-sim``: the simulated model behind HTTP, speaking OpenAI's, Anthropic's and
Ollama's wire formats, with fault injection.

The official SDKs (and the clients in :mod:`maker.clients`) talk to it as they would to the real
services, so that a pipeline, its retries and its limits can be tested offline and reproducibly:

- OpenAI: ``POST /v1/chat/completions`` (base URL ``http://HOST:PORT/v1``);
- Anthropic: ``POST /v1/messages`` (base URL ``http://HOST:PORT``);
- Ollama: ``POST /api/chat`` with ``"stream": false`` (base URL ``http://HOST:PORT``);
- model lookups, which generate nothing (what :meth:`maker.Probe.probe` calls):
  ``GET /v1/models/{model}`` for OpenAI and Anthropic (told apart by the ``anthropic-version``
  header Anthropic's SDK sends) and Ollama's ``POST /api/show``. serve-sim knows every model
  name, so a lookup never answers 404;
- ``GET /sim/stats`` (every request seen, requests in flight) and ``POST /sim/reset``.

Answers come from :meth:`maker.SimulatedModel.respond`. A request's seed is its own when it has
one (OpenAI's ``seed``, Ollama's ``options.seed``, or an ``x-maker-seed`` header in any format);
otherwise it is derived from the server's seed and the request's ordinal. No API key is needed:
``Authorization`` and ``x-api-key`` are accepted, ignored and never recorded.

Fault injection: each request draws, from a generator seeded by the server's seed, whether it
fails (probability ``fault_rate``) and how (uniformly over the enabled kinds, see
:data:`FAULT_KINDS`). Error bodies and status codes follow each provider's format. Model lookups
draw like any request, so that a server that fails its generations fails its probes too.

>>> config = SimServerConfig(sim="ideal", fault_rate=0.1, faults=("rate_limit", "slow"))
>>> config.faults
('rate_limit', 'slow')
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, get_args

import anyio
import click
import msgspec

from ...clients._sim import PRESETS, SimConfig, SimulatedModel, sim_config
from ...core._errors import ConfigError
from ...core._serialise import fields_json
from .._http import base_url, listen, serving
from .._options import listen_options

if TYPE_CHECKING:
    from aiohttp import web

WireFormat = Literal["openai", "anthropic", "ollama"]
"""The three wire formats the server speaks."""

FaultKind = Literal[
    "rate_limit",
    "server_error",
    "unavailable",
    "overloaded",
    "slow",
    "malformed",
    "disconnect",
    "late",
]
"""One kind of injected fault."""

FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
"""Every fault kind, in a fixed order (the draw picks an index into the enabled ones):

- ``rate_limit``: 429 with a ``Retry-After`` header (``retry_after_s``) and the provider's body;
- ``server_error``: 500;
- ``unavailable``: 503;
- ``overloaded``: 529 (Anthropic's ``overloaded_error``; the same status in every format);
- ``slow``: the answer comes after ``slow_s`` seconds (150 by default, longer than maker's
  default 120 s timeout of a call, so that the client times out rather than waits);
- ``malformed``: status 200 with a body that is not valid JSON (a response cut in half);
- ``disconnect``: the connection is closed without a response;
- ``late``: a straggler: the answer it would have given, correct as usual, after ``late_s``
  seconds (30 by default) instead of its latency. Set ``late_s`` below the client's timeout of
  a call, or the straggler becomes a timeout. Not enabled by default (see
  :data:`DEFAULT_FAULTS`): name it to get it.
"""

DEFAULT_FAULTS: tuple[str, ...] = tuple(kind for kind in FAULT_KINDS if kind != "late")
"""The fault kinds a server spreads its faults over unless told otherwise: every kind but
``late``, which is not a failure but a delay, and came after the others; a server configured
as before draws exactly the faults it drew before."""

ANTHROPIC_SAMPLING_CUTOFF = "2026-10-21"
"""From this ``anthropic-version`` on, the Messages API rejects temperature, top_p and top_k."""

_DEFAULT_MAX_TOKENS = 16384
_REASONING_PREFIXES = ("o1", "reasoning")


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


DEFAULT_SLOW_S = 150.0
"""A ``slow`` fault's delay by default: beyond maker's default timeout of a call (120 s), so a
client with the default times out, as the fault means it to. Set ``slow_s`` below your client's
timeout to test slow answers that do arrive instead."""

DEFAULT_LATE_S = 30.0
"""A ``late`` fault's delay by default: a straggler that answers well within maker's default
timeout of a call (120 s), long enough that a run which waits for it shows."""


@dataclass(frozen=True, kw_only=True)
class SimServerConfig:
    """How a serve-sim server behaves. Frozen, keyword-only, validated on construction.

    - ``sim``: the simulated model's statistics, a :class:`~maker.SimConfig` or a preset name
      (see :data:`maker.PRESETS`);
    - ``p``: overrides the model's ``p`` when given;
    - ``latency_ms``: overrides the model's median latency when given (the server sleeps it);
    - ``fault_rate``: probability that a request gets an injected fault;
    - ``faults``: the enabled fault kinds (:data:`DEFAULT_FAULTS` by default: every kind of
      :data:`FAULT_KINDS` but ``late``);
    - ``retry_after_s``: the ``Retry-After`` of injected 429s, in seconds;
    - ``slow_s``: how long a ``slow`` fault delays its answer (:data:`DEFAULT_SLOW_S`);
    - ``late_s``: how long a ``late`` fault delays its (correct as usual) answer, instead of
      its latency (:data:`DEFAULT_LATE_S`); it must be below the client's timeout of a call for
      the request to be a straggler rather than a timeout;
    - ``seed``: seeds the fault draws and the seeds of requests that bring none;
    - ``keep_requests``: how many of the latest requests the statistics list one by one (the
      counts cover all), so that a million-step run does not hold millions of records.

    >>> SimServerConfig(fault_rate=0.1, faults=("rate_limit", "disconnect")).faults
    ('rate_limit', 'disconnect')
    >>> SimServerConfig(faults=("bogus",))
    Traceback (most recent call last):
    ...
    maker.core._errors.ConfigError: faults: unknown fault kind 'bogus'; known kinds: rate_limit, \
server_error, unavailable, overloaded, slow, malformed, disconnect, late
    """

    sim: SimConfig | str = "paper"
    p: float | None = None
    latency_ms: float | None = None
    fault_rate: float = 0.0
    faults: tuple[str, ...] = DEFAULT_FAULTS
    retry_after_s: float = 1.0
    slow_s: float = DEFAULT_SLOW_S
    late_s: float = DEFAULT_LATE_S
    seed: int = 0
    keep_requests: int = 100_000

    def __post_init__(self) -> None:
        if isinstance(self.sim, str):
            if self.sim not in PRESETS:
                known = ", ".join(sorted(PRESETS))
                raise ConfigError("sim", f"unknown preset {self.sim!r}; known: {known}")
        elif not isinstance(self.sim, SimConfig):
            raise ConfigError("sim", f"must be a SimConfig or a preset name, got {self.sim!r}")
        if self.p is not None and not (_finite(self.p) and 0.0 <= self.p <= 1.0):
            raise ConfigError("p", f"must be between 0 and 1, got {self.p!r}")
        if self.latency_ms is not None and not (_finite(self.latency_ms) and self.latency_ms >= 0):
            raise ConfigError("latency_ms", f"must be a number >= 0, got {self.latency_ms!r}")
        if not (_finite(self.fault_rate) and 0.0 <= self.fault_rate <= 1.0):
            raise ConfigError("fault_rate", f"must be between 0 and 1, got {self.fault_rate!r}")
        object.__setattr__(self, "faults", _parse_faults(self.faults))
        if self.fault_rate > 0 and not self.faults:
            raise ConfigError("faults", "a fault rate above 0 needs at least one fault kind")
        if not (_finite(self.retry_after_s) and self.retry_after_s >= 0):
            raise ConfigError("retry_after_s", f"must be a number >= 0, got {self.retry_after_s!r}")
        if not (_finite(self.slow_s) and self.slow_s > 0):
            raise ConfigError("slow_s", f"must be a number > 0, got {self.slow_s!r}")
        if not (_finite(self.late_s) and self.late_s > 0):
            raise ConfigError("late_s", f"must be a number > 0, got {self.late_s!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError("seed", f"must be an integer, got {self.seed!r}")
        if (
            not isinstance(self.keep_requests, int)
            or isinstance(self.keep_requests, bool)
            or self.keep_requests < 0
        ):
            raise ConfigError(
                "keep_requests", f"must be an integer >= 0, got {self.keep_requests!r}"
            )
        # Validates p and latency_ms against the model's own rules too (e.g. p with hard_p).
        self.sim_config()

    def sim_config(self) -> SimConfig:
        """The simulated model's configuration, with the overrides applied."""
        return sim_config(self.sim, p=self.p, latency_ms=self.latency_ms)

    def describe(self) -> dict[str, Any]:
        """The configuration as JSON (served in ``/sim/stats``): its fields, ``sim`` a preset's
        name or the model's statistics, ``faults`` a list."""
        # Through JSON rather than to_builtins, which would keep the faults a tuple.
        out: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(self))
        return out


def _parse_faults(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        # Iterating a string would check its letters; say what was meant instead.
        raise ConfigError("faults", f"must be a tuple of fault kind names, e.g. ({value!r},)")
    if not isinstance(value, tuple | list | frozenset | set):
        raise ConfigError("faults", f"must be a tuple of fault kind names, got {value!r}")
    items: list[object] = list(value)
    known = ", ".join(FAULT_KINDS)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str) or item not in FAULT_KINDS:
            raise ConfigError("faults", f"unknown fault kind {item!r}; known kinds: {known}")
        # A kind named twice would be drawn twice as often; the spread is meant to be uniform.
        if item not in out:
            out.append(item)
    if isinstance(value, set | frozenset):
        out.sort(key=FAULT_KINDS.index)  # sets have no order; the draw needs one
    return tuple(out)


@dataclass(frozen=True, kw_only=True)
class SimRequest:
    """One request the server received.

    ``arrived`` and ``finished`` come from the server's clock; ``status`` is the HTTP status
    sent, or None when no response was sent (an injected disconnect, or the client left first).
    ``seed`` is the seed the answer was drawn with (None when no answer was drawn);
    ``temperature`` is the temperature the request carried, if any. ``probe`` is True for a
    model lookup (``GET /v1/models/{model}``, ``POST /api/show``), which generates nothing.
    """

    index: int
    arrived: float
    format: WireFormat
    model: str
    fault: str | None
    status: int | None = None
    seed: int | None = None
    temperature: float | None = None
    finished: float | None = None
    probe: bool = False

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-compatible builtins."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out


@dataclass(frozen=True, kw_only=True)
class SimStats:
    """A snapshot of what a server saw since it started (or was reset).

    ``requests`` are the most recent requests, oldest first: all of them unless there were more
    than the config's ``keep_requests``. The counts cover every request.
    """

    total: int
    in_flight: int
    max_in_flight: int
    fault_counts: dict[str, int]
    status_counts: dict[int | None, int]
    requests: tuple[SimRequest, ...]

    def faults(self) -> Counter[str]:
        """How many requests got each fault kind."""
        return Counter(self.fault_counts)

    def statuses(self) -> Counter[int | None]:
        """How many finished requests ended with each status (None: no response was sent)."""
        return Counter(self.status_counts)

    def to_json(self) -> dict[str, Any]:
        """The snapshot as JSON-compatible builtins (what ``GET /sim/stats`` serves): the
        fields, the counters as ``faults`` (sorted by kind) and ``statuses`` (keyed by the
        status as a string, ``"none"`` for no response, in status order)."""
        statuses = sorted(self.status_counts.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))
        return fields_json(
            self,
            rename={"fault_counts": "faults", "status_counts": "statuses"},
            values={
                "fault_counts": dict(sorted(self.fault_counts.items())),
                "status_counts": {("none" if k is None else str(k)): n for k, n in statuses},
            },
        )


class _Record:
    """A request being served; mutable until it finishes, then frozen into :class:`SimRequest`."""

    __slots__ = (
        "arrived",
        "fault",
        "finished",
        "fmt",
        "generation",
        "index",
        "model",
        "probe",
        "seed",
        "status",
        "temp",
    )

    def __init__(self, index: int, arrived: float, fmt: WireFormat, fault: str | None) -> None:
        self.index = index
        self.arrived = arrived
        self.fmt: WireFormat = fmt
        self.fault = fault
        self.model = ""
        self.generation = 0
        self.status: int | None = None
        self.seed: int | None = None
        self.temp: float | None = None
        self.finished: float | None = None
        self.probe = False

    def freeze(self) -> SimRequest:
        return SimRequest(
            index=self.index,
            arrived=self.arrived,
            format=self.fmt,
            model=self.model,
            fault=self.fault,
            status=self.status,
            seed=self.seed,
            temperature=self.temp,
            finished=self.finished,
            probe=self.probe,
        )


class _Reject(Exception):
    """A request the (simulated) provider refuses: answered with the provider's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code


class _Parsed:
    """A model request, read out of any of the three formats."""

    __slots__ = ("max_tokens", "model", "seed", "system", "temperature", "user")

    def __init__(
        self,
        *,
        model: str,
        system: str,
        user: str,
        max_tokens: int,
        temperature: float | None,
        seed: int | None,
    ) -> None:
        self.model = model
        self.system = system
        self.user = user
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.seed = seed


class _SimState:
    """Everything one server holds: its config, model, fault generator and statistics."""

    def __init__(self, config: SimServerConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        self.model = SimulatedModel(config.sim_config(), name="serve-sim")
        self.in_flight = 0
        self.max_in_flight = 0
        self.stopping = asyncio.Event()
        self.records: deque[_Record] = deque(maxlen=config.keep_requests)
        self.generation = 0
        self.total = 0
        self.fault_counts: Counter[str] = Counter()
        self.status_counts: Counter[int | None] = Counter()
        self.rng = random.Random()
        self._changed = asyncio.Event()
        self.reset()

    def reset(self) -> None:
        # The fault generator and the request ordinal restart too, so that a reset server
        # behaves exactly like a fresh one from here on.
        self.records = deque(maxlen=self.config.keep_requests)
        self.generation += 1
        self.total = 0
        self.fault_counts = Counter()
        self.status_counts = Counter()
        self.rng = random.Random(f"serve-sim:faults:{self.config.seed}")
        self.max_in_flight = self.in_flight
        self.notify()

    def arrive(self, fmt: WireFormat) -> _Record:
        """Count a new request in; draw its fault."""
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        record = _Record(self.total, self.clock(), fmt, self.draw_fault())
        record.generation = self.generation
        self.total += 1
        if record.fault is not None:
            self.fault_counts[record.fault] += 1
        self.records.append(record)
        self.notify()
        return record

    def leave(self, record: _Record, status: int | None) -> None:
        """Count a request out, with the status it got (None: no response)."""
        self.in_flight -= 1
        record.status = status
        record.finished = self.clock()
        # A request that arrived before a reset is not counted after it.
        if record.generation == self.generation:
            self.status_counts[status] += 1
        self.notify()

    def notify(self) -> None:
        """Wake every :meth:`wait_until`: the statistics changed."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, predicate: Callable[[SimStats], bool]) -> SimStats:
        while True:
            changed = self._changed
            stats = self.stats()
            if predicate(stats):
                return stats
            await changed.wait()

    def stats(self) -> SimStats:
        return SimStats(
            requests=tuple(r.freeze() for r in self.records),
            total=self.total,
            in_flight=self.in_flight,
            max_in_flight=self.max_in_flight,
            fault_counts=dict(self.fault_counts),
            status_counts=dict(self.status_counts),
        )

    def draw_fault(self) -> str | None:
        cfg = self.config
        if cfg.fault_rate <= 0 or not cfg.faults:
            return None
        if self.rng.random() >= cfg.fault_rate:
            return None
        return cfg.faults[self.rng.randrange(len(cfg.faults))]

    def derived_seed(self, index: int) -> int:
        digest = hashlib.blake2b(
            f"serve-sim:{self.config.seed}:{index}".encode(), digest_size=8
        ).digest()
        return int.from_bytes(digest, "big") >> 1

    async def sleep(self, seconds: float) -> bool:
        """Sleep, unless the server stops first; return whether the whole sleep happened."""
        if seconds <= 0:
            return not self.stopping.is_set()
        with suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)
        return not self.stopping.is_set()


# --- wire formats ---------------------------------------------------------------------------


def _text_of(content: object, where: str) -> str:
    """The text of a message's content: a string, or a list of text blocks / parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text":
                text = block.get("text")
                if isinstance(text, str):
                    parts.append(text)
                    continue
            raise _Reject(400, f"{where}: only text content is supported by serve-sim")
        return "\n".join(parts)
    raise _Reject(400, f"{where}: content must be a string or a list of text blocks")


def _model_of(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _Reject(400, "model: a model name is required", param="model")
    return model


def _int_or_none(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Reject(400, f"{name}: must be an integer", param=name)
    return value


def _temperature_of(value: object) -> float | None:
    if value is None:
        return None
    if not _finite(value):
        raise _Reject(400, "temperature: must be a number", param="temperature")
    assert isinstance(value, int | float)
    return float(value)


def _chat_messages(body: dict[str, Any], *, system_roles: tuple[str, ...]) -> tuple[str, str]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Reject(400, "messages: a non-empty list is required", param="messages")
    system: list[str] = []
    user: list[str] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _Reject(400, f"messages[{i}]: must be an object", param="messages")
        role = message.get("role")
        text = _text_of(message.get("content"), f"messages[{i}].content")
        if role in system_roles:
            system.append(text)
        elif role == "user":
            user.append(text)
        elif role != "assistant":
            raise _Reject(400, f"messages[{i}].role: unknown role {role!r}", param="messages")
    return "\n".join(system), "\n".join(user)


def _is_reasoning(model: str) -> bool:
    return model.startswith(_REASONING_PREFIXES)


def _parse_openai(body: dict[str, Any]) -> _Parsed:
    model = _model_of(body)
    if body.get("stream"):
        raise _Reject(400, "stream: serve-sim answers only with stream false", param="stream")
    system, user = _chat_messages(body, system_roles=("system", "developer"))
    cap = _int_or_none(body.get("max_completion_tokens"), "max_completion_tokens")
    if cap is None:
        cap = _int_or_none(body.get("max_tokens"), "max_tokens")
    temperature = _temperature_of(body.get("temperature"))
    if "temperature" in body and _is_reasoning(model):
        # The message, type, param and code are what OpenAI answers for its reasoning models.
        raise _Reject(
            400,
            "Unsupported parameter: 'temperature' is not supported with this model.",
            param="temperature",
            code="unsupported_parameter",
        )
    return _Parsed(
        model=model,
        system=system,
        user=user,
        max_tokens=_DEFAULT_MAX_TOKENS if cap is None else cap,
        temperature=temperature,
        seed=_int_or_none(body.get("seed"), "seed"),
    )


def _parse_anthropic(body: dict[str, Any], version: str) -> _Parsed:
    model = _model_of(body)
    if body.get("stream"):
        raise _Reject(400, "stream: serve-sim answers only with stream false")
    cap = _int_or_none(body.get("max_tokens"), "max_tokens")
    if cap is None:
        raise _Reject(400, "max_tokens: Field required")
    raw_system = body.get("system")
    system = "" if raw_system is None else _text_of(raw_system, "system")
    # The Messages API has no system role: a "system" message is rejected as an unknown role.
    _, user = _chat_messages(body, system_roles=())
    temperature = _temperature_of(body.get("temperature"))
    if version >= ANTHROPIC_SAMPLING_CUTOFF:
        for name in ("temperature", "top_p", "top_k"):
            if name in body:
                raise _Reject(400, f"{name}: Extra inputs are not permitted")
    elif "temperature" in body and _is_reasoning(model):
        raise _Reject(400, "`temperature` is deprecated for this model.")
    return _Parsed(
        model=model,
        system=system,
        user=user,
        max_tokens=cap,
        temperature=temperature,
        seed=None,
    )


def _parse_ollama(body: dict[str, Any]) -> _Parsed:
    model = _model_of(body)
    if body.get("stream", True) is not False:
        # Ollama streams unless told not to; serve-sim only answers in one piece.
        raise _Reject(400, 'serve-sim answers only with "stream": false')
    system, user = _chat_messages(body, system_roles=("system",))
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise _Reject(400, "options: must be an object")
    cap = _int_or_none(options.get("num_predict"), "num_predict")
    return _Parsed(
        model=model,
        system=system,
        user=user,
        max_tokens=_DEFAULT_MAX_TOKENS if cap is None or cap < 0 else cap,
        temperature=_temperature_of(options.get("temperature")),
        seed=_int_or_none(options.get("seed"), "seed"),
    )


_OPENAI_FAULTS: dict[str, tuple[int, str, str, str | None]] = {
    "rate_limit": (
        429,
        "Rate limit reached for requests (simulated by serve-sim).",
        "requests",
        "rate_limit_exceeded",
    ),
    "server_error": (
        500,
        "The server had an error while processing your request (simulated by serve-sim).",
        "server_error",
        None,
    ),
    "unavailable": (503, "Service unavailable (simulated by serve-sim).", "server_error", None),
    "overloaded": (529, "The server is overloaded (simulated by serve-sim).", "server_error", None),
}
_ANTHROPIC_FAULTS: dict[str, tuple[int, str, str]] = {
    "rate_limit": (429, "rate_limit_error", "Rate limited (simulated by serve-sim)."),
    "server_error": (500, "api_error", "Internal server error (simulated by serve-sim)."),
    "unavailable": (503, "api_error", "Service unavailable (simulated by serve-sim)."),
    "overloaded": (529, "overloaded_error", "Overloaded (simulated by serve-sim)."),
}


def _error_body(fmt: WireFormat, reject: _Reject) -> dict[str, Any]:
    if fmt == "openai":
        return {
            "error": {
                "message": reject.message,
                "type": reject.kind,
                "param": reject.param,
                "code": reject.code,
            }
        }
    if fmt == "anthropic":
        return {"type": "error", "error": {"type": reject.kind, "message": reject.message}}
    return {"error": reject.message}


def _fault_reject(fmt: WireFormat, fault: str) -> _Reject:
    if fmt == "anthropic":
        status, kind, message = _ANTHROPIC_FAULTS[fault]
        return _Reject(status, message, kind=kind)
    status, message, kind, code = _OPENAI_FAULTS[fault]
    return _Reject(status, message, kind=kind, code=code)


def _model_body(fmt: WireFormat, name: str) -> dict[str, Any]:
    """What each provider answers for a model lookup. The dates are the epoch, which
    Anthropic's API sends for a model whose release date is unknown, so answers are reproducible.
    """
    if fmt == "openai":
        return {"id": name, "object": "model", "created": 0, "owned_by": "serve-sim"}
    if fmt == "anthropic":
        return {
            "type": "model",
            "id": name,
            "display_name": name,
            "created_at": "1970-01-01T00:00:00Z",
            "lifecycle": "active",
        }
    return {
        "modelfile": f"FROM {name}\n",
        "parameters": "",
        "template": "{{ .Prompt }}",
        "details": {
            "parent_model": "",
            "format": "serve-sim",
            "family": "serve-sim",
            "families": ["serve-sim"],
            "parameter_size": "0",
            "quantization_level": "none",
        },
        "model_info": {},
        "capabilities": ["completion"],
        "modified_at": "1970-01-01T00:00:00Z",
    }


def _success_body(
    fmt: WireFormat, parsed: _Parsed, index: int, text: str, finish: str, tokens: tuple[int, int]
) -> dict[str, Any]:
    truncated = finish == "length"
    n_in, n_out = tokens
    if fmt == "openai":
        return {
            "id": f"chatcmpl-sim{index}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": parsed.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "length" if truncated else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": n_in,
                "completion_tokens": n_out,
                "total_tokens": n_in + n_out,
            },
            "system_fingerprint": "fp_serve_sim",
        }
    if fmt == "anthropic":
        return {
            "id": f"msg_sim{index}",
            "type": "message",
            "role": "assistant",
            "model": parsed.model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "max_tokens" if truncated else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": n_in, "output_tokens": n_out},
        }
    return {
        "model": parsed.model,
        "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "message": {"role": "assistant", "content": text},
        "done": True,
        "done_reason": "length" if truncated else "stop",
        "total_duration": 0,
        "load_duration": 0,
        "prompt_eval_count": n_in,
        "prompt_eval_duration": 0,
        "eval_count": n_out,
        "eval_duration": 0,
    }


# --- the application ------------------------------------------------------------------------


def _json_response(
    status: int, body: Any, headers: dict[str, str] | None = None
) -> web.StreamResponse:
    from aiohttp import web

    return web.json_response(body, status=status, headers=headers)


_Answer = Callable[["web.Request", WireFormat, _Record], Awaitable["web.StreamResponse | None"]]
"""Serves one request after its arrival is counted; None: the connection was closed."""


class _Handlers:
    def __init__(self, state: _SimState) -> None:
        self.state = state

    async def openai(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "openai", self._answer)

    async def anthropic(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "anthropic", self._answer)

    async def ollama(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "ollama", self._answer)

    async def model(self, request: web.Request) -> web.StreamResponse:
        # OpenAI and Anthropic share the path; only Anthropic's SDK sends a version header.
        fmt: WireFormat = "anthropic" if "anthropic-version" in request.headers else "openai"
        return await self._serve(request, fmt, self._lookup)

    async def show(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "ollama", self._lookup)

    async def stats(self, request: web.Request) -> web.StreamResponse:
        del request
        out = self.state.stats().to_json()
        out["config"] = self.state.config.describe()
        return _json_response(200, out)

    async def reset(self, request: web.Request) -> web.StreamResponse:
        del request
        self.state.reset()
        return _json_response(200, {"reset": True})

    async def _serve(
        self, request: web.Request, fmt: WireFormat, answer: _Answer
    ) -> web.StreamResponse:
        state = self.state
        record = state.arrive(fmt)
        status: int | None = None
        try:
            response = await answer(request, fmt, record)
            if response is None:
                from aiohttp import web

                return web.Response(status=500)  # never sent: the connection is already closed
            status = response.status
            return response
        finally:
            # Also when the client left first and the handler was cancelled: status None.
            state.leave(record, status)

    async def _inject(
        self, request: web.Request, fmt: WireFormat, fault: str | None
    ) -> tuple[bool, web.StreamResponse | None]:
        """Serve the faults that come before an answer: ``(True, response)`` when one ended
        the request (``None``: the connection was closed), ``(False, None)`` to answer.
        """
        state, cfg = self.state, self.state.config
        if fault == "disconnect":
            transport = request.transport
            if transport is not None:
                transport.close()
            return True, None
        if fault in ("rate_limit", "server_error", "unavailable", "overloaded"):
            reject = _fault_reject(fmt, fault)
            headers = {}
            if fault == "rate_limit":
                headers["Retry-After"] = f"{cfg.retry_after_s:g}"
            return True, _json_response(reject.status, _error_body(fmt, reject), headers)
        if fault == "slow" and not await state.sleep(cfg.slow_s):
            return True, _stopping(fmt)
        return False, None

    async def _lookup(
        self, request: web.Request, fmt: WireFormat, record: _Record
    ) -> web.StreamResponse | None:
        record.probe = True
        name: object = request.match_info.get("model")
        if fmt == "ollama":
            body: object = None
            with suppress(ValueError):
                body = json.loads(await request.read())
            if isinstance(body, dict):
                # Older Ollama clients name the model in "name".
                name = body.get("model") or body.get("name")
        if isinstance(name, str):
            record.model = name
        ended, response = await self._inject(request, fmt, record.fault)
        if ended:
            return response
        if not isinstance(name, str) or not name:
            return _json_response(400, _error_body(fmt, _Reject(400, "model is required")))
        # A lookup has no latency of its own, but a straggling one is as late as an answer.
        if record.fault == "late" and not await self.state.sleep(self.state.config.late_s):
            return _stopping(fmt)
        return _finish(_model_body(fmt, name), record.fault)

    async def _answer(
        self, request: web.Request, fmt: WireFormat, record: _Record
    ) -> web.StreamResponse | None:
        state = self.state
        raw = await request.read()
        body: object = None
        with suppress(ValueError):
            body = json.loads(raw)
        if isinstance(body, dict):
            if isinstance(body.get("model"), str):
                record.model = body["model"]
            # Recorded before validation, so that a rejected temperature shows in the stats.
            options = body.get("options") if fmt == "ollama" else body
            if isinstance(options, dict) and _finite(options.get("temperature")):
                record.temp = float(options["temperature"])
        ended, response = await self._inject(request, fmt, record.fault)
        if ended:
            return response
        try:
            if not isinstance(body, dict):
                raise _Reject(400, "the request body must be a JSON object")
            if fmt == "openai":
                parsed = _parse_openai(body)
            elif fmt == "anthropic":
                version = request.headers.get("anthropic-version", "2023-06-01")
                parsed = _parse_anthropic(body, version)
            else:
                parsed = _parse_ollama(body)
        except _Reject as reject:
            return _json_response(reject.status, _error_body(fmt, reject))
        seed = parsed.seed
        if seed is None:
            header = request.headers.get("x-maker-seed")
            if header is not None:
                try:
                    seed = int(header)
                except ValueError:
                    bad_seed = _Reject(400, "x-maker-seed: must be an integer")
                    return _json_response(400, _error_body(fmt, bad_seed))
        if seed is None:
            seed = state.derived_seed(record.index)
        record.seed = seed
        answer = state.model.respond(
            parsed.system, parsed.user, max_tokens=parsed.max_tokens, seed=seed, model=parsed.model
        )
        # A straggler answers as it would have, only late: its delay replaces the latency.
        delay = state.config.late_s if record.fault == "late" else answer.latency_s
        if not await state.sleep(delay):
            return _stopping(fmt)
        completion = answer.completion
        out = _success_body(
            fmt,
            parsed,
            record.index,
            completion.text,
            completion.finish_reason,
            (completion.input_tokens, completion.output_tokens),
        )
        return _finish(out, record.fault)


def _finish(out: dict[str, Any], fault: str | None) -> web.StreamResponse:
    """The 200 carrying ``out``, or half of it under a ``malformed`` fault."""
    if fault == "malformed":
        from aiohttp import web

        text = json.dumps(out)
        # Half a response: what a proxy that cut the body short delivers.
        return web.Response(
            status=200, text=text[: len(text) // 2], content_type="application/json"
        )
    return _json_response(200, out)


def _stopping(fmt: WireFormat) -> web.StreamResponse:
    reject = _Reject(503, "serve-sim is shutting down", kind="api_error")
    return _json_response(503, _error_body(fmt, reject))


def _build_app(state: _SimState) -> web.Application:
    from aiohttp import web

    handlers = _Handlers(state)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handlers.openai)
    app.router.add_post("/v1/messages", handlers.anthropic)
    app.router.add_post("/api/chat", handlers.ollama)
    # Any name, slashes included ("org/model"), as a compatible server may serve.
    app.router.add_get("/v1/models/{model:.+}", handlers.model)
    app.router.add_post("/api/show", handlers.show)
    app.router.add_get("/sim/stats", handlers.stats)
    app.router.add_post("/sim/reset", handlers.reset)

    async def on_shutdown(app: web.Application) -> None:
        del app
        # Wakes every sleeping handler (slow faults, latency) so that shutdown is prompt.
        state.stopping.set()

    app.on_shutdown.append(on_shutdown)
    return app


def create_app(
    config: SimServerConfig | None = None, *, clock: Callable[[], float] = time.monotonic
) -> web.Application:
    """The serve-sim application, to run with aiohttp as you like.

    ``clock`` stamps each request's arrival (see :class:`SimRequest`). Statistics are served at
    ``GET /sim/stats``; use :func:`serve_sim` to read them as Python objects too.
    """
    return _build_app(_SimState(config if config is not None else SimServerConfig(), clock))


class SimServer:
    """A running serve-sim server (see :func:`serve_sim`)."""

    def __init__(self, state: _SimState, host: str, port: int) -> None:
        self._state = state
        self.host = host
        self.port = port

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT``: the root for Anthropic and Ollama; OpenAI's is ``+ "/v1"``."""
        return base_url(self.host, self.port)

    @property
    def config(self) -> SimServerConfig:
        """The server's configuration."""
        return self._state.config

    @property
    def stats(self) -> SimStats:
        """A snapshot of the server's statistics, taken now."""
        return self._state.stats()

    def reset(self) -> None:
        """Clear the statistics and restart the fault draws (like ``POST /sim/reset``)."""
        self._state.reset()

    async def wait_until(self, predicate: Callable[[SimStats], bool]) -> SimStats:
        """Wait until the statistics satisfy ``predicate``, and return them: an ordering point
        for tests (e.g. ``lambda s: s.in_flight == 4``). Bound it with a timeout of your own.
        """
        return await self._state.wait_until(predicate)


@asynccontextmanager
async def serve_sim(
    config: SimServerConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[SimServer]:
    """Serve the simulated model on ``host:port`` (0: an ephemeral port) for the block's duration.

    Needs the asyncio event loop (aiohttp). On exit, requests still in flight are ended at once:
    sleeping handlers wake and answer 503, and connections close.

    >>> import asyncio, json, urllib.request
    >>> async def main() -> int:
    ...     async with serve_sim(SimServerConfig(sim="ideal")) as server:
    ...         url = server.base_url + "/sim/stats"
    ...         body = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read())
    ...         return json.loads(body)["total"]
    >>> asyncio.run(main())
    0
    """
    state = _SimState(config if config is not None else SimServerConfig(), clock)
    # listen() ends the handler of a client that gives up (its timeout) at once.
    async with listen(_build_app(state), host, port) as bound:
        yield SimServer(state, host, bound)


# --- the command ----------------------------------------------------------------------------

_OPTIONS = {
    "sim": "--preset",
    "p": "--p",
    "latency_ms": "--latency-ms",
    "fault_rate": "--fault-rate",
    "faults": "--faults",
    "retry_after_s": "--retry-after",
    "slow_s": "--slow-s",
    "late_s": "--late-s",
    "seed": "--seed",
}


@click.command("serve-sim")
@listen_options(port=8765)
@click.option(
    "--preset",
    type=click.Choice(sorted(PRESETS)),
    default="paper",
    show_default=True,
    help="Simulated model preset.",
)
@click.option("--p", "p", type=click.FloatRange(0.0, 1.0), help="P(a valid answer is correct).")
@click.option("--latency-ms", type=click.FloatRange(0.0), help="Median latency of an answer.")
@click.option(
    "--fault-rate",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Share of requests that get an injected fault.",
)
@click.option(
    "--faults",
    default=",".join(DEFAULT_FAULTS),
    show_default=True,
    help=f"Comma-separated fault kinds to spread the faults over, of: {', '.join(FAULT_KINDS)}"
    " ('late' only when named).",
)
@click.option(
    "--retry-after",
    type=click.FloatRange(0.0),
    default=1.0,
    show_default=True,
    help="Retry-After of injected 429s, in seconds.",
)
@click.option(
    "--slow-s",
    type=click.FloatRange(0.0, min_open=True),
    default=DEFAULT_SLOW_S,
    show_default=True,
    help="Delay of a 'slow' fault, in seconds (beyond the client's --timeout, 120 by default).",
)
@click.option(
    "--late-s",
    type=click.FloatRange(0.0, min_open=True),
    default=DEFAULT_LATE_S,
    show_default=True,
    help="Delay of a 'late' fault (a correct answer, late), in seconds: keep it below the "
    "client's --timeout so that it straggles rather than times out.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fault draws.")
def serve_sim_command(
    host: str,
    port: int,
    preset: str,
    p: float | None,
    latency_ms: float | None,
    fault_rate: float,
    faults: str,
    retry_after: float,
    slow_s: float,
    late_s: float,
    seed: int,
) -> None:
    """Serve the simulated model over OpenAI's, Anthropic's and Ollama's APIs, until interrupted.

    Point a client at it: OpenAI SDKs at http://HOST:PORT/v1, Anthropic SDKs and Ollama clients
    at http://HOST:PORT. Any API key is accepted. GET /sim/stats shows every request seen.
    """
    try:
        config = SimServerConfig(
            sim=preset,
            p=p,
            latency_ms=latency_ms,
            fault_rate=fault_rate,
            faults=tuple(part.strip() for part in faults.split(",") if part.strip()),
            retry_after_s=retry_after,
            slow_s=slow_s,
            late_s=late_s,
            seed=seed,
        )
    except ConfigError as exc:
        option = _OPTIONS.get(exc.field, "--" + exc.field.replace("_", "-"))
        raise click.BadParameter(str(exc).split(": ", 1)[-1], param_hint=option) from exc
    try:
        import aiohttp  # noqa: F401
    except ImportError as exc:
        raise click.ClickException(
            "serve-sim needs aiohttp: pip install 'maker[providers]'"
        ) from exc
    with suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(config, host, port))


async def _serve_forever(config: SimServerConfig, host: str, port: int) -> None:
    with serving(host, port):
        async with serve_sim(config, host=host, port=port) as server:
            base = server.base_url
            click.echo(
                f"maker serve-sim: listening on {base} (OpenAI: {base}/v1, Anthropic: {base}, "
                f"Ollama: {base}, stats: {base}/sim/stats); Ctrl-C stops",
                err=True,
            )
            await anyio.sleep_forever()
