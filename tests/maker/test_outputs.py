"""No output destroys a log: exports, traces and reports refuse the log and any other log, are
written whole (renamed into place) or not at all, and are readable by their owner alone.

Each case runs the real CLI in a subprocess, asserts one ``maker: error:`` line and a non-zero
exit where it must fail, and then checks with ``maker verify`` that every run recorded before is
still in the log, intact.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ._cli import MAKER, maker, one_error_line, verified


def a_log(cwd: Path, log: str = "x.db", runs: int = 2, disks: int = 3) -> dict[str, int]:
    for seed in range(runs):
        done = maker(cwd, "run", "hanoi", "--disks", str(disks), "--log", log, "--seed", str(seed))
        assert done.returncode == 0, done.stderr
    before = verified(cwd, log)
    assert len(before) == runs
    return before


def temporary_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.name.endswith(".tmp"))


def first_run(before: dict[str, int]) -> str:
    return sorted(before)[0]


# -- the cases ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["export", "x.db", "--run", "RUN", "--out", "x.db"],
        ["export-otel", "x.db", "--run", "RUN", "--exporter", "json", "--out", "x.db"],
        ["export-otel", "x.db", "--run", "RUN", "--out", "x.db"],  # console, to a file
        ["run", "hanoi", "--disks", "3", "--log", "x.db", "--otel", "json:x.db"],
    ],
    ids=["export", "export-otel-json", "export-otel-console", "run-otel-json"],
)
def test_an_output_that_is_the_log_is_refused_and_the_log_kept(
    tmp_path: Path, command: list[str]
) -> None:
    before = a_log(tmp_path)
    args = [first_run(before) if arg == "RUN" else arg for arg in command]
    line = one_error_line(maker(tmp_path, *args))
    assert line == (
        "maker: error: refusing to write x.db: it is the log x.db; "
        "an output never overwrites a log, choose another path"
    )
    assert verified(tmp_path, "x.db") == before
    assert temporary_files(tmp_path) == []


def test_a_new_log_is_not_its_own_trace(tmp_path: Path) -> None:
    # The trace file is opened before the run makes the log: refused by name, nothing made.
    done = maker(
        tmp_path, "run", "hanoi", "--disks", "3", "--log", "new.db", "--otel", "json:new.db"
    )
    assert "refusing to write new.db: it is the log new.db" in one_error_line(done)
    assert sorted(os.listdir(tmp_path)) == []


def test_links_to_the_log_and_its_companions_are_refused(tmp_path: Path) -> None:
    before = a_log(tmp_path)
    run = first_run(before)
    (tmp_path / "link.jsonl").symlink_to("x.db")
    os.link(tmp_path / "x.db", tmp_path / "hard.jsonl")
    (tmp_path / "sub").mkdir()
    for out in ("link.jsonl", "hard.jsonl", "sub/../x.db", str(tmp_path / "x.db")):
        for command in (
            ["export", "x.db", "--run", run, "--out", out],
            ["export-otel", "x.db", "--run", run, "--exporter", "json", "--out", out],
        ):
            line = one_error_line(maker(tmp_path, *command))
            assert line.startswith(f"maker: error: refusing to write {out}: it is the log x.db")
        assert verified(tmp_path, "x.db") == before
    for suffix in ("-wal", "-shm", "-lock"):
        line = one_error_line(
            maker(tmp_path, "export", "x.db", "--run", run, "--out", f"x.db{suffix}")
        )
        assert f"it is the {suffix[1:]} file of the log x.db" in line
    assert verified(tmp_path, "x.db") == before
    assert temporary_files(tmp_path) == []


def test_another_maker_log_is_refused_as_an_output(tmp_path: Path) -> None:
    before = a_log(tmp_path)
    other = a_log(tmp_path, "other.db", runs=1)
    run = first_run(before)
    for command in (
        ["export", "x.db", "--run", run, "--out", "other.db"],
        ["export-otel", "x.db", "--run", run, "--exporter", "json", "--out", "other.db"],
        ["run", "hanoi", "--disks", "3", "--log", "x.db", "--otel", "json:other.db"],
    ):
        line = one_error_line(maker(tmp_path, *command))
        assert line.startswith(
            "maker: error: refusing to write other.db: it is the maker log other.db"
        )
    assert verified(tmp_path, "other.db") == other
    assert verified(tmp_path, "x.db") == before


def test_a_report_file_that_is_the_log_is_refused_before_any_file_is_written(
    tmp_path: Path,
) -> None:
    pytest.importorskip("matplotlib")
    before = a_log(tmp_path)
    run = first_run(before)
    out = tmp_path / "report"
    out.mkdir()
    (out / "votes.png").symlink_to("../x.db")
    done = maker(tmp_path, "report", "x.db", "--run", run, "--out", "report")
    line = one_error_line(done)
    assert line.startswith("maker: error: refusing to write report/votes.png: it is the log x.db")
    assert sorted(os.listdir(out)) == ["votes.png"]  # no plot, no page: all or nothing
    assert verified(tmp_path, "x.db") == before


# -- written whole, private ------------------------------------------------------------------


def test_outputs_are_0600_whatever_the_umask_and_leave_no_temporary_file(tmp_path: Path) -> None:
    def open_umask() -> None:
        os.umask(0)

    before = a_log(tmp_path)
    run = first_run(before)
    done = maker(
        tmp_path, "export", "x.db", "--run", run, "--out", "events.jsonl", preexec=open_umask
    )
    assert done.returncode == 0, done.stderr
    to_stdout = maker(tmp_path, "export", "x.db", "--run", run)
    assert (tmp_path / "events.jsonl").read_text() == to_stdout.stdout
    assert len(to_stdout.stdout.splitlines()) == before[run]
    for command in (
        ["export-otel", "x.db", "--run", run, "--exporter", "json", "--out", "spans.jsonl"],
        ["export-otel", "x.db", "--run", run, "--out", "spans.txt"],
        ["run", "hanoi", "--disks", "3", "--log", "y.db", "--otel", "json:live.jsonl"],
    ):
        done = maker(tmp_path, *command, preexec=open_umask)
        assert done.returncode == 0, done.stderr
    written = ["events.jsonl", "spans.jsonl", "spans.txt", "live.jsonl"]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        done = maker(
            tmp_path, "report", "x.db", "--run", run, "--out", "report", preexec=open_umask
        )
        assert done.returncode == 0, done.stderr
        pages = sorted(os.listdir(tmp_path / "report"))
        assert "index.html" in pages
        assert len(pages) > 1
        written += [f"report/{name}" for name in pages]
    for name in written:
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
        assert (tmp_path / name).stat().st_size > 0, name
    for line in (tmp_path / "live.jsonl").read_text().splitlines():
        assert "resourceSpans" in json.loads(line)
    assert temporary_files(tmp_path) == []
    assert verified(tmp_path, "x.db") == before


def test_a_failed_export_leaves_the_file_there_as_it_was(tmp_path: Path) -> None:
    before = a_log(tmp_path)
    old = tmp_path / "events.jsonl"
    old.write_bytes(b"the previous export\n")
    old.chmod(0o640)
    for command in (
        ["export", "x.db", "--run", "no-such-run", "--out", "events.jsonl"],
        [
            "export-otel",
            "x.db",
            "--run",
            "no-such-run",
            "--exporter",
            "json",
            "--out",
            "events.jsonl",
        ],
        ["export", "x.db", "--out", "events.jsonl"],  # two runs, none named
    ):
        one_error_line(maker(tmp_path, *command))
        assert old.read_bytes() == b"the previous export\n"
        assert old.stat().st_mode & 0o777 == 0o640
    fresh = maker(tmp_path, "export", "x.db", "--run", "no-such-run", "--out", "fresh.jsonl")
    assert "no run 'no-such-run'" in one_error_line(fresh)
    assert not (tmp_path / "fresh.jsonl").exists()
    assert temporary_files(tmp_path) == []
    assert verified(tmp_path, "x.db") == before


def _open_output_size(pid: int, directory: Path) -> int:
    """The bytes written so far to the output the process has open in ``directory`` (0 when
    none is open yet). The output has no name until it is complete: on Linux it shows in
    ``/proc`` as a deleted file of the directory."""
    total = 0
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir() if fds.exists() else ():
        try:
            target = os.readlink(fd)
            if target.startswith(str(directory)) and target.endswith("(deleted)"):
                total = max(total, os.stat(fd).st_size)
        except OSError:
            continue  # closed meanwhile
    return total


def kill_mid_way(command: list[str], cwd: Path, written: int) -> None:
    """Run ``maker COMMAND`` and SIGKILL it once its output holds ``written`` bytes."""
    process = subprocess.Popen(
        [*MAKER, *command], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while _open_output_size(process.pid, cwd) < written:
            assert process.poll() is None, "the command ended before it could be killed mid-way"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to time the kill")
def test_an_export_killed_mid_way_leaves_the_old_file_and_nothing_else(tmp_path: Path) -> None:
    before = a_log(tmp_path, runs=1, disks=12)  # about 14 MB of JSON lines
    old = tmp_path / "events.jsonl"
    old.write_bytes(b"the previous export\n")
    kill_mid_way(["export", "x.db", "--out", "events.jsonl"], tmp_path, 1_000_000)
    assert old.read_bytes() == b"the previous export\n"
    # Nothing but the log (and its companions) and the old export.
    assert {name for name in os.listdir(tmp_path) if not name.startswith("x.db")} == {
        "events.jsonl"
    }
    assert verified(tmp_path, "x.db") == before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to time the kill")
def test_a_run_killed_mid_way_leaves_no_half_trace(tmp_path: Path) -> None:
    before = a_log(tmp_path, runs=1)
    old = tmp_path / "trace.jsonl"
    old.write_bytes(b"the previous trace\n")
    command = ["run", "hanoi", "--disks", "12", "--log", "x.db", "--otel", "json:trace.jsonl"]
    kill_mid_way(command, tmp_path, 100_000)
    assert old.read_bytes() == b"the previous trace\n"
    assert {name for name in os.listdir(tmp_path) if not name.startswith("x.db")} == {"trace.jsonl"}
    after = verified(tmp_path, "x.db")  # the killed run's prefix, and every run before intact
    assert {run: after[run] for run in before} == before
    assert len(after) == len(before) + 1
