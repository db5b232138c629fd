"""Integrity checks on version 2 logs: damage to rows, heads and blobs is found at its seq."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from events import AnyEvent, SampleReceived
from events._formats import V2Reader
from maker.tasks import Hanoi
from replay import BrokenLogError, LogReport, check_run, verify_log

from ._logs import copy_log, load, record


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    path = tmp_path_factory.mktemp("integrity2") / "runs.db"
    results = record(path, lambda: Hanoi(4), [1, 2, 3], schema_version=2)
    return path, [r.run_id for r in results]


@pytest.fixture
def copy(recorded: tuple[Path, list[str]], tmp_path: Path) -> Path:
    return copy_log(recorded[0], tmp_path / "copy.db")


@pytest.fixture
def victim(recorded: tuple[Path, list[str]]) -> str:
    return recorded[1][1]


@contextmanager
def tampering(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection with the append-only triggers dropped; commits on exit."""
    with closing(sqlite3.connect(path)) as conn:
        for table in ("events", "blobs"):
            for trigger in ("update", "delete"):
                conn.execute(f"DROP TRIGGER IF EXISTS {table}_append_only_{trigger}")
        yield conn
        conn.commit()


def key_of(conn: sqlite3.Connection, run_id: str) -> int:
    return int(conn.execute("SELECT key FROM runs WHERE run_id = ?", (run_id,)).fetchone()[0])


def only_broken(report: LogReport, run_id: str) -> tuple[int | None, str]:
    assert not report.ok
    assert [run.run_id for run in report.broken] == [run_id], [r.line() for r in report.runs]
    assert len(report.runs) == 3
    return report.broken[0].first_bad_seq, report.broken[0].problem


def test_an_intact_version_2_log_verifies_clean(recorded: tuple[Path, list[str]]) -> None:
    path, run_ids = recorded
    report = verify_log(path)
    assert report.ok, [run.line() for run in report.runs]
    assert [run.run_id for run in report.runs] == sorted(run_ids, key=run_ids.index)
    assert report.events == sum(len(load(path, run_id)) for run_id in run_ids)
    for run_id in run_ids:
        assert check_run(path, run_id).ok


@pytest.mark.parametrize("seq", [0, 7, 20])
def test_a_flipped_bit_in_a_body_is_found_at_its_seq(copy: Path, victim: str, seq: int) -> None:
    with tampering(copy) as conn:
        key = key_of(conn, victim)
        (body,) = conn.execute(
            "SELECT body FROM events WHERE run = ? AND seq = ?", (key, seq)
        ).fetchone()
        flipped = bytearray(body)
        flipped[len(flipped) // 2] ^= 0x04
        conn.execute(
            "UPDATE events SET body = ? WHERE run = ? AND seq = ?", (bytes(flipped), key, seq)
        )
    bad, problem = only_broken(verify_log(copy), victim)
    assert bad == seq
    assert "hash mismatch" in problem or "does not decode" in problem
    with pytest.raises(BrokenLogError, match=f"at seq {seq}"):
        check_run(copy, victim)


def test_an_edited_blob_breaks_the_first_event_that_refers_to_it(copy: Path, victim: str) -> None:
    events: list[AnyEvent] = load(copy, victim)
    target = next(e for e in events if isinstance(e, SampleReceived))
    with tampering(copy) as conn:
        key = key_of(conn, victim)
        (body,) = conn.execute(
            "SELECT body FROM events WHERE run = ? AND seq = ?", (key, target.seq)
        ).fetchone()
        (blob,) = V2Reader().decoder.refs(bytes(body))[:1]  # the text's blob
        conn.execute("UPDATE blobs SET data = CAST(data || x'20' AS BLOB) WHERE id = ?", (blob,))
        # The first event of the run that refers to it:
        first = min(
            int(seq)
            for seq, other in conn.execute(
                "SELECT seq, body FROM events WHERE run = ? ORDER BY seq", (key,)
            )
            if blob in V2Reader().decoder.refs(bytes(other))
        )
    bad, problem = only_broken(verify_log(copy), victim)
    assert (bad, problem) == (
        first,
        f"hash mismatch at seq {first} (the row was edited or flipped)",
    )


def test_deleted_and_truncated_rows_are_found(copy: Path, victim: str) -> None:
    total = len(load(copy, victim))
    with tampering(copy) as conn:
        key = key_of(conn, victim)
        conn.execute("DELETE FROM events WHERE run = ? AND seq = 9", (key,))
    bad, problem = only_broken(verify_log(copy), victim)
    assert (bad, problem) == (9, "seq 9 missing (rows deleted)")
    with tampering(copy) as conn:
        conn.execute("DELETE FROM events WHERE run = ? AND seq >= 9", (key,))
    bad, problem = only_broken(verify_log(copy), victim)
    assert bad == 9
    assert problem == f"ends at seq 8 but its head says {total - 1} (truncated)"


def test_swapped_rows_and_a_flipped_stored_hash_are_found(copy: Path, victim: str) -> None:
    with tampering(copy) as conn:
        key = key_of(conn, victim)
        a, b = (
            conn.execute(
                "SELECT body FROM events WHERE run = ? AND seq = ?", (key, seq)
            ).fetchone()[0]
            for seq in (4, 5)
        )
        conn.execute("UPDATE events SET body = ? WHERE run = ? AND seq = 4", (b, key))
        conn.execute("UPDATE events SET body = ? WHERE run = ? AND seq = 5", (a, key))
    bad, _ = only_broken(verify_log(copy), victim)
    assert bad == 4


def test_a_flipped_stored_hash_is_found(copy: Path, victim: str) -> None:
    with tampering(copy) as conn:
        key = key_of(conn, victim)
        (digest,) = conn.execute(
            "SELECT hash FROM events WHERE run = ? AND seq = 6", (key,)
        ).fetchone()
        flipped = bytes([digest[0] ^ 1]) + bytes(digest[1:])
        conn.execute("UPDATE events SET hash = ? WHERE run = ? AND seq = 6", (flipped, key))
    bad, problem = only_broken(verify_log(copy), victim)
    assert (bad, problem) == (6, "the stored hash of seq 6 was altered (bit flip)")


def test_rows_whose_run_is_gone_from_the_runs_table_are_broken(copy: Path, victim: str) -> None:
    with tampering(copy) as conn:
        key = key_of(conn, victim)
        conn.execute("DELETE FROM runs WHERE key = ?", (key,))
    report = verify_log(copy)
    assert not report.ok
    (broken,) = report.broken
    assert broken.run_id == f"<run key {key}>"
    # Its rows chain from their true run id, which is gone with the runs row: the first row
    # no longer checks.
    assert broken.first_bad_seq == 0
