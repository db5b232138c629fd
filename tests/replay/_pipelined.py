"""A pipelined, hedged run built by hand, event by event, as the engine records one (schema v3):
interleaved steps, misspeculated starts abandoned and started again, a confirmed speculative
start, a hedge that answers before its straggler and a straggler that votes before its hedge.

The run is of the counting task (state ``{"n": n}``, the right answer ``move = n + 1``) with
k = 2 and ``pipeline=2``. What happens, in order of events:

- step 0 (branch 0): ``0:0`` votes move 1; step 1 starts speculatively from n = 1; ``0:1`` is
  red-flagged; ``0:2`` votes move 1 and decides; ``0:3`` is cancelled (decided);
- step 1 (branch 0, speculative, confirmed): ``1:0`` votes move 9 (wrong), so step 2 starts
  speculatively from n = 9 and, once ``2:0`` votes move 10, step 3 from n = 10; ``1:2``
  straggles and gets the hedge ``1:4``; ``1:1``, ``1:3`` and the hedge vote move 2, which
  decides; the straggler ``1:2`` is cancelled (decided);
- steps 3 and 2 (branch 0) were drawn for the wrong states: their samples in flight are
  cancelled (misspeculated) and both starts abandoned; ``2:1`` had been red-flagged there;
- step 2 (branch 1, from n = 2): ``2:3`` votes move 3; step 3 starts again, speculatively, from
  n = 3; ``2:4`` straggles and gets the hedge ``2:5``, but the straggler answers first and
  decides; the hedge is cancelled (decided);
- step 3 (branch 1, speculative, confirmed): ``3:1`` and ``3:2`` vote move 4 and decide.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import anyio

from events import (
    AnyEvent,
    EventLog,
    RedFlagged,
    RunFinished,
    RunStarted,
    SampleCancelled,
    SampleHedged,
    SampleReceived,
    SampleRequested,
    StateChanged,
    StepAbandoned,
    StepDecided,
    StepStarted,
    VoteCounted,
    canonical_json,
)

RUN_ID = "pipelined"
K = 2


def answer(move: int) -> str:
    """The canonical JSON of the counting task's answer ``move``."""
    return canonical_json({"move": move})


# What the run's events add up to (checked against the events themselves in test_pipelined).
SAMPLES = 18
"""Every sample requested: 14 for the decided starts, 4 for the abandoned ones."""
MISSPECULATED_SAMPLES = 4
MISSPECULATED_STEPS = 2
HEDGED_SAMPLES = 2
CANCELLED = Counter(decided=3, misspeculated=2)
VOTES = 11
RED_FLAGS = Counter(too_long=1, malformed=1)
RECEIVED = 13
STEPS = 4

DECIDED: dict[int, dict[str, Any]] = {
    0: {
        "branch": 0,
        "speculative": False,
        "samples": 4,
        "received": 3,
        "red_flags": 1,
        "cancelled": 1,
        "votes": {answer(1): 2},
        "winner": answer(1),
        "valid_votes": 2,
        "abandoned": 0,
        "abandoned_samples": 0,
    },
    1: {
        "branch": 0,
        "speculative": True,
        "samples": 5,
        "received": 4,
        "red_flags": 0,
        "cancelled": 1,
        "votes": {answer(9): 1, answer(2): 3},
        "winner": answer(2),
        "valid_votes": 4,
        "abandoned": 0,
        "abandoned_samples": 0,
    },
    2: {
        "branch": 1,
        "speculative": False,
        "samples": 3,
        "received": 2,
        "red_flags": 0,
        "cancelled": 1,
        "votes": {answer(3): 2},
        "winner": answer(3),
        "valid_votes": 2,
        "abandoned": 1,
        "abandoned_samples": 3,
    },
    3: {
        "branch": 1,
        "speculative": True,
        "samples": 2,
        "received": 2,
        "red_flags": 0,
        "cancelled": 0,
        "votes": {answer(4): 2},
        "winner": answer(4),
        "valid_votes": 2,
        "abandoned": 1,
        "abandoned_samples": 1,
    },
}
"""Each step's decided start, as its record must tell it."""

START_OF: dict[str, tuple[int, int]] = {
    **{f"0:{i}": (0, 0) for i in range(4)},
    **{f"1:{i}": (1, 0) for i in range(5)},
    **{f"2:{i}": (2, 0) for i in range(3)},
    **{f"2:{i}": (2, 1) for i in range(3, 6)},
    "3:0": (3, 0),
    "3:1": (3, 1),
    "3:2": (3, 1),
}
"""Sample id -> (step, branch) of the start it was drawn for."""

HEDGES = {"1:4": "1:2", "2:5": "2:4"}
"""Hedge -> the straggler it was sent beside."""


