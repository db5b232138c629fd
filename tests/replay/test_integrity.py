"""Integrity checks on real logs: every kind of damage is found, at the right seq, on copies.

The logs here are made in the version 1 layout, which these tests tamper with row by row
(version 1 logs are still verified); test_integrity_v2.py damages version 2 logs."""

from __future__ import annotations

import json
import os
import random
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from events import (
    EventLog,
    EventLogError,
    NotALogError,
    SchemaVersionError,
    UnknownRunError,
)
from maker.tasks import Hanoi
from replay import BrokenLogError, LogReport, check_run, verify_log
from replay._commands import verify_command, verify_command_impl

from ..events._factory import interleave, run_events
from ._logs import copy_log, record, rows, tampering


@dataclass(frozen=True)
class Recorded:
    path: Path
    run_ids: list[str]

    @property
    def victim(self) -> str:
        return self.run_ids[1]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    path = tmp_path_factory.mktemp("integrity") / "runs.db"
    results = record(path, lambda: Hanoi(4), [1, 2, 3], schema_version=1)
    return Recorded(path, [r.run_id for r in results])


@pytest.fixture
def copy(recorded: Recorded, tmp_path: Path) -> Path:
    return copy_log(recorded.path, tmp_path / "copy.db")


def only_broken(report: LogReport, run_id: str) -> tuple[int | None, str]:
    """The one broken run's first bad seq and problem; every other run must still be intact."""
    assert not report.ok
    broken = report.broken
    assert [run.run_id for run in broken] == [run_id], [run.line() for run in broken]
    assert len(report.runs) == 3
    return broken[0].first_bad_seq, broken[0].problem


def assert_refused(path: Path, run_id: str, seq: int) -> None:
    with pytest.raises(BrokenLogError) as info:
        check_run(path, run_id)
    assert info.value.seq == seq
    assert info.value.run_id == run_id
    assert f"at seq {seq}:" in str(info.value)
    assert "\n" not in str(info.value)


# -- intact logs -----------------------------------------------------------------------------


def test_an_intact_multi_run_log_verifies_clean(recorded: Recorded) -> None:
    report = verify_log(recorded.path)
    assert report.ok, [run.line() for run in report.broken]
    assert report.problem == ""
    assert sorted(run.run_id for run in report.runs) == sorted(recorded.run_ids)
    for run in report.runs:
        assert run.ok
        assert run.first_bad_seq is None
        assert run.problem == ""
        assert run.events == len(rows(recorded.path, run.run_id))
        assert run.line() == f"{run.run_id}: ok ({run.events} events)"
        assert check_run(recorded.path, run.run_id) == run
    assert report.events == sum(run.events for run in report.runs)


def test_a_log_being_written_verifies_clean_at_every_commit(tmp_path: Path) -> None:
    """Heads are written with their rows, so every committed prefix is consistent."""
    import anyio

    path = tmp_path / "live.db"
    events = list(interleave(run_events("a", 30), run_events("b", 30)))

    async def go() -> list[LogReport]:
        reports: list[LogReport] = []
        async with EventLog(path, batch_size=41, schema_version=1) as log:
            for i, event in enumerate(events):
                log.append(event)
                if i % 97 == 0:
                    await log.flush()
                    reports.append(verify_log(path))
        reports.append(verify_log(path))
        return reports

    reports = anyio.run(go)
    assert len(reports) > 5
    for report in reports:
        assert report.ok, [run.line() for run in report.broken]
    assert reports[-1].events == len(events)


# -- damage to rows ------------------------------------------------------------------------


