"""The scheduler: one per process, shared by every step and run, between the engine and clients.

Per model it enforces a concurrency cap, a request-rate cap (RPM) and a token-rate cap (TPM),
keeps a circuit breaker, and bounds each call with a timeout. Retrying is the engine's job, so
that every attempt is an event; the scheduler supplies the backoff rule (:func:`backoff_delay`).

Time is injected (``clock`` and ``sleep``), so the limiters, the breaker and the backoff are
tested without real waiting.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import anyio

from ..core._client import Client, Completion, SampleRequest
from ..core._errors import ClientError, ConfigError

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
BreakerState = Literal["closed", "open", "half_open"]
WaitReason = Literal["concurrency", "rpm", "tpm", "breaker"]

WINDOW_S = 60.0
"""RPM and TPM are enforced over any sliding window of this length."""


def backoff_delay(
    attempt: int,
    *,
    base_s: float,
    cap_s: float,
    retry_after_s: float | None,
    draw: float,
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): full jitter.

    The delay is ``draw * min(cap, base * 2**(attempt-1))`` with ``draw`` uniform in [0, 1)
    (injected, so the engine can take it from the run's seeded generator), and never less than
    the server's ``Retry-After``.

    >>> backoff_delay(3, base_s=0.5, cap_s=30.0, retry_after_s=None, draw=0.5)
    1.0
    >>> backoff_delay(1, base_s=0.5, cap_s=30.0, retry_after_s=4.0, draw=0.1)
    4.0
    """
    if attempt < 1:
        raise ConfigError("attempt", f"must be at least 1, got {attempt}")
    # ldexp scales exactly (subnormal bases included); past the largest float the growth has
    # long saturated at the cap, so an overflow is simply infinity.
    try:
        grown = math.ldexp(base_s, attempt - 1)
    except OverflowError:
        grown = math.inf
    ceiling = min(cap_s, grown)
    delay = draw * ceiling
    if retry_after_s is not None and retry_after_s > delay:
        delay = retry_after_s
    return delay


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Limits of one model. None disables a limit.

    - ``concurrency``: requests in flight at once;
    - ``rpm`` / ``tpm``: requests and tokens (input estimate plus the output cap, settled to the
      real usage once known) over any 60-second window;
    - ``timeout_s``: a single call's time limit (a timeout is a retryable failure);
    - ``backoff_base_s`` / ``backoff_cap_s``: the exponential backoff between attempts;
    - ``breaker_threshold``: consecutive transport failures that open the breaker;
    - ``breaker_cooldown_s``: how long it stays open before one probe is let through;
    - ``unavailable_budget_s``: how long a model may stay unavailable (its breaker open, from
      the first trip until a probe succeeds) before calls fail for good, ending the run.
    """

    concurrency: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    timeout_s: float | None = 120.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    breaker_threshold: int = 8
    breaker_cooldown_s: float = 5.0
    unavailable_budget_s: float = 300.0

    def describe(self) -> dict[str, Any]:
        """The limits as JSON, for ``run_started``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Limits:
        """The limits a ``run_started`` event describes (unknown keys are ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def __post_init__(self) -> None:
        for name in ("concurrency", "rpm", "tpm", "breaker_threshold"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(name, f"must be a positive integer, got {value!r}")
        for name in ("timeout_s",):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(name, f"must be positive, got {value!r}")
        for name in (
            "backoff_base_s",
            "backoff_cap_s",
            "breaker_cooldown_s",
            "unavailable_budget_s",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(name, f"must be >= 0, got {value!r}")


class SlidingWindow:
    """Admits amounts so that the total over any ``window`` seconds stays within ``limit``."""

    def __init__(self, limit: int, clock: Clock, window: float = WINDOW_S) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._entries: deque[list[float]] = deque()  # [time, amount]
        self._total = 0.0

    def _expire(self, now: float) -> None:
        while self._entries and self._entries[0][0] <= now - self.window:
            self._total -= self._entries.popleft()[1]

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` may be admitted (0 if now)."""
        now = self._clock()
        self._expire(now)
        amount = min(amount, self.limit)  # a single request larger than the limit still runs
        excess = self._total + amount - self.limit
        if excess <= 0:
            return 0.0
        freed = 0.0
        for at, size in self._entries:
            freed += size
            if freed >= excess:
                return max(0.0, at + self.window - now)
        return self.window  # pragma: no cover - unreachable: the entries hold the total

    def admit(self, amount: float) -> list[float]:
        """Record ``amount`` now; returns the entry so it can be settled later."""
        entry = [self._clock(), amount]
        self._entries.append(entry)
        self._total += amount
        return entry

    def settle(self, entry: list[float], actual: float) -> None:
        """Replace a reservation's amount by what was really used."""
        if entry in self._entries:
            self._total += actual - entry[1]
            entry[1] = actual


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; after ``cooldown`` lets one probe through.

    A successful probe closes it; a failed probe opens it again.
    """

    def __init__(self, threshold: int, cooldown: float, clock: Clock) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self.state: BreakerState = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self.down_since: float | None = None
        """When the breaker first opened in the current outage (None while closed)."""
        self._probing = False

    @property
    def probing(self) -> bool:
        """Whether a probe is out: the one call a half-open breaker lets through."""
        return self._probing

    def wait_for(self) -> float | None:
        """Seconds to wait before a call may go (0: go now; None: wait for the probe)."""
        if self.state == "closed":
            return 0.0
        if self.state == "open":
            remaining = self.opened_at + self.cooldown - self._clock()
            if remaining > 0:
                return remaining
            self.state = "half_open"
        if self._probing:
            return None
        self._probing = True
        return 0.0

    def success(self) -> BreakerState | None:
        """Record a success; returns the new state if it changed."""
        self.failures = 0
        self._probing = False
        if self.state != "closed":
            self.state = "closed"
            self.down_since = None
            return "closed"
        return None

    def failure(self) -> BreakerState | None:
        """Record a transport failure; returns the new state if it changed."""
        self.failures += 1
        self._probing = False
        if self.state == "half_open" or (
            self.state == "closed" and self.failures >= self.threshold
        ):
            self.state = "open"
            self.opened_at = self._clock()
            if self.down_since is None:
                self.down_since = self.opened_at
            return "open"
        return None

    def release_probe(self) -> None:
        """A probe ended with neither verdict (it was cancelled)."""
        self._probing = False


class SchedulerStatistics(NamedTuple):
    """Counters over every model: calls in flight, waiting, done, failed, and breaker trips."""

    in_flight: int
    queued: int
    calls: int
    failures: int
    breaker_opens: int


class Wait(NamedTuple):
    """A wait the scheduler imposed on one call."""

    reason: WaitReason
    seconds: float


class BreakerChange(NamedTuple):
    """A change of a model's breaker state."""

    model: str
    state: BreakerState
    failures: int


