"""The append-only SQLite event log: ordering, readers, tail, reopening, identity, durability."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from contextlib import aclosing, closing
from pathlib import Path

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import pytest

from events import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    AmbiguousRunError,
    AnyEvent,
    CorruptEventError,
    EventLog,
    EventLogError,
    InvalidOptionError,
    LogClosedError,
    NotALogError,
    RunFinished,
    RunNotNamedError,
    RunStarted,
    SchemaVersionError,
    SequenceError,
    StepEvent,
    UnknownRunError,
    chain_hash,
    decode,
    event_tag,
)

from ._factory import interleave, raw_rows, run_events
from ._kinds import EVERY_KIND, V1_KINDS, log_kinds

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("log_kind"), log_kinds(*EVERY_KIND)]
"""The log's contract holds whatever the kind of log: every test here runs on every kind (see
conftest.py), but those that read version 1 rows with plain SQL, which run on version 1 files
with either writer."""

# A hang guard for tests whose tasks wait on one another; never a timing assertion.
HANG_GUARD = 60

v1_rows = log_kinds(*V1_KINDS)


async def read_all(log: EventLog, run_id: str, **kwargs: object) -> list[AnyEvent]:
    return [ev async for ev in log.read(run_id, **kwargs)]  # type: ignore[arg-type]


async def write_log(path: Path, evs: Sequence[AnyEvent]) -> None:
    async with EventLog(path) as log:
        for ev in evs:
            log.append(ev)


def assert_prefix(seen: Sequence[AnyEvent], final: Sequence[AnyEvent]) -> None:
    """``seen`` is a gap-free prefix (seqs 0..n-1) of ``final``."""
    assert [ev.seq for ev in seen] == list(range(len(seen)))
    assert list(seen) == list(final[: len(seen)])


def assert_chain(rows: Sequence[tuple[int, str, int | None, float, bytes, bytes]]) -> None:
    previous = b""
    for seq, _type, _step, _ts, body, digest in rows:
        expected = chain_hash(previous, body)
        assert digest == expected, f"chain broken at seq {seq}"
        previous = digest


# -- appending and reading -----------------------------------------------------------------


@v1_rows
async def test_many_batches_of_interleaved_runs_read_back_in_order(tmp_path: Path) -> None:
    runs = {rid: run_events(rid, 556) for rid in ("run-a", "run-b", "run-c")}
    total = sum(len(r) for r in runs.values())
    assert total >= 20_000
    path = tmp_path / "log.db"
    async with EventLog(path, batch_size=1000) as log:
        for i, ev in enumerate(interleave(*runs.values())):
            log.append(ev)
            if i % 700 == 0:
                await anyio.lowlevel.checkpoint()
        await log.flush()
        stats = log.statistics()
        assert stats.appended == stats.written == total
        assert stats.pending == 0
        # No batch holds more than batch_size rows.
        assert stats.batches >= total // 1000
        for rid, evs in runs.items():
            assert await read_all(log, rid) == evs
    # The stored columns agree with the events, and each run's chain holds.
    for rid, evs in runs.items():
        rows = raw_rows(path, rid)
        assert [r[0] for r in rows] == [ev.seq for ev in evs]
        assert [r[1] for r in rows] == [event_tag(type(ev)) for ev in evs]
        assert [r[2] for r in rows] == [
            ev.step if isinstance(ev, StepEvent) else None for ev in evs
        ]
        assert [r[3] for r in rows] == [ev.ts for ev in evs]
        assert [decode(r[4]) for r in rows] == evs
        assert_chain(rows)


async def test_statistics_count_appended_written_and_pending(tmp_path: Path) -> None:
    evs = run_events("r", 10)
    async with EventLog(tmp_path / "log.db") as log:
        assert log.statistics()[:4] == (0, 0, 0, 0)
        for ev in evs:
            log.append(ev)
        # append never waits for the writer.
        stats = log.statistics()
        assert stats.appended == len(evs)
        assert stats.written + stats.pending == len(evs)
        await log.flush()
        stats = log.statistics()
        assert (stats.appended, stats.written, stats.pending) == (len(evs), len(evs), 0)
        assert stats.batches >= 1


async def test_read_a_step_range(tmp_path: Path) -> None:
    evs = run_events("r", 10)
    path = tmp_path / "log.db"
    await write_log(path, evs)
    async with EventLog(path, mode="r") as log:
        got = await read_all(log, "r", steps=(2, 4))
        expected = [ev for ev in evs if isinstance(ev, StepEvent) and 2 <= ev.step <= 4]
        assert got == expected
        assert {ev.step for ev in got if isinstance(ev, StepEvent)} == {2, 3, 4}
        one = await read_all(log, "r", steps=(7, 7))
        assert one == [ev for ev in evs if isinstance(ev, StepEvent) and ev.step == 7]
        assert await read_all(log, "r", steps=(50, 60)) == []
        # A range combines with after_seq.
        cut = expected[5].seq
        assert await read_all(log, "r", steps=(2, 4), after_seq=cut) == expected[6:]


async def test_read_after_seq(tmp_path: Path) -> None:
    evs = run_events("r", 5)
    path = tmp_path / "log.db"
    await write_log(path, evs)
    async with EventLog(path, mode="r") as log:
        assert await read_all(log, "r", after_seq=-1) == evs
        for k in (0, 1, 17, len(evs) - 2):
            assert await read_all(log, "r", after_seq=k) == evs[k + 1 :]
        # Past the end is an empty read of a known run, not an error.
        assert await read_all(log, "r", after_seq=len(evs) - 1) == []
        assert await read_all(log, "r", after_seq=10**6) == []
        with pytest.raises(UnknownRunError):
            await read_all(log, "nope", after_seq=3)


async def test_read_sees_only_committed_events(tmp_path: Path) -> None:
    evs = run_events("r", 3)
    async with EventLog(tmp_path / "log.db") as log:
        log.append(evs[0])
        await log.flush()
        for ev in evs[1:]:
            log.append(ev)
        seen = await read_all(log, "r")
        assert_prefix(seen, evs)
        await log.flush()
        assert await read_all(log, "r") == evs


async def test_read_can_stop_early(tmp_path: Path) -> None:
    evs = run_events("r", 200)
    path = tmp_path / "log.db"
    await write_log(path, evs)
    async with EventLog(path, mode="r") as log:
        seen: list[AnyEvent] = []
        async with aclosing(log.read("r")) as stream:
            async for ev in stream:
                seen.append(ev)
                if len(seen) == 10:
                    break
        assert seen == evs[:10]


# -- tail ----------------------------------------------------------------------------------


async def test_tail_follows_a_run_being_written(tmp_path: Path) -> None:
    evs = run_events("live", 300)
    other = run_events("other", 50)
    seen: list[AnyEvent] = []
    checkpoints = [1, 40, 41, 500, 2000]
    reached = {n: anyio.Event() for n in checkpoints}

    async with EventLog(tmp_path / "log.db", batch_size=64) as log:
        log.append(evs[0])
        await log.flush()

        async def follow() -> None:
            async with aclosing(log.tail("live")) as stream:
                async for ev in stream:
                    seen.append(ev)
                    if len(seen) in reached:
                        reached[len(seen)].set()

        async def write() -> None:
            written = 1
            others = iter(other)
            for target in [*checkpoints, len(evs)]:
                # Write up to the next checkpoint in slices, with another run interleaved.
                while written < target:
                    upto = min(target, written + 37)
                    for ev in evs[written:upto]:
                        log.append(ev)
                    written = upto
                    extra = next(others, None)
                    if extra is not None:
                        log.append(extra)
                    await anyio.lowlevel.checkpoint()
                if target in reached:
                    # The tail must reach every checkpoint while the run is still open.
                    await reached[target].wait()
            for ev in others:
                log.append(ev)

        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                tg.start_soon(write)

    assert seen == evs
    assert isinstance(seen[-1], RunFinished)


async def test_tail_stops_at_run_finished_and_honours_after_seq(tmp_path: Path) -> None:
    evs = run_events("r", 4)
    path = tmp_path / "log.db"
    await write_log(path, evs)
    async with EventLog(path, mode="r") as log:
        with anyio.fail_after(HANG_GUARD):
            assert [ev async for ev in log.tail("r")] == evs
            assert [ev async for ev in log.tail("r", after_seq=10)] == evs[11:]


async def test_tail_from_another_log_object_polls(tmp_path: Path) -> None:
    """A read-only log object sees another writer's commits by polling, as across processes."""
    evs = run_events("r", 100)
    path = tmp_path / "log.db"
    seen: list[AnyEvent] = []
    half = len(evs) // 2
    halfway = anyio.Event()

    async with EventLog(path) as writer:
        writer.append(evs[0])
        await writer.flush()
        async with EventLog(path, mode="r", poll_interval=0.001) as reader:

            async def follow() -> None:
                async with aclosing(reader.tail("r")) as stream:
                    async for ev in stream:
                        seen.append(ev)
                        if len(seen) == half:
                            halfway.set()

            async def write() -> None:
                for ev in evs[1:half]:
                    writer.append(ev)
                await halfway.wait()
                for ev in evs[half:]:
                    writer.append(ev)

            with anyio.fail_after(HANG_GUARD):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(follow)
                    tg.start_soon(write)

    assert seen == evs


