"""kill -9 a real run at random points, resume each, and compare with an unbroken run.

Two families: `maker run` killed after a random number of committed events, and a run at full
speed (the in-process simulated model at zero latency) killed a random time after it started,
which checks that the log kept up with the work done to within one commit interval.

`maker run` writes its log from a writer process of its own, and the full-speed family runs with
both writers. A killed run's writer process must exit by itself (it commits what it received,
then ends): each test waits for it, and fails if it lingers, before it looks at the file.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import anyio
import pytest

from events import (
    AnyEvent,
    RunFinished,
    RunResumed,
    SampleReceived,
    SampleRequested,
    StepDecided,
    UnknownRunError,
    WriterKind,
)
from events._process import SHIP_INTERVAL
from maker import Engine, Policy, RunResult, SimulatedModel
from maker.tasks import Hanoi
from replay import load_events, resume_run, verify_log, verify_run

from . import _kill_child

SEED = 3
DISKS = 10
KILLS_PER_CASE = 5
CASES = 4  # 20 kills in all, spread over the workers


def _count(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as conn:
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    except sqlite3.Error:
        return 0  # the schema is not there yet


# -- the writer process of a killed run --------------------------------------------------------

WRITER_EXIT_LIMIT = 10.0
"""Seconds a killed run's writer process may take to commit what it had and exit. It has at most
a commit interval of rows to write (tens of ms alone); the rest covers a loaded machine."""
HAVE_PROC = os.path.isdir("/proc")
"""Writer processes are found by their parent in /proc (Linux); elsewhere the runs here use the
thread writer, which has no process to wait for."""


def _writers_of(pid: int) -> list[int]:
    """The log writer processes that ``pid`` started."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                stat = file.read()
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                command = file.read()
        except OSError:
            continue  # gone meanwhile
        parent = int(stat.rsplit(b")", 1)[1].split()[1])
        if parent == pid and b"events._writer_child" in command:
            found.append(int(entry))
    return found


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            state = file.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"  # a zombie has exited; only its parent's reaping is left


def _wait_for_writers(pids: list[int]) -> None:
    """Wait for a killed run's writer processes to exit by themselves."""
    began = time.monotonic()
    while any(_running(pid) for pid in pids):
        elapsed = time.monotonic() - began
        if elapsed > WRITER_EXIT_LIMIT:
            for pid in pids:
                if _running(pid):
                    os.kill(pid, signal.SIGKILL)  # not left behind by a failed test
            raise AssertionError(f"the writer process outlived its killed parent by {elapsed} s")
        time.sleep(0.005)  # polling for the exit, not measuring time


def _kill(proc: subprocess.Popen[bytes], writer: WriterKind) -> bool:
    """SIGKILL a run, then wait for its writer process to exit. False if it had none left (a
    run that had closed its log, about to exit by itself)."""
    writers = _writers_of(proc.pid) if writer == "process" else []
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _wait_for_writers(writers)
    return bool(writers)


def _run_and_kill(path: Path, after_events: int) -> tuple[bool, bool]:
    """Start a run; SIGKILL it once the log holds ``after_events`` events. Whether it was
    killed, and whether a writer process was then waited for."""
    writer: WriterKind = "process" if HAVE_PROC else "thread"
    proc = subprocess.Popen(
        [sys.executable, "-m", "maker", "run", "hanoi", "--disks", str(DISKS),
         "--seed", str(SEED), "--log", str(path), "--no-progress", "--json",
         "--log-writer", writer],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if _count(path) >= after_events:
                return True, _kill(proc, writer)
            time.sleep(0.002)  # polling the file, not measuring time
        return False, False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], int]:
    path = tmp_path_factory.mktemp("ref") / "ref.db"

    async def go() -> tuple[list[str], int]:
        async with Engine(log=path, client=SimulatedModel()) as engine:
            result = await engine.run(Hanoi(DISKS), policy=Policy(k=3), seed=SEED)
        events = await load_events(path, result.run_id)
        return [e.winner for e in events if isinstance(e, StepDecided)], len(events)

    return anyio.run(go)