class SchedulerObserver:
    """Receives the scheduler's waits and breaker changes for one call (to record as events)."""

    def waited(self, wait: Wait) -> None:  # pragma: no cover - default does nothing
        """A call waited."""

    def breaker_changed(self, change: BreakerChange) -> None:  # pragma: no cover
        """The model's breaker changed state."""


class _Gate:
    def __init__(self, limits: Limits, clock: Clock) -> None:
        self.limits = limits
        # No limiter at all without a cap: acquiring an unbounded one still costs every call.
        self.limiter = (
            anyio.CapacityLimiter(limits.concurrency) if limits.concurrency is not None else None
        )
        self.rpm = SlidingWindow(limits.rpm, clock) if limits.rpm else None
        self.tpm = SlidingWindow(limits.tpm, clock) if limits.tpm else None
        self.breaker = CircuitBreaker(limits.breaker_threshold, limits.breaker_cooldown_s, clock)
        self.probe_done = anyio.Event()


class Scheduler:
    """Shared limits for every call to every model in the process.

    ``limits`` maps a model name (``client.model``) to its :class:`Limits`; ``default`` covers the
    rest. ``clock`` is monotonic seconds; ``sleep`` waits (both injectable for tests). The engine
    sleeps its retry backoff through ``sleep`` too.
    """

    def __init__(
        self,
        default: Limits | None = None,
        *,
        limits: dict[str, Limits] | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        self.default = default if default is not None else Limits()
        self._limits = dict(limits or {})
        self._clock = clock
        self.sleep = sleep
        self._gates: dict[str, _Gate] = {}
        self._in_flight = 0
        self._queued = 0
        self._calls = 0
        self._failures = 0
        self._opens = 0

    def limits_for(self, model: str) -> Limits:
        """The limits that apply to ``model``."""
        return self._limits.get(model, self.default)

    def _gate(self, model: str) -> _Gate:
        gate = self._gates.get(model)
        if gate is None:
            gate = self._gates[model] = _Gate(self.limits_for(model), self._clock)
        return gate

    def statistics(self) -> SchedulerStatistics:
        """Counters for tests and the CLI."""
        return SchedulerStatistics(
            in_flight=self._in_flight,
            queued=self._queued,
            calls=self._calls,
            failures=self._failures,
            breaker_opens=self._opens,
        )

    def breaker_state(self, model: str) -> BreakerState:
        """The breaker state of ``model``."""
        return self._gate(model).breaker.state

    async def call(
        self,
        client: Client,
        request: SampleRequest,
        observer: SchedulerObserver | None = None,
    ) -> Completion:
        """Make one call within the model's limits. Raises :class:`ClientError` on failure."""
        observer = observer or SchedulerObserver()
        gate = self._gate(client.model)
        limits = gate.limits
        if gate.breaker.state != "closed" or gate.breaker.down_since is not None:
            await self._pass_breaker(gate, client.model, observer)
        limiter = gate.limiter
        if limiter is not None:
            self._queued += 1
            began = self._clock()
            try:
                queued_behind = limiter.available_tokens < 1
                await limiter.acquire()
            finally:
                self._queued -= 1
        try:
            if limiter is not None and queued_behind:
                observer.waited(Wait("concurrency", self._clock() - began))
            tokens = _token_estimate(request)
            await self._pass_window(gate.rpm, 1, "rpm", observer)
            await self._pass_window(gate.tpm, tokens, "tpm", observer)
            rpm_entry = gate.rpm.admit(1) if gate.rpm else None
            tpm_entry = gate.tpm.admit(tokens) if gate.tpm else None
            del rpm_entry  # a request counts once it is sent, whatever happens to it
            self._in_flight += 1
            self._calls += 1
            try:
                completion = await self._timed(client, request, limits)
            except ClientError:
                self._failures += 1
                self._breaker_verdict(gate, client.model, observer, ok=False)
                raise
            except BaseException:
                gate.breaker.release_probe()
                raise
            finally:
                self._in_flight -= 1
            if gate.tpm is not None and tpm_entry is not None:
                gate.tpm.settle(tpm_entry, completion.input_tokens + completion.output_tokens)
            self._breaker_verdict(gate, client.model, observer, ok=True)
            return completion
        finally:
            if limiter is not None:
                limiter.release()

    def call_now(
        self,
        client: Client,
        request: SampleRequest,
        observer: SchedulerObserver | None = None,
    ) -> Completion | None:
        """:meth:`call` without awaiting, or None when the call would have to wait.

        It answers when the client can answer at once (``complete_now``, see
        :class:`~maker.core._client.ImmediateClient`) and no limit of the model is in force: no
        concurrency, RPM or TPM cap and a closed breaker. Nothing is counted when it returns
        None, so the caller then makes the call with :meth:`call`. Failures count and move the
        breaker as they do in :meth:`call`.
        """
        if not _answers_at_once(client):
            return None
        gate = self._gate(client.model)
        breaker = gate.breaker
        if (
            gate.limiter is not None
            or gate.rpm is not None
            or gate.tpm is not None
            or breaker.state != "closed"
            or breaker.down_since is not None
        ):
            return None
        self._in_flight += 1
        self._calls += 1
        try:
            completion: Completion | None = client.complete_now(request)  # type: ignore[attr-defined]
        except ClientError:
            self._failures += 1
            self._breaker_verdict(gate, client.model, observer or SchedulerObserver(), ok=False)
            raise
        finally:
            self._in_flight -= 1
        if completion is None:
            self._calls -= 1  # not made: call() counts it
            return None
        if breaker.state != "closed" or breaker.failures or breaker.probing:
            self._breaker_verdict(gate, client.model, observer or SchedulerObserver(), ok=True)
        # Otherwise a success leaves a closed breaker as it is, and says nothing.
        return completion

    async def _timed(self, client: Client, request: SampleRequest, limits: Limits) -> Completion:
        timeout = limits.timeout_s
        # An in-process model does no I/O and cannot hang; arming a deadline for each of its
        # calls would cost more than the call.
        if timeout is None or getattr(client, "in_process", False):
            return await client.complete(request)
        try:
            with anyio.fail_after(timeout):
                return await client.complete(request)
        except TimeoutError as exc:
            raise ClientError(
                f"no answer within {timeout:g} s", kind="timeout", retryable=True
            ) from exc

    async def _pass_window(
        self,
        window: SlidingWindow | None,
        amount: float,
        reason: WaitReason,
        observer: SchedulerObserver,
    ) -> None:
        if window is None:
            return
        waited = 0.0
        while (delay := window.wait_for(amount)) > 0:
            await self.sleep(delay)
            waited += delay
        if waited > 0:
            observer.waited(Wait(reason, waited))

    async def _pass_breaker(self, gate: _Gate, model: str, observer: SchedulerObserver) -> None:
        limits = gate.limits
        breaker = gate.breaker
        waited = 0.0
        while True:
            if breaker.down_since is not None:
                down = self._clock() - breaker.down_since
                if down >= limits.unavailable_budget_s:
                    raise ClientError(
                        f"{model} unavailable: its circuit breaker has been open for "
                        f"{down:.1f} s (unavailable_budget_s={limits.unavailable_budget_s:g})",
                        kind="unavailable",
                        retryable=False,
                    )
            delay = breaker.wait_for()
            if delay == 0.0:
                break
            began = self._clock()
            if delay is None:
                # Another call is probing: wait for its verdict, or a cooldown at most.
                with anyio.move_on_after(max(limits.breaker_cooldown_s, 0.05)):
                    await gate.probe_done.wait()
            else:
                assert breaker.down_since is not None
                left = breaker.down_since + limits.unavailable_budget_s - self._clock()
                await self.sleep(max(0.0, min(delay, left)))
            waited += self._clock() - began
        if waited > 0:
            observer.waited(Wait("breaker", waited))

    def _breaker_verdict(
        self, gate: _Gate, model: str, observer: SchedulerObserver, *, ok: bool
    ) -> None:
        breaker = gate.breaker
        was_probe = breaker.state == "half_open"
        change = breaker.success() if ok else breaker.failure()
        if was_probe:
            done, gate.probe_done = gate.probe_done, anyio.Event()
            done.set()
        if change is not None:
            if change == "open":
                self._opens += 1
            observer.breaker_changed(BreakerChange(model, change, breaker.failures))


def _answers_at_once(client: Client) -> bool:
    """Whether ``client.complete_now`` may stand for its ``complete``.

    Only when one class defines both: a subclass that overrides ``complete`` alone (to wait,
    count or fail, as tests and wrappers do) must still be called through it.
    """
    if "complete" in getattr(client, "__dict__", ()):
        return False  # patched on the instance
    return _defines_both(type(client))


@functools.lru_cache(maxsize=256)
def _defines_both(cls: type) -> bool:
    def owner(name: str) -> type | None:
        return next((klass for klass in cls.__mro__ if name in vars(klass)), None)

    now = owner("complete_now")
    return now is not None and now is owner("complete")


def _token_estimate(request: SampleRequest) -> int:
    # Reserve the prompt (about 4 characters a token) plus the output cap; settled afterwards.
    return (len(request.system) + len(request.user)) // 4 + request.max_tokens
