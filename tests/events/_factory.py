"""Builders of realistic event sequences for the events tests."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

from events import (
    AnyEvent,
    CorruptEventError,
    RedFlagged,
    RunFinished,
    RunStarted,
    SampleReceived,
    SampleRequested,
    StateChanged,
    StepDecided,
    StepStarted,
    VoteCounted,
    canonical_json,
)
from events._compact import TYPE_BY_CODE
from events._formats import StoredRow, V2Reader, v2_covered


def run_events(
    run_id: str,
    steps: int,
    *,
    samples_per_step: int = 3,
    finished: bool = True,
    first_seq: int = 0,
    first_step: int = 0,
    start: bool = True,
) -> list[AnyEvent]:
    """The events of a small run of the counting task, in seq order.

    Every step has a ``step_started``, ``samples_per_step`` requests, answers and votes (the last
    sample of every fifth step is red-flagged instead), a decision and a state change.
    """
    out: list[AnyEvent] = []

    def seq() -> int:
        return first_seq + len(out)

    if start:
        out.append(
            RunStarted(
                run_id=run_id,
                seq=seq(),
                ts=1_700_000_000.0,
                task="count",
                task_params={"target": steps},
                policy={"k": 2, "max_samples": 20},
                models=["sim-a", "sim-b"],
                model_params={"temperature": [0.0, 0.1]},
                seed=7,
                version="0.1.0",
                initial_state={"n": first_step},
            )
        )
    for step in range(first_step, first_step + steps):
        state = {"n": step}
        answer = canonical_json({"move": step + 1})
        out.append(StepStarted(run_id=run_id, seq=seq(), ts=float(step), step=step, state=state))
        tally: dict[str, int] = {}
        red = 0
        for ordinal in range(samples_per_step):
            sid = f"{step}:{ordinal}"
            ts = float(step) + ordinal / 10
            out.append(
                SampleRequested(
                    seq=seq(),
                    sample_id=sid,
                    model="sim-a",
                    temperature=0.1,
                    run_id=run_id,
                    ts=ts,
                    step=step,
                )
            )
            out.append(
                SampleReceived(
                    seq=seq(),
                    sample_id=sid,
                    text=f"move = {step + 1}",
                    model="sim-a",
                    latency_s=0.25,
                    input_tokens=100 + step,
                    output_tokens=7,
                    finish_reason="stop",
                    run_id=run_id,
                    ts=ts,
                    step=step,
                )
            )
            if step % 5 == 4 and ordinal == samples_per_step - 1:
                red += 1
                out.append(
                    RedFlagged(
                        seq=seq(),
                        sample_id=sid,
                        reason="too_long",
                        detail="x",
                        run_id=run_id,
                        ts=ts,
                        step=step,
                    )
                )
            else:
                tally[answer] = tally.get(answer, 0) + 1
                out.append(
                    VoteCounted(
                        seq=seq(),
                        sample_id=sid,
                        candidate=answer,
                        tally=dict(tally),
                        run_id=run_id,
                        ts=ts,
                        step=step,
                    )
                )
        out.append(
            StepDecided(
                run_id=run_id,
                seq=seq(),
                ts=float(step) + 0.9,
                step=step,
                winner=answer,
                votes=dict(tally),
                samples=samples_per_step,
                red_flags=red,
            )
        )
        out.append(
            StateChanged(
                run_id=run_id, seq=seq(), ts=float(step) + 0.95, step=step, state={"n": step + 1}
            )
        )
    if finished:
        out.append(
            RunFinished(
                run_id=run_id,
                seq=seq(),
                ts=1_700_000_100.0,
                status="succeeded",
                steps=first_step + steps,
                samples=(first_step + steps) * samples_per_step,
            )
        )
    return out


def interleave(*runs: list[AnyEvent]) -> Iterator[AnyEvent]:
    """Round-robin over several runs' events, keeping each run's own order."""
    iters = [iter(r) for r in runs]
    while iters:
        alive = []
        for it in iters:
            ev = next(it, None)
            if ev is not None:
                alive.append(it)
                yield ev
        iters = alive


def raw_rows(path: Path, run_id: str) -> list[tuple[int, str, int | None, float, bytes, bytes]]:
    """A run's stored rows read with plain sqlite3: (seq, type, step, ts, body, hash).

    In a version 2 file ``type`` is the tag of the stored code and ``body`` is what the chain
    hash covers (the body followed by the blobs it refers to), so chains check the same way.
    """
    with closing(sqlite3.connect(path)) as conn:
        if conn.execute("PRAGMA user_version").fetchone()[0] == 1:
            rows = conn.execute(
                "SELECT seq, type, step, ts, body, hash FROM events WHERE run_id = ? ORDER BY seq",
                (run_id,),
            ).fetchall()
            return [(int(a), str(b), c, float(d), bytes(e), bytes(f)) for a, b, c, d, e, f in rows]
        found = conn.execute("SELECT key FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if found is None:
            return []
        key = found[0]
        reader = V2Reader()
        reader.add_dictionaries(conn.execute("SELECT id, data FROM dictionaries"))
        return [
            (seq, type_, step, ts, covered, digest)
            for _, seq, type_, step, ts, covered, digest, _ in plain_v2_rows(
                conn, reader, int(key), run_id
            )
        ]


def plain_v2_rows(
    conn: sqlite3.Connection, reader: V2Reader, key: int, run_id: str
) -> list[StoredRow]:
    """A version 2 run's rows read the plain way, as the store's own decoder defines them: the
    blobs each body refers to fetched first, what the hash covers computed by a parse of its
    own, then the body decoded."""
    out = []
    for seq, code, step, ts, body, digest in conn.execute(
        "SELECT seq, type, step, ts, body, hash FROM events WHERE run = ? ORDER BY seq", (key,)
    ):
        body = bytes(body)
        wanted = reader.needed([body])
        if wanted:
            marks = ", ".join("?" * len(wanted))
            reader.blobs.add(
                conn.execute(f"SELECT id, data FROM blobs WHERE id IN ({marks})", wanted)
            )
        tag = TYPE_BY_CODE.get(int(code))
        envelope = v2_covered(run_id, int(seq), int(code), step, float(ts))
        decoded: AnyEvent | CorruptEventError
        try:
            covered = envelope + reader.covered(body)
            decoded = reader.decode(run_id, int(seq), float(ts), int(code), step, body)
        except CorruptEventError as exc:
            covered, decoded = envelope + body, exc
        out.append(
            (
                run_id,
                int(seq),
                tag if tag is not None else f"?{code}",
                None if step is None else int(step),
                float(ts),
                covered,
                bytes(digest),
                decoded,
            )
        )
    return out
