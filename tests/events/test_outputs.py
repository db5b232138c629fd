"""open_output: an output is written whole or not at all, 0600, and never over a log."""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

import anyio
import pytest

from events import OUTPUT_MODE, EventLog, EventLogError, OutputIsLogError, open_output

from ._factory import run_events


async def make_log(path: Path) -> bytes:
    """A log at ``path`` holding one run; returns the file's bytes once closed."""
    async with EventLog(path) as log:
        for event in run_events("r1", 3):
            log.append(event)
    return await anyio.Path(path).read_bytes()


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "x.db"
    anyio.run(make_log, path)
    return path


class Failed(Exception):
    """What the blocks below fail with."""


def write_then_fail(path: Path, failure: type[BaseException]) -> None:
    with open_output(path, mode="wb") as f:
        f.write(b"half")
        raise failure()


def refused(path: Path | str, logs: list[Path] | None = None) -> OutputIsLogError:
    """The refusal to open ``path`` as an output (the block must not run)."""
    with pytest.raises(OutputIsLogError) as caught, open_output(path, logs=logs or []):
        pytest.fail("the block must not run")
    return caught.value


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_the_output_appears_whole_0600_and_nothing_else_is_left(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    old = os.umask(0)  # the mode does not depend on the umask
    try:
        with open_output(out, mode="wb") as f:
            f.write(b"one\n")
            assert not out.exists()  # nothing at the path until the block ends
            f.write(b"two\n")
    finally:
        os.umask(old)
    assert out.read_bytes() == b"one\ntwo\n"
    assert out.stat().st_mode & 0o777 == OUTPUT_MODE == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_text_mode_writes_in_the_encoding_and_replaces_a_file(tmp_path: Path) -> None:
    out = tmp_path / "out.html"
    out.write_text("old", encoding="utf-8")
    out.chmod(0o644)
    with open_output(str(out)) as f:
        f.write("voilà")
    assert out.read_text(encoding="utf-8") == "voilà"
    assert out.stat().st_mode & 0o777 == 0o600  # a new file, made private


@pytest.mark.parametrize("failure", [Failed, KeyboardInterrupt])
def test_a_failed_block_leaves_the_old_file_and_no_temporary_file(
    tmp_path: Path, failure: type[BaseException]
) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"before")
    with pytest.raises(failure):
        write_then_fail(out, failure)
    assert out.read_bytes() == b"before"
    assert leftovers(tmp_path) == []
    fresh = tmp_path / "fresh.jsonl"
    with pytest.raises(Failed):
        write_then_fail(fresh, Failed)
    assert not fresh.exists()
    assert leftovers(tmp_path) == []


@pytest.mark.anyio
async def test_a_cancelled_block_leaves_the_old_file_and_no_temporary_file(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"before")
    with anyio.move_on_after(0.05) as scope:
        with open_output(out, mode="wb") as f:
            f.write(b"half")
            await anyio.sleep(10)
    assert scope.cancelled_caught
    assert out.read_bytes() == b"before"
    assert leftovers(tmp_path) == []


def test_the_log_itself_is_refused_by_name_link_and_hard_link(tmp_path: Path, log: Path) -> None:
    before = log.read_bytes()
    symlink = tmp_path / "link.db"
    symlink.symlink_to(log.name)
    hard = tmp_path / "hard.db"
    os.link(log, hard)
    other = tmp_path / "sub" / ".." / "x.db"
    (tmp_path / "sub").mkdir()
    for path in (log, str(log), symlink, hard, other):
        with pytest.raises(OutputIsLogError) as caught, open_output(path, logs=[log]):
            pytest.fail("the block must not run")
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith(f"refusing to write {path}: ")
        assert str(log) in message
        assert isinstance(caught.value, EventLogError)
    assert log.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_a_log_not_yet_made_is_refused_by_name(tmp_path: Path) -> None:
    # `maker run --log new.db --otel json:new.db`: the output is opened before the log exists.
    new = tmp_path / "new.db"
    with pytest.raises(OutputIsLogError, match="it is the log"), open_output(new, logs=[new]):
        pass
    assert not new.exists()


def test_companion_files_of_a_log_are_refused(tmp_path: Path, log: Path) -> None:
    for suffix in ("-wal", "-shm", "-journal", "-lock"):
        companion = Path(f"{log}{suffix}")
        assert f"the {suffix[1:]} file of the log {log}" in str(refused(companion, [log]))
        # Without being told: the file beside it says it is a log.
        assert f"the {suffix[1:]} file of the log {log}" in str(refused(companion))


def test_any_maker_log_is_refused_even_when_not_named(tmp_path: Path, log: Path) -> None:
    before = log.read_bytes()
    elsewhere = tmp_path / "elsewhere.jsonl"
    os.link(log, elsewhere)  # a log under another name
    for path in (log, elsewhere):
        with pytest.raises(OutputIsLogError, match="the maker log"), open_output(path):
            pass
    assert log.read_bytes() == before


def test_a_database_being_written_is_refused(tmp_path: Path) -> None:
    # A log whose first checkpoint has not happened: its pages are all in the write-ahead log.
    path = tmp_path / "busy.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    try:
        assert Path(f"{path}-wal").stat().st_size > 0
        assert "a database being written" in str(refused(path))
    finally:
        conn.close()


def test_a_log_made_at_the_path_meanwhile_is_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "out.db"
    output = open_output(out, mode="wb")
    f = output.__enter__()
    f.write(b"spans")
    anyio.run(make_log, out)  # another process makes a log there while the output is written
    with pytest.raises(OutputIsLogError):
        output.__exit__(None, None, None)
    assert out.read_bytes()[:16] == b"SQLite format 3\x00"
    assert leftovers(tmp_path) == []


def test_other_files_and_unrelated_sqlite_files_are_written(tmp_path: Path, log: Path) -> None:
    plain = tmp_path / "x.db.jsonl"  # the log's name as a prefix is not the log
    with open_output(plain, logs=[log]) as f:
        f.write("ok")
    assert plain.read_text() == "ok"
    # A name like a companion's, beside no log, is just a name (and may be replaced).
    for name in ("notes-wal", "notes-lock"):
        (tmp_path / name).write_text("old")
        with open_output(tmp_path / name, logs=[log]) as f:
            f.write("new")
        assert (tmp_path / name).read_text() == "new"
    # A symlink elsewhere is written through: the file it points to is replaced.
    target = tmp_path / "target.txt"
    target.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(target.name)
    with open_output(link, logs=[log]) as f:
        f.write("new")
    assert link.is_symlink()
    assert target.read_text() == "new"


def test_stdout_passes_through(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    with open_output("-", mode="wb") as f:
        assert f is sys.stdout.buffer
        f.write(b"bytes\n")
    with open_output(None) as g:
        assert g is sys.stdout
        g.write("text\n")
    assert capsysbinary.readouterr().out == b"bytes\ntext\n"


def test_paths_that_cannot_be_written_are_os_errors_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "out.jsonl"
    with pytest.raises(FileNotFoundError) as caught, open_output(missing):
        pass
    assert caught.value.filename == str(missing)
    with pytest.raises(IsADirectoryError) as isdir, open_output(tmp_path):
        pass
    assert isdir.value.filename == str(tmp_path)
    with pytest.raises(ValueError, match="mode"), open_output(tmp_path / "x", mode="a"):  # type: ignore[call-overload]
        pass