def test_flipped_bits_in_bodies_are_found_at_their_seq(recorded: Recorded, tmp_path: Path) -> None:
    draw = random.Random(4)
    stored = rows(recorded.path, recorded.victim)
    for trial in range(25):
        seq, _type, body, _hash = stored[draw.randrange(len(stored))]
        bit = draw.randrange(len(body) * 8)
        flipped = bytearray(body)
        flipped[bit // 8] ^= 1 << (bit % 8)
        path = copy_log(recorded.path, tmp_path / f"flip{trial}.db")
        with tampering(path) as conn:
            conn.execute(
                "UPDATE events SET body = ? WHERE run_id = ? AND seq = ?",
                (bytes(flipped), recorded.victim, seq),
            )
        first_bad, problem = only_broken(verify_log(path), recorded.victim)
        assert first_bad == seq, (bit, problem)
        assert problem


def test_an_edited_field_is_a_hash_mismatch_at_its_seq(recorded: Recorded, copy: Path) -> None:
    decided = [r for r in rows(copy, recorded.victim) if r[1] == "step_decided"]
    seq, _type, body, _hash = decided[3]
    data = json.loads(body)
    data["winner"] = '{"move":[1,0,2]}' if data["winner"] != '{"move":[1,0,2]}' else "x"
    with tampering(copy) as conn:
        conn.execute(
            "UPDATE events SET body = ? WHERE run_id = ? AND seq = ?",
            (json.dumps(data, separators=(",", ":")).encode(), recorded.victim, seq),
        )
    first_bad, problem = only_broken(verify_log(copy), recorded.victim)
    assert first_bad == seq
    assert problem == f"hash mismatch at seq {seq} (the row was edited or flipped)"
    assert_refused(copy, recorded.victim, seq)


def test_an_edited_column_is_told_from_an_edited_body(recorded: Recorded, copy: Path) -> None:
    with tampering(copy) as conn:
        conn.execute(
            "UPDATE events SET step = step + 1 WHERE run_id = ? AND seq = 9", (recorded.victim,)
        )
    first_bad, problem = only_broken(verify_log(copy), recorded.victim)
    assert first_bad == 9
    assert "the step column says" in problem
    assert "(the column was edited)" in problem


def test_a_deleted_middle_row_is_found(recorded: Recorded, copy: Path) -> None:
    with tampering(copy) as conn:
        conn.execute("DELETE FROM events WHERE run_id = ? AND seq = 40", (recorded.victim,))
    first_bad, problem = only_broken(verify_log(copy), recorded.victim)
    assert (first_bad, problem) == (40, "seq 40 missing (rows deleted)")
    assert_refused(copy, recorded.victim, 40)


def test_deleted_rows_at_the_start_are_found(recorded: Recorded, copy: Path) -> None:
    with tampering(copy) as conn:
        conn.execute("DELETE FROM events WHERE run_id = ? AND seq < 3", (recorded.victim,))
    assert only_broken(verify_log(copy), recorded.victim) == (0, "seqs 0-2 missing (rows deleted)")


def test_truncation_is_found_where_the_rows_stop(recorded: Recorded, copy: Path) -> None:
    last = rows(copy, recorded.victim)[-1][0]
    with tampering(copy) as conn:
        conn.execute("DELETE FROM events WHERE run_id = ? AND seq > ?", (recorded.victim, last - 5))
    first_bad, problem = only_broken(verify_log(copy), recorded.victim)
    assert first_bad == last - 4
    assert problem == f"ends at seq {last - 5} but its head says {last} (truncated)"
    assert_refused(copy, recorded.victim, last - 4)


def test_swapped_seqs_are_found(recorded: Recorded, copy: Path) -> None:
    with tampering(copy) as conn:
        for old, new in ((12, -1), (13, 12), (-1, 13)):
            conn.execute(
                "UPDATE events SET seq = ? WHERE run_id = ? AND seq = ?",
                (new, recorded.victim, old),
            )
    first_bad, problem = only_broken(verify_log(copy), recorded.victim)
    assert (first_bad, problem) == (12, "seq 12 and 13 swapped (rows out of order)")


def test_a_body_moved_to_another_seq_is_found(recorded: Recorded, copy: Path) -> None:
    stored = {r[0]: r for r in rows(copy, recorded.victim)}
    with tampering(copy) as conn:
        conn.execute(
            "UPDATE events SET body = ?, hash = ? WHERE run_id = ? AND seq = 20",
            (stored[30][2], stored[30][3], recorded.victim),
        )
    first_bad, problem = only_broken(verify_log(copy), recorded.victim)
    assert first_bad == 20
    assert "body says seq 30" in problem


@pytest.mark.parametrize("where", ["middle", "last"])
def test_a_flipped_byte_of_a_stored_hash_is_found(
    recorded: Recorded, copy: Path, where: str
) -> None:
    stored = rows(copy, recorded.victim)
    seq, _type, _body, digest = stored[22] if where == "middle" else stored[-1]
    flipped = bytearray(digest)
    flipped[5] ^= 0x10
    with tampering(copy) as conn:
        conn.execute(
            "UPDATE events SET hash = ? WHERE run_id = ? AND seq = ?",
            (bytes(flipped), recorded.victim, seq),
        )
    first_bad, problem = only_broken(verify_log(copy), recorded.victim)
    assert first_bad == seq
    assert problem == f"the stored hash of seq {seq} was altered (bit flip)"


def test_a_run_without_a_head_is_broken(recorded: Recorded, copy: Path) -> None:
    last = rows(copy, recorded.victim)[-1][0]
    with closing(sqlite3.connect(copy)) as conn:
        conn.execute("DELETE FROM run_heads WHERE run_id = ?", (recorded.victim,))
        conn.commit()
    first_bad, problem = only_broken(verify_log(copy), recorded.victim)
    assert first_bad == last + 1
    assert "no head" in problem


def test_a_head_without_rows_is_broken(recorded: Recorded, copy: Path) -> None:
    with tampering(copy) as conn:
        conn.execute("DELETE FROM events WHERE run_id = ?", (recorded.victim,))
    first_bad, problem = only_broken(verify_log(copy), recorded.victim)
    assert first_bad == 0
    assert "no rows (deleted)" in problem
    assert_refused(copy, recorded.victim, 0)


def test_a_rewound_head_is_found(recorded: Recorded, copy: Path) -> None:
    last = rows(copy, recorded.victim)[-1][0]
    with closing(sqlite3.connect(copy)) as conn:
        conn.execute("UPDATE run_heads SET seq = seq - 2 WHERE run_id = ?", (recorded.victim,))
        conn.commit()
    first_bad, problem = only_broken(verify_log(copy), recorded.victim)
    assert first_bad == last - 1
    assert "past its head" in problem


# -- damage to the file --------------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 100, 4096, 3 * 4096, "half"])
def test_a_file_cut_short_is_reported_not_raised(
    recorded: Recorded, copy: Path, cut: int | str
) -> None:
    size = copy.stat().st_size
    assert not Path(f"{copy}-wal").exists()
    keep = size // 2 if cut == "half" else size - int(cut)
    with open(copy, "r+b") as f:
        f.truncate(keep)
    report = verify_log(copy)
    assert not report.ok
    assert report.problem or report.broken
    data = report.to_json()
    assert data["ok"] is False
    json.dumps(data)
    # Whatever is still readable and intact is reported as such, never as broken without cause.
    for run in report.broken:
        assert run.first_bad_seq is not None
        assert run.problem


def test_a_cut_file_makes_check_run_refuse(recorded: Recorded, copy: Path) -> None:
    with open(copy, "r+b") as f:
        f.truncate(copy.stat().st_size // 2)
    with pytest.raises(BrokenLogError, match="SQLite cannot read the file"):
        check_run(copy, recorded.victim)


def test_files_that_are_not_logs(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a database at all\n" * 10)
    with pytest.raises(NotALogError):
        verify_log(text)
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(NotALogError, match="empty"):
        verify_log(empty)
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
    with pytest.raises(NotALogError, match="another application"):
        verify_log(other)
    with pytest.raises(NotALogError, match="directory"):
        verify_log(tmp_path)
    with pytest.raises(EventLogError, match="no such file"):
        verify_log(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()


def test_another_schema_version_is_refused(recorded: Recorded, copy: Path) -> None:
    with closing(sqlite3.connect(copy)) as conn:
        conn.execute("PRAGMA user_version = 99")
        conn.commit()
    with pytest.raises(SchemaVersionError):
        verify_log(copy)


def test_check_run_of_an_unknown_run(recorded: Recorded) -> None:
    with pytest.raises(UnknownRunError):
        check_run(recorded.path, "no-such-run")


# -- the command -----------------------------------------------------------------------------


def test_verify_command_prints_a_line_per_run_and_exits_by_the_result(
    recorded: Recorded, copy: Path
) -> None:
    runner = CliRunner()
    clean = runner.invoke(verify_command, [str(recorded.path)])
    assert clean.exit_code == 0, clean.output
    lines = clean.output.splitlines()
    assert len(lines) == 3
    assert all(": ok (" in line for line in lines)

    with tampering(copy) as conn:
        conn.execute("DELETE FROM events WHERE run_id = ? AND seq = 40", (recorded.victim,))
    broken = runner.invoke(verify_command, [str(copy)])
    assert broken.exit_code == 1
    assert f"{recorded.victim}: BROKEN at seq 40: seq 40 missing (rows deleted)" in broken.output
    assert sum(": ok (" in line for line in broken.output.splitlines()) == 2

    as_json = runner.invoke(verify_command, [str(copy), "--json"])
    assert as_json.exit_code == 1
    data = json.loads(as_json.output)
    assert data["ok"] is False
    bad = [run for run in data["runs"] if not run["ok"]]
    assert [(run["run_id"], run["first_bad_seq"]) for run in bad] == [(recorded.victim, 40)]


def test_verify_command_impl_returns_the_exit_code(recorded: Recorded, copy: Path) -> None:
    assert verify_command_impl(recorded.path, as_json=True) == 0
    with tampering(copy) as conn:
        conn.execute("DELETE FROM events WHERE run_id = ? AND seq = 7", (recorded.victim,))
    assert verify_command_impl(copy, as_json=False) == 1


def test_verify_command_reports_a_cut_file_in_one_line(recorded: Recorded, copy: Path) -> None:
    with open(copy, "r+b") as f:
        f.truncate(copy.stat().st_size // 2)
    result = CliRunner().invoke(verify_command, [str(copy)])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "SQLite cannot read the file" in result.output


def test_report_json_round_trips(recorded: Recorded) -> None:
    data = verify_log(recorded.path).to_json()
    assert msgspec.json.decode(msgspec.json.encode(data)) == data
    assert data["path"] == os.fspath(recorded.path)
