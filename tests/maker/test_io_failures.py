"""I/O failures are bad input: one line on stderr, a non-zero exit, and nothing recorded lost.

Each case runs the real CLI in a subprocess and then checks the log with ``maker verify``: every
run recorded before is still there, intact. The failures are real ones:

- read-only files and directories: by permissions, with the capability that lets root ignore
  them dropped from the child (``prctl(PR_CAPBSET_DROP)``) when the tests run as root;
- a full disk: a file-size limit (``RLIMIT_FSIZE``) on the child, so that SQLite's writes fail
  as they do on a full file system, at a moment set by the size of what is written;
- a second writer: two real processes, one of them a run or a resume still going.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ._cli import MAKER, maker, one_error_line, verified

CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2
PR_CAPBSET_DROP = 24


def _drop_dac() -> None:
    """In the child, before exec: root loses the right to ignore file permissions."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _permissions_bind() -> Callable[[], None] | None:
    """The preexec function under which permissions bind, or skip when nothing can make
    them bind here (root without the right to drop its capabilities)."""
    if os.geteuid() != 0:
        return None
    try:
        subprocess.run([sys.executable, "-c", ""], preexec_fn=_drop_dac, check=True)
    except (subprocess.SubprocessError, OSError):
        pytest.skip("running as root without CAP_SETPCAP: file permissions cannot bind")
    return _drop_dac


def _file_size_limit(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        # SIGXFSZ would kill the process at the limit; ignored, the write fails with EFBIG,
        # which SQLite reports as an I/O error, as it would a full disk.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


@contextlib.contextmanager
def read_only(*paths: Path) -> Iterator[None]:
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in paths}
    for p in paths:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        yield
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


def a_resumable_run(cwd: Path, log: str = "x.db", disks: int = 12) -> str:
    """A run that stopped when its log could not be written, and the id the error names."""
    done = maker(
        cwd, "run", "hanoi", "--disks", str(disks), "--log", log,
        preexec=_file_size_limit(1_500_000),
    )  # fmt: skip
    line = one_error_line(done)
    assert f"continue with 'maker resume {log} --run " in line, line
    return line.rsplit("--run ", 1)[1].rstrip("'")


# -- read-only logs ---------------------------------------------------------------------------


def test_a_read_only_log_is_refused_before_anything_runs(tmp_path: Path) -> None:
    preexec = _permissions_bind()
    assert maker(tmp_path, "run", "hanoi", "--disks", "3", "--log", "x.db").returncode == 0
    before = verified(tmp_path, "x.db")
    with read_only(tmp_path / "x.db"):
        done = maker(tmp_path, "run", "hanoi", "--disks", "3", "--log", "x.db", preexec=preexec)
    line = one_error_line(done)
    assert line == (
        "maker: error: x.db cannot be written: the file is read-only; nothing was run or recorded"
    )
    assert done.stdout == ""
    assert verified(tmp_path, "x.db") == before


def test_a_log_in_a_read_only_directory_is_read_but_not_written(tmp_path: Path) -> None:
    preexec = _permissions_bind()
    logs = tmp_path / "logs"
    logs.mkdir()
    assert maker(logs, "run", "hanoi", "--disks", "3", "--log", "x.db").returncode == 0
    before = verified(logs, "x.db")
    # As on read-only media: the log alone. (A reader in a writable directory leaves SQLite's
    # empty WAL files beside the log; with them, a writer needs no new file, and may write.)
    for leftover in ("x.db-wal", "x.db-shm", "x.db-lock"):
        (logs / leftover).unlink(missing_ok=True)
    with read_only(logs):
        for log in ("x.db", "new.db"):
            done = maker(logs, "run", "hanoi", "--disks", "3", "--log", log, preexec=preexec)
            assert "its directory is read-only" in one_error_line(done)
        # Reading needs no write: SQLite's WAL index cannot be made beside the file, and
        # nobody can be writing it, so it is read as immutable.
        for command in (["show", "x.db"], ["verify", "x.db"], ["replay", "x.db", "--verify"],
                        ["export", "x.db"]):  # fmt: skip
            done = maker(logs, *command, preexec=preexec)
            assert done.returncode == 0, (command, done.stderr)
            assert done.stderr == ""
        assert sorted(os.listdir(logs)) == ["x.db"]  # nothing was made beside it
    assert verified(logs, "x.db") == before