@pytest.mark.parametrize("case", range(CASES))
def test_runs_killed_anywhere_resume_to_the_same_decisions(
    tmp_path: Path, reference: tuple[list[str], int], case: int
) -> None:
    winners, total = reference
    rng = random.Random(1000 + case)
    killed = waited = 0
    for i in range(KILLS_PER_CASE):
        path = tmp_path / f"kill{i}.db"
        was_killed, had_writer = _run_and_kill(path, rng.randint(1, total - 1))
        killed += was_killed
        waited += had_writer

        async def resume_and_check(log: Path = path, full_check: bool = i == 0) -> None:
            result = await resume_run(log)
            assert result.ok, result.reason
            events = await load_events(log)
            assert [e.winner for e in events if isinstance(e, StepDecided)] == winners
            assert [e.seq for e in events] == list(range(len(events)))
            requested = Counter(e.sample_id for e in events if isinstance(e, SampleRequested))
            received = Counter(e.sample_id for e in events if isinstance(e, SampleReceived))
            assert max(requested.values()) == 1  # no sample id was requested twice
            assert max(received.values()) == 1
            assert sum(isinstance(e, RunResumed) for e in events) <= 1
            if full_check:  # re-executing the whole resumed log is slow; once a case suffices
                verified = await verify_run(log)
                assert verified.ok, verified.divergence

        anyio.run(resume_and_check)
    assert killed >= KILLS_PER_CASE - 1  # nearly every run was cut mid-way
    if HAVE_PROC:  # and nearly every one left a writer process, which exited by itself
        assert waited >= KILLS_PER_CASE - 2


@pytest.mark.skipif(not HAVE_PROC, reason="the writer process is found in /proc")
def test_a_run_whose_writer_process_is_killed_fails_in_one_line_and_resumes(
    tmp_path: Path, reference: tuple[list[str], int]
) -> None:
    winners, total = reference
    path = tmp_path / "writer.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "maker", "run", "hanoi", "--disks", str(DISKS),
         "--seed", str(SEED), "--log", str(path), "--no-progress", "--json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while _count(path) < total * 2 // 3:
            assert proc.poll() is None, "the run ended before its writer was killed"
            assert time.monotonic() < deadline, "the run committed too little in 120 s"
            time.sleep(0.002)  # polling the file, not measuring time
        (writer,) = _writers_of(proc.pid)
        os.kill(writer, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1, lines  # one line, not a traceback
    assert lines[0].startswith(
        f"maker: error: writing {path} failed: the log writer process was killed by SIGKILL"
    )

    async def resume_and_check() -> None:
        result = await resume_run(path)
        assert result.ok, result.reason
        events = await load_events(path)
        assert [e.winner for e in events if isinstance(e, StepDecided)] == winners

    anyio.run(resume_and_check)


# -- kill -9 under the fastest load ---------------------------------------------------------
#
# A zero-latency model never makes the engine wait, so the writer shares the event loop with an
# engine that always has work. The durability rule (DESIGN.md) is that the writer commits at
# least once per commit interval whatever the load, so a crash loses at most that much work.

FAST_DISKS = 12  # 4,095 steps, so that resuming to the end stays short.
FAST_SEED = 11
FAST_K = 3
FAST_KILLS = 3  # per commit interval
KILL_AT = (0.05, 0.95)
"""Where in the run a kill lands, as a share of its events. A moment by events, not seconds:
the run's speed differs between writers and machines by several times (12 disks took several
seconds with the thread writer once, about a second now), and a kill drawn in seconds then
lands after the run more often than not. The child is killed at its first poll (every 5 ms)
after it has emitted that many events, so the kill still lands mid-write, mid-commit, anywhere."""
INTERVALS = (0.05, 0.5)  # the default, and a long one
# The thread writer at both intervals; the process writer at the long one, where it differs:
# its process commits everything it received when the parent dies, so a kill costs what was not
# shipped yet (at most a ship interval, 5 ms), not a commit interval.
CASES_FAST: tuple[tuple[WriterKind, float], ...] = (
    ("thread", 0.05),
    ("thread", 0.5),
    ("process", 0.5),
)
# What a kill may cost beyond one commit interval, and why: a commit covers only what was queued
# when it began, so the newest committed event may be older than the kill by the interval plus
# the time one commit takes (at zero latency an interval holds a few thousand rows; WAL with
# synchronous=NORMAL does not fsync at commit, so writing them takes tens of ms), plus the time
# the writer task waits for its turn on the loop and its thread for a core: on a 2-core machine
# shared with other workers that is a few scheduler slices, again tens of ms. Alone, a kill cost
# at most 0.11 s at the 0.05 s interval; inside the whole suite, where both workers and the child
# share the two cores, a commit of the same rows takes several times longer, and the loss
# reached 0.57 s (a kill 1.2 s into the run, while the other worker ran its heaviest tests).
# 1 s covers that. It is a bound for a loaded machine, not the quiet-machine figure: the
# starving writer this test was written for committed nothing for the first seconds.
COMMIT_ALLOWANCE = 1.0
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fast_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], int]:
    """The winners of an uninterrupted run with the children's settings, and its event count."""
    path = tmp_path_factory.mktemp("fastref") / "ref.db"

    async def go() -> tuple[list[str], int]:
        async with Engine(log=path, client=SimulatedModel(preset="paper")) as engine:
            result = await engine.run(Hanoi(FAST_DISKS), policy=Policy(k=FAST_K), seed=FAST_SEED)
        assert result.status == "succeeded"
        events = await load_events(path, result.run_id)
        return [e.winner for e in events if isinstance(e, StepDecided)], len(events)

    return anyio.run(go)


