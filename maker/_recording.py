"""A recorded run, as the engine needs it to re-execute: the events it must reproduce, and the
sample outcomes to serve in the order they were recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import msgspec

from events import (
    OBSERVATIONAL_TYPES,
    AnyEvent,
    Event,
    RunFinished,
    RunResumed,
    RunStarted,
    SampleCancelled,
    SampleFailed,
    SampleReceived,
)

from ._client import Completion
from ._errors import ClientError, MakerError

IGNORED_FIELDS = frozenset({"seq", "ts", "latency_s", "wall_s", "version", "cost_usd", "limits"})
"""Fields a re-execution need not reproduce: positions and times, durations, the package version,
prices (derived from a price table that may change) and the scheduler's limits (a resumed run
may run under other limits; the backoff it draws is compared in ``sample_failed``)."""


class Divergence(MakerError):
    """A re-execution produced an event that differs from the recorded one.

    ``seq`` is the recorded event's position; ``expected`` and ``got`` are the two events as
    JSON (``got`` is None when the re-execution stopped short of the recording).
    """

    def __init__(self, seq: int, expected: dict[str, Any], got: dict[str, Any] | None) -> None:
        if got is None:
            detail = f"the replay ended before recorded {expected.get('type')}"
        else:
            fields = sorted(
                k
                for k in set(expected) | set(got)
                if k not in IGNORED_FIELDS and expected.get(k) != got.get(k)
            )
            detail = f"expected {expected.get('type')}, got {got.get('type')}"
            if expected.get("type") == got.get("type"):
                detail = f"{expected.get('type')} differs in {', '.join(fields)}"
        super().__init__(f"replay diverges at seq {seq}: {detail}")
        self.seq = seq
        self.expected = expected
        self.got = got


def comparable(event: Event) -> dict[str, Any]:
    """The event as JSON without the fields a re-execution need not reproduce."""
    data = msgspec.to_builtins(event)
    assert isinstance(data, dict)
    for name in IGNORED_FIELDS:
        data.pop(name, None)
    return data


def decision_events(events: Sequence[AnyEvent]) -> list[AnyEvent]:
    """The events a re-execution must reproduce, in order.

    Leaves out observational events (waits, breaker changes) and interruptions: a
    ``run_resumed`` marker, and the ``run_finished`` of a cancellation it follows with the
    samples the cancellation abandoned.
    """
    out: list[AnyEvent] = []
    for event in events:
        if isinstance(event, OBSERVATIONAL_TYPES):
            continue
        if isinstance(event, RunResumed):
            # Drop the interruption this resumption continues from.
            if out and isinstance(out[-1], RunFinished) and out[-1].status == "cancelled":
                out.pop()
                while (
                    out
                    and isinstance(out[-1], SampleCancelled)
                    and out[-1].reason == "run_cancelled"
                ):
                    out.pop()
            continue
        out.append(event)
    return out


class Recording:
    """One run's recorded events, prepared for re-execution.

    The engine compares every event it emits with :attr:`expected` in order, and its sample
    workers take their outcomes from the recording in the recorded order, so the decisions
    follow the same path. What the recording does not hold (the samples of a crashed or
    cancelled run's future) is left to the live client when resuming.
    """

    def __init__(self, events: Sequence[AnyEvent]) -> None:
        if not events or not isinstance(events[0], RunStarted):
            raise MakerError("a recording must start with the run's run_started event")
        self.started: RunStarted = events[0]
        self.run_id = self.started.run_id
        self.next_seq = events[-1].seq + 1
        self.finished: RunFinished | None = (
            events[-1] if isinstance(events[-1], RunFinished) else None
        )
        expected = decision_events(events)
        if (
            expected
            and isinstance(expected[-1], RunFinished)
            and expected[-1].status == ("cancelled")
        ):
            # A cancelled run resumes from before its cancellation.
            expected.pop()
            while (
                expected
                and isinstance(expected[-1], SampleCancelled)
                and expected[-1].reason == "run_cancelled"
            ):
                expected.pop()
        self.expected: list[AnyEvent] = expected
        self._keys: list[tuple[str, int]] = []
        self._outcomes: dict[tuple[str, int], SampleReceived | SampleFailed] = {}
        attempts: dict[str, int] = {}
        for event in expected:
            if isinstance(event, SampleReceived | SampleFailed):
                attempt = attempts.get(event.sample_id, 0) + 1
                attempts[event.sample_id] = attempt
                if isinstance(event, SampleFailed) and event.attempt != attempt:
                    raise MakerError(
                        f"seq {event.seq}: sample {event.sample_id} records attempt "
                        f"{event.attempt} where {attempt} was expected"
                    )
                key = (event.sample_id, attempt)
                self._keys.append(key)
                self._outcomes[key] = event
        self._cursor = 0
        self.policy_changed = False
        """Set when re-executing under a different policy: run_started's policy is not compared."""
        self._remaining = set(self._keys)
        self._advanced = anyio.Event()

    @property
    def resumable(self) -> bool:
        """Whether the run can continue: it never finished, or it was cancelled."""
        return self.finished is None or self.finished.status == "cancelled"

    def has(self, sample_id: str, attempt: int) -> bool:
        """Whether this attempt's outcome is still to be served from the recording."""
        return (sample_id, attempt) in self._remaining

    async def take(self, sample_id: str, attempt: int) -> Completion | ClientError | None:
        """This attempt's recorded outcome, once every earlier outcome has been delivered.

        None when the recording holds no outcome for it: it was still in flight when the run
        stopped, so it must be asked of the live model.
        """
        key = (sample_id, attempt)
        while True:
            if self._cursor < len(self._keys) and self._keys[self._cursor] == key:
                return _outcome(self._outcomes[key])
            if key not in self._remaining and self._cursor >= len(self._keys):
                return None
            advanced = self._advanced
            await advanced.wait()

    def delivered(self, sample_id: str, attempt: int) -> None:
        """The engine consumed this outcome: let the next recorded one through."""
        key = (sample_id, attempt)
        if self._cursor < len(self._keys) and self._keys[self._cursor] == key:
            self._remaining.discard(key)
            self._cursor += 1
            advanced, self._advanced = self._advanced, anyio.Event()
            advanced.set()

    def check(self, position: int, event: Event) -> None:
        """Raise :class:`Divergence` unless ``event`` reproduces the recorded event there."""
        expected = self.expected[position]
        got = comparable(event)
        want = comparable(expected)
        if self.policy_changed and isinstance(event, RunStarted):
            # The caller changed the policy on purpose: find where behaviour changes instead.
            got.pop("policy", None)
            want.pop("policy", None)
        if got != want:
            raise Divergence(
                expected.seq, msgspec.to_builtins(expected), msgspec.to_builtins(event)
            )


def _outcome(event: SampleReceived | SampleFailed) -> Completion | ClientError:
    if isinstance(event, SampleReceived):
        return Completion(
            text=event.text,
            finish_reason=event.finish_reason,
            input_tokens=event.input_tokens,
            output_tokens=event.output_tokens,
            model=event.model,
            temperature_sent=event.temperature_sent,
        )
    return ClientError(
        event.message,
        kind=event.error_kind,
        retryable=event.retryable,
        retry_after=event.retry_after_s,
    )