class _Builder:
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.events: list[AnyEvent] = []

    def _env(self) -> dict[str, Any]:
        seq = len(self.events)
        return {"run_id": self.run_id, "seq": seq, "ts": 1_700_000_000.0 + seq / 100}

    def start(self, step: int, n: int, branch: int = 0, speculative: bool = False) -> None:
        self.events.append(
            StepStarted(
                **self._env(), step=step, state={"n": n}, branch=branch, speculative=speculative
            )
        )

    def request(self, sid: str) -> None:
        step = int(sid.split(":")[0])
        starts = [e for e in self.events if isinstance(e, StepStarted) and e.step == step]
        first = not any(
            isinstance(e, SampleRequested) and e.step == step and e.seq > starts[-1].seq
            for e in self.events
        )
        self.events.append(
            SampleRequested(
                **self._env(),
                step=step,
                sample_id=sid,
                model="sim",
                temperature=0.0 if first else 0.1,
                max_tokens=750,
            )
        )

    def hedge(self, sid: str, straggler: str) -> None:
        self.events.append(
            SampleHedged(
                **self._env(),
                step=int(sid.split(":")[0]),
                sample_id=sid,
                straggler=straggler,
                in_flight_s=0.5,
                threshold_s=0.2,
            )
        )
        self.request(sid)

    def _received(self, sid: str, text: str, output_tokens: int = 7) -> int:
        step = int(sid.split(":")[0])
        self.events.append(
            SampleReceived(
                **self._env(),
                step=step,
                sample_id=sid,
                text=text,
                model="sim",
                latency_s=0.1,
                input_tokens=100,
                output_tokens=output_tokens,
                finish_reason="stop",
                cost_usd=0.001,
            )
        )
        return step

    def vote(self, sid: str, move: int, tally: dict[int, int]) -> None:
        step = self._received(sid, f"move = {move}")
        self.events.append(
            VoteCounted(
                **self._env(),
                step=step,
                sample_id=sid,
                candidate=answer(move),
                tally={answer(m): n for m, n in tally.items()},
            )
        )

    def flag(self, sid: str, reason: str) -> None:
        step = self._received(sid, "no idea", output_tokens=7 if reason == "malformed" else 900)
        self.events.append(
            RedFlagged(**self._env(), step=step, sample_id=sid, reason=reason, detail="")
        )

    def cancel(self, sid: str, reason: str) -> None:
        step = int(sid.split(":")[0])
        self.events.append(SampleCancelled(**self._env(), step=step, sample_id=sid, reason=reason))

    def decide(self, step: int, move: int, tally: dict[int, int], samples: int, red: int) -> None:
        self.events.append(
            StepDecided(
                **self._env(),
                step=step,
                winner=answer(move),
                votes={answer(m): n for m, n in tally.items()},
                samples=samples,
                red_flags=red,
            )
        )

    def changed(self, step: int, n: int) -> None:
        self.events.append(StateChanged(**self._env(), step=step, state={"n": n}))

    def abandon(
        self, step: int, branch: int, samples: int, tally: dict[int, int], red: int
    ) -> None:
        self.events.append(
            StepAbandoned(
                **self._env(),
                step=step,
                branch=branch,
                reason="misspeculated",
                samples=samples,
                votes={answer(m): n for m, n in tally.items()},
                red_flags=red,
            )
        )


def pipelined_events(run_id: str = RUN_ID) -> list[AnyEvent]:
    """The run's events, in seq order (see the module's docstring)."""
    b = _Builder(run_id)
    b.events.append(
        RunStarted(
            **b._env(),
            task="count",
            task_params={"target": 10},
            policy={"k": K, "pipeline": 2, "hedge": {"quantile": 0.95}},
            models=["sim"],
            model_params={},
            seed=7,
            version="0.1.0",
            initial_state={"n": 0},
        )
    )
    # Step 0, and step 1 speculating on its leader.
    b.start(0, 0)
    for sid in ("0:0", "0:1", "0:2"):
        b.request(sid)
    b.vote("0:0", 1, {1: 1})
    b.start(1, 1, speculative=True)
    b.request("1:0")
    b.request("1:1")
    b.flag("0:1", "too_long")
    b.request("0:3")
    b.vote("0:2", 1, {1: 2})
    b.decide(0, 1, {1: 2}, samples=4, red=1)
    b.cancel("0:3", "decided")
    b.changed(0, 1)
    # Step 1 leads with a wrong answer: steps 2 and 3 speculate on it.
    b.vote("1:0", 9, {9: 1})
    b.start(2, 9, speculative=True)
    b.request("2:0")
    b.request("2:1")
    b.vote("2:0", 10, {10: 1})
    b.start(3, 10, speculative=True)
    b.request("3:0")
    b.flag("2:1", "malformed")
    b.request("2:2")
    b.vote("1:1", 2, {9: 1, 2: 1})
    b.request("1:2")
    b.request("1:3")
    b.hedge("1:4", straggler="1:2")
    b.vote("1:3", 2, {9: 1, 2: 2})
    b.vote("1:4", 2, {9: 1, 2: 3})
    b.decide(1, 2, {9: 1, 2: 3}, samples=5, red=0)
    b.cancel("1:2", "decided")
    b.changed(1, 2)
    # Step 1 decided move 2, not 9: the starts of steps 3 and 2 were drawn for other states.
    b.cancel("3:0", "misspeculated")
    b.abandon(3, 0, samples=1, tally={}, red=0)
    b.cancel("2:2", "misspeculated")
    b.abandon(2, 0, samples=3, tally={10: 1}, red=1)
    # Step 2 again, from the decided state; step 3 speculates on its leader again.
    b.start(2, 2, branch=1)
    b.request("2:3")
    b.request("2:4")
    b.vote("2:3", 3, {3: 1})
    b.start(3, 3, branch=1, speculative=True)
    b.request("3:1")
    b.request("3:2")
    b.hedge("2:5", straggler="2:4")
    b.vote("2:4", 3, {3: 2})  # the straggler answers before its hedge, and votes
    b.decide(2, 3, {3: 2}, samples=3, red=0)
    b.cancel("2:5", "decided")
    b.changed(2, 3)
    b.vote("3:1", 4, {4: 1})
    b.vote("3:2", 4, {4: 2})
    b.decide(3, 4, {4: 2}, samples=2, red=0)
    b.changed(3, 4)
    b.events.append(
        RunFinished(**b._env(), status="succeeded", steps=STEPS, samples=SAMPLES, red_flags=2)
    )
    return b.events


def write_log(path: Path, events: list[AnyEvent] | None = None) -> Path:
    """A log holding the run (or ``events``), written through the log's own store."""

    async def go() -> None:
        async with EventLog(path) as log:
            for event in events if events is not None else pipelined_events():
                await log.put(event)

    anyio.run(go)
    return path
