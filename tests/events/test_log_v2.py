"""The log's version 2 layout, with either writer: heads in ``runs``, append-only tables, chains
that cover the blobs, attach refusing a truncated run, and compact rows. (test_log.py's tests of
the contract run on this layout too: see its marks.)"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from events import CorruptEventError, EventLog, chain_hash
from maker import Engine, Policy, SimulatedModel
from maker.tasks import Hanoi

from ._factory import interleave, raw_rows, run_events
from ._kinds import V2_KINDS, log_kinds
from .test_log import write_log

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("log_kind"), log_kinds(*V2_KINDS)]


def stored_heads(path: Path) -> dict[str, tuple[int, bytes]]:
    with closing(sqlite3.connect(path)) as conn:
        return {
            str(run_id): (int(seq), bytes(digest))
            for run_id, seq, digest in conn.execute("SELECT run_id, head_seq, head_hash FROM runs")
        }


def assert_chain(rows: list[tuple[int, str, int | None, float, bytes, bytes]]) -> None:
    previous = b""
    for seq, _type, _step, _ts, covered, digest in rows:
        assert digest == chain_hash(previous, covered), f"chain broken at seq {seq}"
        previous = digest


async def test_heads_in_runs_match_the_last_rows_after_every_batch(tmp_path: Path) -> None:
    # Runs of different lengths, so that they finish in different batches, and batches that
    # end inside the queue with rows of every run on both sides.
    runs = {rid: run_events(rid, steps) for rid, steps in (("a", 10), ("b", 40), ("c", 25))}
    path = tmp_path / "log.db"
    async with EventLog(path, batch_size=37) as log:
        for i, ev in enumerate(interleave(*runs.values())):
            log.append(ev)
            if i % 101 == 0:
                await log.flush()
                heads = stored_heads(path)
                for rid in heads:
                    last = raw_rows(path, rid)[-1]
                    assert heads[rid] == (last[0], last[5])
        assert log.statistics().batches > 3
    heads = stored_heads(path)
    assert set(heads) == set(runs)
    for rid, evs in runs.items():
        rows = raw_rows(path, rid)
        assert_chain(rows)
        assert heads[rid] == (evs[-1].seq, rows[-1][5])
    with closing(sqlite3.connect(path)) as conn:
        finished = dict(conn.execute("SELECT run_id, finished_seq FROM runs").fetchall())
    assert finished == {rid: evs[-1].seq for rid, evs in runs.items()}
    async with EventLog(path, mode="r") as log:
        for rid, evs in runs.items():
            assert [e async for e in log.read(rid)] == evs
            info = await log.run(rid)
            assert (info.finished, info.last_seq) == (evs[-1], evs[-1].seq)


async def test_a_failed_batch_leaves_no_head_and_no_blob(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    evs = run_events("r", 2)
    await write_log(path, evs)
    before = stored_heads(path)
    with closing(sqlite3.connect(path)) as conn:
        blobs = conn.execute("SELECT count(*) FROM blobs").fetchone()[0]
    with pytest.raises(BaseExceptionGroup):  # noqa: PT012
        async with EventLog(path) as log:
            for ev in run_events("new", 3, samples_per_step=5):
                log.append(ev)
            log.append(evs[0])  # run "r" again without attach: the whole batch fails
    assert stored_heads(path) == before
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM blobs").fetchone()[0] == blobs


async def test_attach_refuses_a_truncated_run_or_one_without_a_head(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    evs = run_events("r", 5, finished=False)
    await write_log(path, [*evs, *run_events("gone", 1), *run_events("headless", 1)])
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("DROP TRIGGER events_append_only_delete")
        keys = dict(conn.execute("SELECT run_id, key FROM runs"))
        conn.execute("DELETE FROM events WHERE run = ? AND seq >= ?", (keys["r"], len(evs) - 3))
        conn.execute("DELETE FROM events WHERE run = ?", (keys["gone"],))
        conn.commit()
    async with EventLog(path) as log:
        with pytest.raises(CorruptEventError, match=rf"ends at seq {len(evs) - 4} .* says"):
            await log.attach("r")
        with pytest.raises(CorruptEventError, match=r"has a head at seq .* but no rows"):
            await log.attach("gone")
    assert stored_heads(path)["r"][0] == len(evs) - 1


async def test_tables_are_append_only_and_the_chain_covers_the_blobs(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    await write_log(path, run_events("r", 3))
    rows = raw_rows(path, "r")
    assert_chain(rows)
    with closing(sqlite3.connect(path)) as conn:
        for sql in (
            "UPDATE events SET body = x'00' WHERE seq = 1",
            "UPDATE events SET ts = ts + 1",
            "DELETE FROM events",
            "UPDATE blobs SET data = x'00'",
            "DELETE FROM blobs",
            "INSERT OR REPLACE INTO events SELECT run, seq, type, step, ts, x'00', hash"
            " FROM events WHERE seq = 2",
        ):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                conn.execute(sql)
        assert conn.execute("SELECT count(*) FROM blobs").fetchone()[0] > 0
        # Behind the triggers' back, a blob edited in place breaks the chain of its event.
        conn.execute("DROP TRIGGER blobs_append_only_update")
        (blob,) = conn.execute("SELECT id FROM blobs ORDER BY id LIMIT 1").fetchone()
        conn.execute("UPDATE blobs SET data = CAST(data || x'00' AS BLOB) WHERE id = ?", (blob,))
        conn.commit()
    with pytest.raises(AssertionError, match="chain broken"):
        assert_chain(raw_rows(path, "r"))


async def test_file_layout_of_version_2(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    await write_log(path, run_events("r", 2))
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        tables = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
        assert set(tables) == {"meta", "runs", "events", "blobs", "dictionaries"}
        assert all("STRICT" in sql for sql in tables.values())
        # No index beyond the keys: every index costs bytes per row.
        indexes = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        ).fetchall()
        assert indexes == []
        assert dict(conn.execute("SELECT key, value FROM meta"))["schema_version"] == "2"
    async with EventLog(path, mode="r") as log:
        assert log.schema_version == 2


@log_kinds((2, "thread"))
async def test_an_engine_run_is_compact_in_version_2(tmp_path: Path) -> None:
    """File bytes per sample of a real run. The goal is at most 400 on 20 disks; 10 disks
    measured 368 (the trained dictionary's 16 KB weigh more on a short run, the states less)."""
    sizes = {}
    for version in (1, 2):
        path = tmp_path / f"v{version}.db"
        log = EventLog(path, schema_version=version)
        async with log, Engine(log=log, client=SimulatedModel(preset="paper")) as engine:
            result = await engine.run(Hanoi(10), policy=Policy(k=3), seed=4)
        with closing(sqlite3.connect(path)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        sizes[version] = path.stat().st_size / result.samples
    assert sizes[2] < 400
    assert sizes[2] < sizes[1] / 4
    print(f"bytes per sample: v1 {sizes[1]:.0f}, v2 {sizes[2]:.0f}")