def test_resuming_a_read_only_log_is_refused_and_the_run_stays_resumable(tmp_path: Path) -> None:
    preexec = _permissions_bind()
    run_id = a_resumable_run(tmp_path)
    before = verified(tmp_path, "x.db")
    with read_only(tmp_path / "x.db"):
        done = maker(tmp_path, "resume", "x.db", preexec=preexec)
    assert "x.db cannot be written: the file is read-only" in one_error_line(done)
    assert verified(tmp_path, "x.db") == before
    again = maker(tmp_path, "resume", "x.db", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["status"] == "succeeded"
    assert maker(tmp_path, "replay", "x.db", "--verify", "--run", run_id).returncode == 0


# -- a full disk ------------------------------------------------------------------------------


@pytest.mark.parametrize("writer", ["process", "thread"])
def test_a_full_disk_keeps_the_prefix_and_says_how_to_continue(tmp_path: Path, writer: str) -> None:
    assert maker(tmp_path, "run", "hanoi", "--disks", "3", "--log", "x.db").returncode == 0
    earlier = verified(tmp_path, "x.db")
    done = maker(
        tmp_path, "run", "hanoi", "--disks", "12", "--log", "x.db", "--log-writer", writer,
        preexec=_file_size_limit(1_500_000),
    )  # fmt: skip
    line = one_error_line(done)
    assert line.startswith("maker: error: writing x.db failed: ")
    run_id = line.rsplit("--run ", 1)[1].rstrip("'")
    saved = verified(tmp_path, "x.db")
    assert {r: n for r, n in saved.items() if r in earlier} == earlier  # earlier runs intact
    assert saved[run_id] > 0  # the prefix that was committed verifies
    # Once there is room, the run continues where its log stops, as the message says.
    again = maker(tmp_path, "resume", "x.db", "--run", run_id, "--json")
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["status"] == "succeeded"
    assert result["steps"] == 2**12 - 1
    assert maker(tmp_path, "replay", "x.db", "--verify", "--run", run_id).returncode == 0


# -- a second writer --------------------------------------------------------------------------


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _events(cwd: Path, log: str) -> int:
    done = maker(cwd, "verify", log, "--json")
    if done.returncode != 0:
        return 0
    return sum(run["events"] for run in json.loads(done.stdout)["runs"])


def test_resuming_a_run_another_process_is_writing_is_refused(tmp_path: Path) -> None:
    writer = subprocess.Popen(
        # One step at a time: the run's length is what the test counts on (a pipelined run,
        # the default where the model waits, takes half as long).
        [*MAKER, "run", "hanoi", "--disks", "7", "--latency-ms", "25", "--pipeline", "0",
         "--hedge", "0", "--log", "x.db"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for(lambda: _events(tmp_path, "x.db") > 20, "the run to start writing")
        done = maker(tmp_path, "resume", "x.db")
        line = one_error_line(done)
        assert f"is being written by process {writer.pid}" in line, line
        assert writer.wait(timeout=120) == 0
    finally:
        writer.kill()
        writer.communicate()
    (run_id,) = verified(tmp_path, "x.db")
    assert maker(tmp_path, "replay", "x.db", "--verify").returncode == 0
    assert run_id in line


def test_two_resumes_of_one_run_at_once_let_one_write(tmp_path: Path) -> None:
    # A run with latency, killed mid-way: its resume takes a while, so the second overlaps it.
    original = subprocess.Popen(
        # One step at a time: the run's length is what the test counts on (a pipelined run,
        # the default where the model waits, takes half as long).
        # 50 ms a call: the resume takes about 6 s, which a second maker process starting on a
        # loaded machine (a second or two) still overlaps.
        [*MAKER, "run", "hanoi", "--disks", "7", "--latency-ms", "50", "--pipeline", "0",
         "--hedge", "0", "--log", "x.db"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for(lambda: _events(tmp_path, "x.db") > 50, "the run to write a prefix")
    finally:
        original.send_signal(signal.SIGKILL)
        original.wait()
    prefix = _events(tmp_path, "x.db")
    first = subprocess.Popen(
        [*MAKER, "resume", "x.db", "--json"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for(lambda: _events(tmp_path, "x.db") > prefix + 10, "the first resume to write")
        second = maker(tmp_path, "resume", "x.db")
        line = one_error_line(second)
        assert f"is being written by process {first.pid}" in line, line
        out, err = first.communicate(timeout=120)
    finally:
        first.kill()
        first.communicate()
    assert first.returncode == 0, err
    assert json.loads(out)["status"] == "succeeded"
    verified(tmp_path, "x.db")
    assert maker(tmp_path, "replay", "x.db", "--verify").returncode == 0


# -- bad files and bounds ---------------------------------------------------------------------


def test_a_prices_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    assert maker(tmp_path, "run", "hanoi", "--disks", "3", "--log", "x.db").returncode == 0
    before = verified(tmp_path, "x.db")
    (tmp_path / "prices.json").write_bytes(b'{"sim": \xff\xfe}')
    done = maker(
        tmp_path, "run", "hanoi", "--disks", "3", "--log", "x.db", "--prices", "prices.json"
    )
    line = one_error_line(done)
    assert "prices.json is not UTF-8 text" in line, line
    assert verified(tmp_path, "x.db") == before


def test_calibration_samples_are_bounded_before_anything_is_drawn(tmp_path: Path) -> None:
    # 1e11 samples once meant a MemoryError after minutes (1e8 took 2 GB before the first call).
    done = maker(
        tmp_path, "calibrate", "hanoi", "--model", "sim", "--samples", "100000000000",
        "--log", "cal.db",
    )  # fmt: skip
    assert "at most 1,000,000 per model" in one_error_line(done)


def test_the_timeout_applies_to_the_simulated_model(tmp_path: Path) -> None:
    # Five-second answers against a quarter-second timeout: every attempt times out and the
    # run fails, recorded, instead of waiting (--latency-ms 1e9 used to hang for good).
    done = maker(
        tmp_path, "run", "hanoi", "--disks", "2", "--latency-ms", "5000", "--timeout", "0.25",
        "--log", "x.db", "--json",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "failed"
    assert "timeout" in result["reason"]
    assert result["steps"] == 0
    verified(tmp_path, "x.db")


def test_a_new_log_and_its_companions_are_readable_by_their_owner_alone(tmp_path: Path) -> None:
    # Under a permissive umask too: the log holds prompts and responses.
    def open_umask() -> None:
        os.umask(0)

    writer = subprocess.Popen(
        # One step at a time: the run's length is what the test counts on (a pipelined run,
        # the default where the model waits, takes half as long).
        [*MAKER, "run", "hanoi", "--disks", "7", "--latency-ms", "25", "--pipeline", "0",
         "--hedge", "0", "--log", "x.db"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=open_umask,
    )  # fmt: skip
    try:
        names = ("x.db", "x.db-wal", "x.db-shm", "x.db-lock")
        # The WAL files come when the log is opened, the lock at the run's first event.
        _wait_for(lambda: all((tmp_path / n).exists() for n in names), "the log's files")
        modes = {n: stat.S_IMODE((tmp_path / n).stat().st_mode) for n in names}
        assert writer.wait(timeout=120) == 0
    finally:
        writer.kill()
        writer.wait()
    assert modes == dict.fromkeys(names, 0o600)
    assert stat.S_IMODE((tmp_path / "x.db").stat().st_mode) == 0o600