# -- reopening -----------------------------------------------------------------------------


@v1_rows
async def test_reopen_and_attach_continues_seq_and_chain(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    first = run_events("r", 20, finished=False)
    rest = run_events("r", 10, first_seq=len(first), first_step=20, start=False)
    assert rest[0].seq == len(first)
    side = run_events("s", 3)

    await write_log(path, [*first, *side])

    async with EventLog(path) as log:
        # Without attach the log does not know the run goes on.
        with pytest.raises(SequenceError) as info:
            log.append(rest[0])
        assert (info.value.expected, info.value.got) == (0, rest[0].seq)
        with pytest.raises(UnknownRunError):
            await log.attach("missing")
        assert await log.attach("r") == len(first)
        assert await log.attach("r") == len(first)
        with pytest.raises(SequenceError):
            log.append(first[-1])
        for ev in rest:
            log.append(ev)
        assert await log.attach("r") == len(first) + len(rest)

    rows = raw_rows(path, "r")
    assert [r[0] for r in rows] == list(range(len(first) + len(rest)))
    assert [decode(r[4]) for r in rows] == [*first, *rest]
    assert_chain(rows)
    assert_chain(raw_rows(path, "s"))

    async with EventLog(path, mode="r") as log:
        assert await read_all(log, "r") == [*first, *rest]
        info2 = await log.run("r")
        assert info2.finished == rest[-1]
        assert info2.last_seq == rest[-1].seq


def stored_heads(path: Path) -> dict[str, tuple[int, bytes]]:
    with closing(sqlite3.connect(path)) as conn:
        return {
            str(run_id): (int(seq), bytes(digest))
            for run_id, seq, digest in conn.execute("SELECT run_id, seq, hash FROM run_heads")
        }


@v1_rows
async def test_run_heads_hold_each_runs_last_seq_and_hash_after_every_batch(
    tmp_path: Path,
) -> None:
    runs = {rid: run_events(rid, 40) for rid in ("a", "b", "c")}
    path = tmp_path / "log.db"
    async with EventLog(path, batch_size=37) as log:
        for i, ev in enumerate(interleave(*runs.values())):
            log.append(ev)
            if i % 101 == 0:
                await log.flush()
                # A committed prefix carries heads that match its last rows exactly.
                heads = stored_heads(path)
                for rid in heads:
                    last = raw_rows(path, rid)[-1]
                    assert heads[rid] == (last[0], last[5])
        assert log.statistics().batches > 3
    heads = stored_heads(path)
    assert set(heads) == set(runs)
    for rid, evs in runs.items():
        last = raw_rows(path, rid)[-1]
        assert heads[rid] == (evs[-1].seq, last[5])


@v1_rows
async def test_run_heads_are_written_in_the_same_transaction_as_the_rows(tmp_path: Path) -> None:
    """A batch that fails to insert leaves no head behind for its runs."""
    path = tmp_path / "log.db"
    evs = run_events("r", 2)
    await write_log(path, evs)
    before = stored_heads(path)
    with pytest.raises(BaseExceptionGroup):  # noqa: PT012
        async with EventLog(path) as log:
            for ev in run_events("new", 3):
                log.append(ev)
            log.append(evs[0])  # collides with the stored row: the whole batch fails
    assert stored_heads(path) == before


@v1_rows
async def test_attach_refuses_a_run_whose_rows_do_not_reach_its_head(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    evs = run_events("r", 5, finished=False)
    await write_log(path, [*evs, *run_events("gone", 1)])
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("DROP TRIGGER events_append_only_delete")
        conn.execute("DELETE FROM events WHERE run_id = 'r' AND seq >= ?", (len(evs) - 3,))
        conn.execute("DELETE FROM events WHERE run_id = 'gone'")
        conn.commit()
    async with EventLog(path) as log:
        with pytest.raises(CorruptEventError, match=rf"ends at seq {len(evs) - 4} .* says"):
            await log.attach("r")
        with pytest.raises(CorruptEventError, match=r"has a head at seq .* but no rows"):
            await log.attach("gone")
    # The refused attach wrote nothing: the head still seals the original end.
    assert stored_heads(path)["r"][0] == len(evs) - 1


@v1_rows
async def test_attach_refuses_a_run_without_a_head(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    await write_log(path, run_events("r", 2, finished=False))
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("DELETE FROM run_heads")
        conn.commit()
    async with EventLog(path) as log:
        with pytest.raises(CorruptEventError, match="rows but no head"):
            await log.attach("r")


async def test_chain_detects_a_changed_body(tmp_path: Path) -> None:
    """The check the tests rely on can fail: a forged body breaks the recomputed chain."""
    path = tmp_path / "log.db"
    await write_log(path, run_events("r", 2))
    rows = raw_rows(path, "r")
    assert_chain(rows)
    forged = list(rows)
    seq, typ, step, ts, body, digest = forged[3]
    forged[3] = (seq, typ, step, ts, body.replace(b"sim-a", b"sim-b"), digest)
    assert forged[3][4] != body
    with pytest.raises(AssertionError, match="chain broken at seq 3"):
        assert_chain(forged)


async def test_appending_a_run_again_after_reopen_without_attach_is_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log.db"
    await write_log(path, run_events("r", 1))
    async with EventLog(path) as log:
        await log.attach("r")
        with pytest.raises(SequenceError):
            log.append(run_events("r", 1)[0])


# -- sequence errors -----------------------------------------------------------------------


async def test_sequence_error_on_gap_or_repeat(tmp_path: Path) -> None:
    evs = run_events("r", 2)
    async with EventLog(tmp_path / "log.db") as log:
        with pytest.raises(SequenceError) as info:
            log.append(evs[1])  # a run must begin at seq 0
        assert (info.value.run_id, info.value.expected, info.value.got) == ("r", 0, 1)
        log.append(evs[0])
        log.append(evs[1])
        with pytest.raises(SequenceError) as info:
            log.append(evs[3])  # gap
        assert (info.value.expected, info.value.got) == (2, 3)
        with pytest.raises(SequenceError) as info:
            log.append(evs[1])  # repeat
        assert (info.value.expected, info.value.got) == (2, 1)
        assert isinstance(info.value, EventLogError)
        # Refused events were not queued, and the log carries on.
        assert log.statistics().appended == 2
        for ev in evs[2:]:
            log.append(ev)
        await log.flush()
        assert await read_all(log, "r") == evs
    assert_chain(raw_rows(tmp_path / "log.db", "r"))


# -- runs ----------------------------------------------------------------------------------


async def test_unknown_run(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    await write_log(path, run_events("known", 1))
    async with EventLog(path, mode="r") as log:
        with pytest.raises(UnknownRunError) as info:
            await read_all(log, "unknown")
        assert info.value.run_id == "unknown"
        with pytest.raises(UnknownRunError) as info:
            await log.run("unknown")
        assert info.value.run_id == "unknown"
        with pytest.raises(UnknownRunError):
            await read_all(log, "unknown", steps=(0, 3))
        # A known run with nothing in the range is not unknown.
        assert await read_all(log, "known", steps=(5, 9)) == []


async def test_run_without_id_needs_exactly_one_run(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    async with EventLog(path) as log:
        with pytest.raises(UnknownRunError):
            await log.run()
        one = run_events("only", 2)
        for ev in one:
            log.append(ev)
        await log.flush()
        info = await log.run(None)
        assert info.run_id == "only"
        assert info.started == one[0]
        assert info.finished == one[-1]
        for ev in run_events("second", 1, finished=False):
            log.append(ev)
        await log.flush()
        with pytest.raises(UnknownRunError):
            await log.run()


async def test_run_matches_a_unique_prefix(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    await write_log(
        path,
        list(
            interleave(*(run_events(rid, 1) for rid in ("alpha-1", "alpha-2", "beta", "ab", "abc")))
        ),
    )
    async with EventLog(path, mode="r") as log:
        assert (await log.run("bet")).run_id == "beta"
        assert (await log.run("alpha-2")).run_id == "alpha-2"
        assert (await log.run("alpha-1")).run_id == "alpha-1"
        # An exact id wins over being a prefix of another.
        assert (await log.run("ab")).run_id == "ab"
        with pytest.raises(UnknownRunError):
            await log.run("alpha")  # ambiguous
        with pytest.raises(UnknownRunError):
            await log.run("gamma")
        with pytest.raises(UnknownRunError):
            await log.run("beta-and-more")


async def test_a_run_not_named_or_named_by_too_little_is_said_in_one_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log.db"
    async with EventLog(path) as log:
        with pytest.raises(RunNotNamedError) as empty:
            await log.run()
        assert str(empty.value) == "the log holds no runs"
    ids = ["alpha-1", "alpha-2", "beta", "gamma", "delta", "eps", "zeta"]
    await write_log(path, list(interleave(*(run_events(rid, 1) for rid in ids[:3]))))
    async with EventLog(path, mode="r") as log:
        order = [info.run_id for info in await log.runs()]
        with pytest.raises(UnknownRunError) as unnamed:
            await log.run()
        # One message, not one wrapped in "no run '...' in the log".
        assert str(unnamed.value) == (
            f"the log holds 3 runs; name one with --run ({', '.join(order)})"
        )
        assert isinstance(unnamed.value, RunNotNamedError)
        assert unnamed.value.run_ids == tuple(order)
        with pytest.raises(UnknownRunError) as ambiguous:
            await log.run("alpha")
        assert isinstance(ambiguous.value, AmbiguousRunError)
        assert ambiguous.value.run_id == "alpha"
        assert str(ambiguous.value) == (
            "'alpha' is the start of 2 runs' ids (alpha-1, alpha-2); give more of the one you mean"
        )
        with pytest.raises(UnknownRunError) as unknown:
            await log.run("omega")
        assert type(unknown.value) is UnknownRunError
        assert str(unknown.value) == "no run 'omega' in the log"
    await write_log(path, list(interleave(*(run_events(rid, 1) for rid in ids[3:]))))
    async with EventLog(path, mode="r") as log:
        with pytest.raises(
            RunNotNamedError, match=r"7 runs; name one with --run \(.*, and 2 more\)$"
        ):
            await log.run()


async def test_runs_lists_started_and_finished(tmp_path: Path) -> None:
    done = run_events("done", 3)
    open_ = run_events("open", 2, finished=False)
    failed = run_events("failed", 1, finished=False)
    failed.append(
        RunFinished(
            run_id="failed",
            seq=len(failed),
            ts=2e9,
            status="failed",
            steps=1,
            samples=3,
            reason="budget exhausted",
        )
    )
    path = tmp_path / "log.db"
    await write_log(path, [*done, *list(interleave(open_, failed))])
    async with EventLog(path, mode="r") as log:
        runs = {info.run_id: info for info in await log.runs()}
    assert set(runs) == {"done", "open", "failed"}
    assert runs["done"].started == done[0]
    assert isinstance(runs["done"].started, RunStarted)
    assert runs["done"].finished == done[-1]
    assert runs["done"].last_seq == done[-1].seq
    assert runs["open"].started == open_[0]
    assert runs["open"].finished is None
    assert runs["open"].last_seq == open_[-1].seq
    assert runs["failed"].finished == failed[-1]
    assert runs["failed"].finished is not None
    assert runs["failed"].finished.reason == "budget exhausted"


async def test_runs_of_an_empty_log(tmp_path: Path) -> None:
    async with EventLog(tmp_path / "log.db") as log:
        assert await log.runs() == []


# -- identity ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["w", "r"])
async def test_another_sqlite_application_is_not_a_log(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "other.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO customers (name) VALUES ('ada')")
        conn.commit()
    before = path.read_bytes()
    with pytest.raises(NotALogError) as info:
        async with EventLog(path, mode=mode):  # type: ignore[arg-type]
            pass
    assert info.value.path == str(path)
    assert isinstance(info.value, EventLogError)
    # The foreign file is left exactly as it was.
    assert path.read_bytes() == before
    with closing(sqlite3.connect(path)) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables == {"customers"}
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


@pytest.mark.parametrize("mode", ["w", "r"])
async def test_a_text_file_is_not_a_log(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "notes.txt"
    text = "these are my notes, not a database\n" * 50
    path.write_text(text)
    with pytest.raises(NotALogError):
        async with EventLog(path, mode=mode):  # type: ignore[arg-type]
            pass
    assert path.read_text() == text


async def test_an_empty_file_is_not_a_log_to_read_but_becomes_one_to_write(
    tmp_path: Path,
) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    with pytest.raises(NotALogError):
        async with EventLog(path, mode="r"):
            pass
    evs = run_events("r", 1)
    await write_log(path, evs)
    async with EventLog(path, mode="r") as log:
        assert await read_all(log, "r") == evs


async def test_a_directory_is_not_a_log(tmp_path: Path) -> None:
    with pytest.raises(NotALogError):
        async with EventLog(tmp_path, mode="r"):
            pass


@pytest.mark.parametrize("mode", ["w", "r"])
async def test_unknown_schema_version(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "log.db"
    await write_log(path, run_events("r", 1))
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA user_version = 99")
        conn.commit()
    with pytest.raises(SchemaVersionError) as info:
        async with EventLog(path, mode=mode):  # type: ignore[arg-type]
            pass
    assert (info.value.found, info.value.supported) == (99, SCHEMA_VERSION)
    assert isinstance(info.value, EventLogError)


async def test_missing_file_in_read_mode_is_an_error_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "missing.db"
    with pytest.raises(EventLogError):
        async with EventLog(path, mode="r"):
            pass
    assert not path.exists()
    assert not path.parent.exists()
    log = EventLog(path, mode="r")
    with pytest.raises(EventLogError):
        await read_all(log, "r")
    with pytest.raises(EventLogError):
        await log.runs()
    assert not path.parent.exists()


async def test_write_mode_creates_missing_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "log.db"
    evs = run_events("r", 1)
    await write_log(path, evs)
    async with EventLog(path, mode="r") as log:
        assert await read_all(log, "r") == evs


async def test_read_mode_refuses_to_append(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    evs = run_events("r", 1)
    await write_log(path, evs[:2])
    async with EventLog(path, mode="r") as log:
        with pytest.raises(LogClosedError):
            log.append(evs[2])
        with pytest.raises(LogClosedError):
            await log.attach("r")
        assert await read_all(log, "r") == evs[:2]
    assert len(raw_rows(path, "r")) == 2


async def test_a_closed_log_refuses_to_append(tmp_path: Path) -> None:
    evs = run_events("r", 1)
    log = EventLog(tmp_path / "log.db")
    with pytest.raises(LogClosedError):
        log.append(evs[0])
    async with log:
        log.append(evs[0])
    with pytest.raises(LogClosedError):
        log.append(evs[1])
    assert await read_all(log, "r") == evs[:1]


def test_invalid_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode"):
        EventLog(tmp_path / "x.db", mode="a")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        EventLog(tmp_path / "x.db", batch_size=0)
    with pytest.raises(ValueError, match="poll_interval"):
        EventLog(tmp_path / "x.db", poll_interval=0)
    with pytest.raises(ValueError, match="commit_interval"):
        EventLog(tmp_path / "x.db", commit_interval=-1)
    assert not (tmp_path / "x.db").exists()


def test_an_invalid_option_is_the_logs_own_error_and_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidOptionError) as info:
        EventLog(tmp_path / "x.db", max_pending_bytes=0)
    assert str(info.value) == "max_pending_bytes must be at least 1, got 0"
    assert (info.value.name, info.value.value) == ("max_pending_bytes", 0)
    assert isinstance(info.value, EventLogError)
    assert isinstance(info.value, ValueError)
    with pytest.raises(InvalidOptionError, match=r"^schema_version must be one of 1, 2, 3, got 7$"):
        EventLog(tmp_path / "x.db", schema_version=7)


@v1_rows
async def test_file_layout_wal_strict_and_ids(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    await write_log(path, run_events("r", 1))
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1  # this module's layout
        tables = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
        assert {"events", "meta", "run_heads"} <= set(tables)
        for name in ("events", "meta", "run_heads"):
            assert "STRICT" in tables[name].upper(), name
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        assert meta["schema_version"] == "1"
        # STRICT is enforced: a wrongly typed value cannot get in.
        with pytest.raises(sqlite3.DatabaseError):
            conn.execute(
                "INSERT INTO events (run_id, seq, type, step, ts, body, hash)"
                " VALUES ('x', 'not a number', 't', NULL, 0.0, x'00', x'00')"
            )


# -- append-only ---------------------------------------------------------------------------


@v1_rows
async def test_events_table_is_append_only(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    evs = run_events("r", 2)
    await write_log(path, evs)
    before = raw_rows(path, "r")
    with closing(sqlite3.connect(path)) as conn:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE events SET body = x'00' WHERE seq = 1")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE events SET ts = ts + 1")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM events WHERE run_id = 'r'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM events")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(
                "INSERT OR REPLACE INTO events (run_id, seq, type, step, ts, body, hash)"
                " SELECT run_id, seq, type, step, ts, x'00', hash FROM events WHERE seq = 2"
            )
        conn.commit()
    assert raw_rows(path, "r") == before


# -- concurrency ---------------------------------------------------------------------------


@v1_rows
async def test_concurrent_readers_see_gap_free_prefixes(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    final = run_events("r", 400)  # 4,802 events
    half = len(final) // 2
    n_readers = 3
    lengths: list[list[int]] = [[] for _ in range(n_readers)]
    saw_half = [anyio.Event() for _ in range(n_readers)]
    thread_saw_half = anyio.Event()
    thread_lengths: list[int] = []
    stop_thread = threading.Event()

    def thread_reader() -> None:
        # Plain sqlite3 in its own OS thread: another client of the file.
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            while not stop_thread.is_set():
                rows = conn.execute(
                    "SELECT body FROM events WHERE run_id = 'r' ORDER BY seq"
                ).fetchall()
                seen = [decode(body) for (body,) in rows]
                assert_prefix(seen, final)
                thread_lengths.append(len(seen))
                if len(seen) >= half and not thread_saw_half.is_set():
                    anyio.from_thread.run_sync(thread_saw_half.set)
                if len(seen) == len(final):
                    return

    async with EventLog(path, batch_size=256) as log:
        log.append(final[0])
        await log.flush()

        async def reader(i: int) -> None:
            while True:
                seen = await read_all(log, "r")
                assert_prefix(seen, final)
                lengths[i].append(len(seen))
                if len(seen) >= half:
                    saw_half[i].set()
                if len(seen) == len(final):
                    return

        async def writer() -> None:
            try:
                for start in range(1, len(final), 150):
                    stop = min(start + 150, len(final))
                    if start < half <= stop:
                        stop = half
                    for ev in final[start:stop]:
                        log.append(ev)
                    await anyio.lowlevel.checkpoint()
                    if stop == half:
                        await log.flush()
                        # Hold the run half-written until every reader has seen that prefix.
                        for event in [*saw_half, thread_saw_half]:
                            await event.wait()
                        for ev in final[half:]:
                            log.append(ev)
                            if ev.seq % 300 == 0:
                                await anyio.lowlevel.checkpoint()
                        return
            except BaseException:
                stop_thread.set()
                raise

        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                for i in range(n_readers):
                    tg.start_soon(reader, i)
                tg.start_soon(writer)
                await anyio.to_thread.run_sync(thread_reader)

    for seen_lengths in [*lengths, thread_lengths]:
        # Every reader saw the half-written run as it was, then the whole run; never less later.
        assert half in seen_lengths
        assert seen_lengths[-1] == len(final)
        assert seen_lengths == sorted(seen_lengths)


# -- durability ----------------------------------------------------------------------------


async def test_closing_flushes_everything(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    evs = run_events("r", 834)[:10_000]
    assert len(evs) == 10_000
    async with EventLog(path, batch_size=512) as log:
        for ev in evs:
            log.append(ev)
        assert log.statistics().appended == 10_000
    assert log.statistics().written == 10_000
    async with EventLog(path, mode="r") as fresh:
        assert await read_all(fresh, "r") == evs
    rows = raw_rows(path, "r")
    assert len(rows) == 10_000
    assert_chain(rows)


async def test_cancelled_scope_still_writes_everything_appended(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    evs = run_events("r", 300)
    half = len(evs) // 2
    with anyio.CancelScope() as scope:
        async with EventLog(path, batch_size=100) as log:
            for ev in evs[:half]:
                log.append(ev)
            await log.flush()
            for ev in evs[half:]:
                log.append(ev)
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert log.statistics().written == len(evs)
    async with EventLog(path, mode="r") as fresh:
        assert await read_all(fresh, "r") == evs
    assert_chain(raw_rows(path, "r"))


async def test_cancelled_from_outside_while_idle_still_writes_everything(tmp_path: Path) -> None:
    """Cancellation arriving from an enclosing task group, while the writer waits for work."""
    path = tmp_path / "log.db"
    evs = run_events("r", 50)
    appended = anyio.Event()

    async def body() -> None:
        async with EventLog(path, batch_size=7) as log:
            for ev in evs:
                log.append(ev)
            appended.set()
            await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(body)
        await appended.wait()
        tg.cancel_scope.cancel()
    async with EventLog(path, mode="r") as fresh:
        assert await read_all(fresh, "r") == evs


async def test_an_error_in_the_body_still_writes_everything_and_propagates(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log.db"
    evs = run_events("r", 20)

    class Boom(Exception):
        pass

    async def body() -> None:
        async with EventLog(path) as log:
            for ev in evs:
                log.append(ev)
            raise Boom

    # The body's own exception comes out as it is, not wrapped in an ExceptionGroup.
    with pytest.raises(Boom):
        await body()
    async with EventLog(path, mode="r") as fresh:
        assert await read_all(fresh, "r") == evs


async def test_a_failed_write_surfaces_and_leaves_a_consistent_prefix(tmp_path: Path) -> None:
    """Re-appending a stored run without ``attach`` collides in SQLite; the writer stops."""
    path = tmp_path / "log.db"
    evs = run_events("r", 2)
    await write_log(path, evs)
    before = raw_rows(path, "r")
    failures: list[BaseException] = []
    flush_error: list[BaseException] = []
    try:
        async with EventLog(path) as log:
            for ev in run_events("new", 3):
                log.append(ev)
            log.append(evs[0])
            try:
                await log.flush()
            except LogClosedError as exc:
                flush_error.append(exc)
                raise
    except* EventLogError as group:
        failures.extend(group.exceptions)
    assert failures
    assert flush_error
    assert raw_rows(path, "r") == before
    # The failed batch was rolled back whole: the other run's events in it are not there either.
    assert raw_rows(path, "new") == []
    with pytest.raises(LogClosedError):
        log.append(evs[1])


async def test_no_append_accepted_while_closing_is_lost(tmp_path: Path) -> None:
    """Another task appending while the log closes is either refused or written, never lost."""
    path = tmp_path / "log.db"
    evs = run_events("r", 2000)
    accepted: list[AnyEvent] = []
    log = EventLog(path, batch_size=16)
    started = anyio.Event()

    async def keep_appending() -> None:
        for ev in evs:
            try:
                log.append(ev)
            except LogClosedError:
                return
            accepted.append(ev)
            started.set()
            await anyio.lowlevel.checkpoint()
        raise AssertionError("the log never closed")

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg, log:
            tg.start_soon(keep_appending)
            await started.wait()
            for _ in range(20):
                await anyio.lowlevel.checkpoint()
    assert len(accepted) > 1
    stats = log.statistics()
    assert stats.appended == stats.written == len(accepted)
    async with EventLog(path, mode="r") as fresh:
        assert await read_all(fresh, "r") == accepted