def _kill_fast_run(
    path: Path,
    progress: Path,
    interval: float,
    at_events: int,
    writer: WriterKind,
    *,
    child: tuple[str, ...] = ("--disks", str(FAST_DISKS), "--k", str(FAST_K),
                              "--seed", str(FAST_SEED)),
) -> tuple[_kill_child.Emitted, float, bool, bool]:  # fmt: skip
    """Run the child (with the arguments ``child``); SIGKILL it once it has emitted
    ``at_events`` events, and wait for its writer.

    Returns what it had emitted, how long after its first event it died, whether it was
    killed (False: it finished first), and whether a writer process was waited for.
    """
    _kill_child.create(str(progress))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.replay._kill_child", str(path), str(progress), *child,
         "--commit-interval", str(interval), "--writer", writer],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while _kill_child.read(str(progress)).events == 0:
            assert proc.poll() is None, f"the child exited with {proc.returncode} before its run"
            assert time.monotonic() < deadline, "the child emitted nothing in 120 s"
            time.sleep(0.005)  # polling for the start, not measuring time
        began = time.monotonic()
        while proc.poll() is None and _kill_child.read(str(progress)).events < at_events:
            time.sleep(0.005)  # polling the child's progress
        killed = proc.poll() is None
        waited = False
        if killed:
            alive = time.monotonic() - began
            waited = _kill(proc, writer)
        else:
            proc.wait()
            alive = time.monotonic() - began
        return _kill_child.read(str(progress)), alive, killed, waited
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def _committed(path: Path) -> list[AnyEvent]:
    try:
        return await load_events(path)
    except UnknownRunError:
        return []  # the file has its schema but not one committed event


