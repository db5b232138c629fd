"""The child process of the kill tests: one Hanoi run at full speed, reporting through an mmap.

    python -m tests.replay._kill_child LOG PROGRESS --disks N --k K --seed S --commit-interval C
                                       [--writer thread|process] [--pipeline D]
                                       [--hedge Q] [--latency-ms L]

The run uses the in-process simulated model at zero latency, so the engine never waits for a
model and the log writer has to keep up: on the same event loop (``--writer thread``), or in a
process of its own that this one feeds (``--writer process``). An event sink stamps every
emitted event into the mmap'd file PROGRESS (see :class:`Progress`), which the parent reads at
any moment without ever blocking the child: a pipe could fill up and stall the run it measures.
"""

from __future__ import annotations

import argparse
import dataclasses
import mmap
import os
import struct
from typing import NamedTuple

import anyio

from events import Event, EventLog, StepDecided
from maker import Engine, Hedge, Policy, SimulatedModel
from maker.clients import PRESETS
from maker.tasks import Hanoi

# generation, then two slots of (last seq, its ts, last decided step, that decision's ts).
_GEN = struct.Struct("<q")
_SLOT = struct.Struct("<qdqd")
SIZE = _GEN.size + 2 * _SLOT.size


class Emitted(NamedTuple):
    """The newest event the child had emitted (appended to its log) when it was read."""

    events: int
    """How many events were emitted: 0 before ``run_started``."""
    seq: int
    ts: float
    decided_step: int
    """The newest ``step_decided`` step; -1 before the first."""
    decided_ts: float


class Progress:
    """Two slots and a generation: a slot is filled first, then the generation names it.

    A SIGKILL can land between any two instructions, so a slot may be half written; the
    generation is written last, in one aligned 8-byte store, and always names a complete slot.
    """

    def __init__(self, path: str) -> None:
        with open(path, "r+b") as file:
            self._map = mmap.mmap(file.fileno(), SIZE)
        self._gen = 0
        self._decided = (-1, 0.0)

    def __call__(self, event: Event) -> None:
        if isinstance(event, StepDecided):
            self._decided = (event.step, event.ts)
        gen = self._gen + 1
        _SLOT.pack_into(self._map, _GEN.size + (gen % 2) * _SLOT.size, event.seq, event.ts,
                        *self._decided)  # fmt: skip
        _GEN.pack_into(self._map, 0, gen)
        self._gen = gen


def create(path: str) -> None:
    """Make an empty progress file (generation 0) for a child to fill."""
    with open(path, "wb") as file:
        file.write(bytes(SIZE))


def read(path: str) -> Emitted:
    """What the child has emitted so far (or, once it is dead, in all)."""
    with open(path, "rb") as file, mmap.mmap(file.fileno(), SIZE, access=mmap.ACCESS_READ) as m:
        while True:
            (gen,) = _GEN.unpack_from(m, 0)
            seq, ts, step, decided_ts = _SLOT.unpack_from(m, _GEN.size + (gen % 2) * _SLOT.size)
            # A live child may refill this slot (two generations on) while it is read.
            if _GEN.unpack_from(m, 0)[0] - gen < 2:
                return Emitted(gen, seq, ts, step, decided_ts)


async def _run(args: argparse.Namespace) -> None:
    progress = Progress(args.progress)
    async with (
        EventLog(args.log, commit_interval=args.commit_interval, writer=args.writer) as log,
        Engine(log=log, client=_model(args.latency_ms), sinks=[progress]) as engine,
    ):
        policy = Policy(
            k=args.k,
            pipeline=args.pipeline,
            hedge=Hedge(quantile=args.hedge, min_s=0.001) if args.hedge else None,
        )
        await engine.run(Hanoi(args.disks), policy=policy, seed=args.seed)


def _model(latency_ms: float) -> SimulatedModel:
    """The paper's simulated model; with latency, the same model answering late."""
    if not latency_ms:
        return SimulatedModel(preset="paper")
    return SimulatedModel(dataclasses.replace(PRESETS["paper"], latency_ms=latency_ms))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log")
    parser.add_argument("progress")
    parser.add_argument("--disks", type=int, required=True)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--commit-interval", type=float, required=True)
    parser.add_argument("--writer", choices=["thread", "process"], default="thread")
    parser.add_argument("--pipeline", type=int, default=0)
    parser.add_argument("--hedge", type=float, default=0.0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    if not os.path.exists(args.progress):
        create(args.progress)
    anyio.run(_run, args)


if __name__ == "__main__":
    main()