@pytest.mark.slow  # about 25 s per thread case: each kill resumes the run to its end
@pytest.mark.parametrize(("writer", "interval"), CASES_FAST)
def test_full_speed_runs_killed_lose_at_most_one_commit_interval(
    tmp_path: Path, fast_reference: tuple[list[str], int], writer: WriterKind, interval: float
) -> None:
    if writer == "process" and not HAVE_PROC:
        pytest.skip("the writer process is found in /proc")
    rng = random.Random(f"fast-kill:{interval}" + ("" if writer == "thread" else f":{writer}"))
    # The process writer loses at most what was not shipped, whatever the commit interval.
    allowed = COMMIT_ALLOWANCE + (interval if writer == "thread" else SHIP_INTERVAL)
    failures: list[str] = []
    killed = waited = resumed = 0
    for i in range(FAST_KILLS):
        path, progress = tmp_path / f"fast{i}.db", tmp_path / f"fast{i}.progress"
        at_events = int(rng.uniform(*KILL_AT) * fast_reference[1])
        emitted, alive, was_killed, had_writer = _kill_fast_run(
            path, progress, interval, at_events, writer
        )
        waited += had_writer
        tag = f"kill {i} ({writer} writer, interval {interval} s, after {alive:.2f} s)"

        # (a) what the file holds is a verified prefix
        report = verify_log(path)
        if not report.ok:
            failures.append(f"{tag}: (a) {report.problem} {[r.line() for r in report.runs]}")

        # (b) it holds all but at most one commit interval of the work emitted
        committed = anyio.run(_committed, path)
        decided = [e.step for e in committed if isinstance(e, StepDecided)]
        if committed:
            loss = emitted.ts - committed[-1].ts
            line = (
                f"{tag}: emitted seq {emitted.seq} step {emitted.decided_step}; committed seq"
                f" {committed[-1].seq} step {decided[-1] if decided else -1}; lost {loss:.3f} s,"
                f" {emitted.seq - committed[-1].seq} events,"
                f" {emitted.decided_step - (decided[-1] if decided else -1)} steps"
            )
        else:
            loss = alive
            line = (
                f"{tag}: emitted seq {emitted.seq} step {emitted.decided_step}; committed"
                f" nothing: lost all {alive:.2f} s, {emitted.seq + 1} events,"
                f" {emitted.decided_step + 1} steps"
            )
        print(line)
        if loss > allowed:
            failures.append(f"(b) {line}; allowed {allowed:.3f} s")
        # A kill that lands after the run has finished (its process still closing the log)
        # killed no run: the vacuity check below counts only kills of a run in progress.
        finished = bool(committed) and isinstance(committed[-1], RunFinished)
        killed += was_killed and not finished

        # (c) resuming finishes the run with the uninterrupted run's decisions
        if not committed:
            print(f"{tag}: (c) not checked: nothing committed to resume")
            continue
        if writer == "process" and resumed:
            # Resuming is the thread cases' code from here on, and the slow part of the test:
            # one resumed file of the process writer's is enough.
            continue
        resumed += 1
        try:
            # The client is given, not rebuilt from the log: see the xfail test below.
            result = anyio.run(_resume_paper, path)
        except Exception as exc:
            failures.append(f"{tag}: (c) resume raised {exc!r}")
            continue
        if not result.ok:
            failures.append(f"{tag}: (c) resume failed: {result.reason}")
            continue
        # A finished run is reported unchanged: nothing appended, so no run_resumed.
        problems = _resumed_problems(path, fast_reference[0], resumes=0 if finished else 1)
        failures += [f"{tag}: (c) {problem}" for problem in problems]

    assert killed >= FAST_KILLS - 1, "runs finished before the kill"
    if writer == "process":
        assert waited >= killed - 1, "killed runs had no writer process to wait for"
    assert not failures, "\n".join(failures)


async def _resume_paper(path: Path) -> RunResult:
    return await resume_run(path)  # the preset's model is rebuilt from run_started


def _resumed_problems(path: Path, winners: list[str], *, resumes: int = 1) -> list[str]:
    events = anyio.run(load_events, path)
    problems = []
    got = [e.winner for e in events if isinstance(e, StepDecided)]
    if got != winners:
        pairs = enumerate(zip(got, winners, strict=False))
        first = next((n for n, (a, b) in pairs if a != b), min(len(got), len(winners)))
        problems.append(f"winners differ from the uninterrupted run's from step {first}")
    if [e.seq for e in events] != list(range(len(events))):
        problems.append("seqs are not gap-free")
    requested = Counter(e.sample_id for e in events if isinstance(e, SampleRequested))
    received = Counter(e.sample_id for e in events if isinstance(e, SampleReceived))
    for kind, counts in (("requested", requested), ("received", received)):
        twice = [sample for sample, n in counts.items() if n > 1]
        if twice:
            problems.append(f"{len(twice)} sample ids {kind} twice, e.g. {twice[0]}")
    found = sum(isinstance(e, RunResumed) for e in events)
    if found != resumes:
        problems.append(f"{found} run_resumed events, not {resumes}")
    return problems


def test_resume_rebuilds_the_simulated_model_of_a_preset(tmp_path: Path) -> None:
    path = tmp_path / "preset.db"

    async def go() -> RunResult:
        with anyio.CancelScope() as scope:
            async with Engine(log=path, client=SimulatedModel(preset="paper")) as engine:
                seen = 0

                def stop_soon(event: object) -> None:
                    nonlocal seen
                    seen += 1
                    if seen == 40:  # mid-way through step 2 or so
                        scope.cancel()

                await engine.run(Hanoi(4), policy=Policy(k=3), seed=1, sinks=[stop_soon])
        return await resume_run(path)

    assert anyio.run(go).ok
