"""Workers sharing a PostgreSQL database, through real worker processes and a real server:
runs queued with ``maker submit`` (or the queue's API), claimed by ``maker worker``, one worker
killed with ``kill -9`` mid-way and its runs resumed by the others from the log; ``maker runs``
on a database; a task plugin needing the worker's trust; and bad input, one line each."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from events import (
    RunFinished,
    RunResumed,
    SampleRequested,
    StepDecided,
    open_run,
)
from maker import Engine, Policy, SimConfig, SimulatedModel
from maker.apps._settings import RunSettings
from maker.apps.worker import QueuedRun, RunQueue
from maker.tasks import make_task
from tests._postgres import PASSWORD, PASSWORD_ROLE, run_async
from tests.events.test_store_contract import sql

from ._cli import MAKER, maker, one_error_line
from ._plugin import write_counting
from .test_postgres_cli import as_user

ROOT = Path(__file__).resolve().parents[2]

DISKS = 5
LATENCY_MS = "10"
RUNS = 20
# Pipelining and hedging off: a run's samples, and so its decisions, are then a function of its
# seed alone, which is what "the decisions of an uninterrupted run of its seed" compares.
PIPELINE, HEDGE = 0, 0.0


def _worker(
    url: str, *extra: str, env: dict[str, str] | None = None, latency_ms: str = LATENCY_MS
) -> subprocess.Popen[str]:
    """``maker worker --drain`` on ``url``, its stdout a pipe read line by line."""
    return subprocess.Popen(
        [*MAKER, "worker", "--log", url, "--latency-ms", latency_ms, "--concurrency", "2",
         "--lease", "1", "--drain", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or {**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


def _owner(worker: subprocess.Popen[str]) -> str:
    """The worker's id, from the line it prints once it is claiming."""
    assert worker.stdout is not None
    line = worker.stdout.readline()
    assert line.startswith("worker "), line
    return line.split()[1]


def _submit(url: str, seeds: range) -> dict[int, str]:
    """Queue a Hanoi run per seed through the queue's API; the run id of each seed."""

    async def go() -> dict[int, str]:
        ids = {}
        async with RunQueue(url, create=True) as queue:
            for seed in seeds:
                run = QueuedRun(
                    run_id=f"run-{seed:02d}",
                    task="hanoi",
                    task_params={"disks": DISKS},
                    settings=RunSettings(seed=seed, pipeline=PIPELINE, hedge=HEDGE),
                )
                await queue.submit(run)
                ids[seed] = run.run_id
        return ids

    return run_async(go)


def _events(url: str, run_id: str) -> list[Any]:
    async def go() -> list[Any]:
        async with open_run(url, run_id) as run:
            return [event async for event in run.events]

    return run_async(go)


def _decisions(events: list[Any]) -> list[tuple[int | None, str, dict[str, int]]]:
    return [(e.step, e.winner, e.votes) for e in events if isinstance(e, StepDecided)]


def _reference(tmp_path: Path, seeds: range) -> dict[int, list[Any]]:
    """The decisions of an uninterrupted run of each seed (in a SQLite log, no latency)."""

    async def go() -> dict[int, list[Any]]:
        out = {}
        async with Engine(log=tmp_path / "reference.db", client=SimulatedModel()) as engine:
            for seed in seeds:
                result = await engine.run(
                    make_task("hanoi", {"disks": DISKS}),
                    policy=Policy(pipeline=0, hedge=None),
                    seed=seed,
                    run_id=f"ref-{seed}",
                )
                assert result.ok
        for seed in seeds:
            out[seed] = _decisions(_events(str(tmp_path / "reference.db"), f"ref-{seed}"))
        return out

    return run_async(go)


def _under_way(url: str, owner: str) -> bool:
    """Whether ``owner`` holds a run with events in the log (what the listing reads too)."""

    async def claimed() -> set[str]:
        async with RunQueue(url, create=False) as queue:
            return {c.run_id for c in await queue.claims() if c.owner == owner}

    held = run_async(claimed)
    if not held or sql(url, "SELECT to_regclass('runs') IS NULL") == [(True,)]:
        return False
    logged = sql(url, "SELECT run_id FROM runs WHERE head_seq > 10")
    return bool(held & {row[0] for row in logged})


def _runs(cwd: Path, url: str) -> list[dict[str, Any]]:
    done = maker(cwd, "runs", url, "--json")
    assert done.returncode == 0, done.stderr
    lines: list[dict[str, Any]] = json.loads(done.stdout)
    return lines


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[str]]]:
    """The test's worker processes, killed at its end whatever happened."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_a_killed_workers_runs_finish_elsewhere_with_the_same_decisions(
    tmp_path: Path, postgres_url: str, workers: list[subprocess.Popen[str]]
) -> None:
    seeds = range(RUNS)
    ids = _submit(postgres_url, seeds)
    reference = _reference(tmp_path, seeds)
    workers += [_worker(postgres_url) for _ in range(3)]
    victim = workers[1]
    owner = _owner(victim)
    # The moment: once the victim holds a run that is under way in the log, after a drawn
    # delay of up to a third of a second (a run takes about half a second).
    while not _under_way(postgres_url, owner):
        assert victim.poll() is None
    time.sleep(random.Random(19).uniform(0.0, 0.3))
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    for survivor in (workers[0], workers[2]):
        _, err = survivor.communicate(timeout=120)
        assert survivor.returncode == 0, err

    resumed = 0
    for seed, run_id in ids.items():
        events = _events(postgres_url, run_id)
        finished = events[-1]
        assert isinstance(finished, RunFinished), run_id
        assert finished.status == "succeeded", (run_id, finished.reason)
        assert _decisions(events) == reference[seed], run_id
        requested = [e.sample_id for e in events if isinstance(e, SampleRequested)]
        assert len(requested) == len(set(requested)), f"{run_id} asked for a sample twice"
        resumed += any(isinstance(e, RunResumed) for e in events)
    # Not vacuous: the kill landed while the victim held a run, which another worker resumed.
    assert resumed >= 1
    listed = _runs(tmp_path, postgres_url)
    assert sorted(line["run_id"] for line in listed) == sorted(ids.values())
    assert {line["status"] for line in listed} == {"succeeded"}
    assert all(line["owner"] is None for line in listed)


def test_runs_names_the_owner_and_a_dead_workers_run_waits_for_the_next_worker(
    tmp_path: Path, postgres_url: str, workers: list[subprocess.Popen[str]]
) -> None:
    # 63 steps a step at a time at 40 ms: seconds, long enough to be listed while under way.
    done = maker(
        tmp_path, "submit", "hanoi", "--disks", "6", "--pipeline", "0", "--hedge", "0",
        "--log", postgres_url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    workers.append(_worker(postgres_url, latency_ms="40"))
    owner = _owner(workers[0])
    while not _under_way(postgres_url, owner):  # in the log, not only claimed
        assert workers[0].poll() is None
    (line,) = _runs(tmp_path, postgres_url)
    assert (line["run_id"], line["status"], line["owner"]) == (run_id, "running", owner)
    assert line["lease_s"] >= 0
    os.kill(workers[0].pid, signal.SIGKILL)
    workers[0].wait(timeout=30)
    # No other worker: the claim stays the dead worker's, whatever its lease's age. The next
    # worker has another latency: it resumes the run with the model the log records.
    (line,) = _runs(tmp_path, postgres_url)
    assert (line["status"], line["owner"]) == ("running", owner)

    workers.append(_worker(postgres_url))
    out, err = workers[1].communicate(timeout=120)
    assert workers[1].returncode == 0, err
    assert f"run {run_id}: resumed, succeeded in 63 steps" in out, err
    (line,) = _runs(tmp_path, postgres_url)
    assert (line["status"], line["owner"], line["steps"]) == ("succeeded", None, 63)
    events = _events(postgres_url, run_id)
    requested = [e.sample_id for e in events if isinstance(e, SampleRequested)]
    assert len(requested) == len(set(requested))
    assert sum(isinstance(e, RunResumed) for e in events) == 1


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_stopped_worker_puts_its_runs_back_for_the_next_worker_at_once(
    tmp_path: Path, postgres_url: str, workers: list[subprocess.Popen[str]], stop: signal.Signals
) -> None:
    seeds = range(2)
    ids = _submit(postgres_url, seeds)
    reference = _reference(tmp_path, seeds)
    # A lease far longer than the test: only a release can let another worker take the runs.
    workers.append(_worker(postgres_url, "--lease", "600", latency_ms="40"))
    owner = _owner(workers[0])
    while not _under_way(postgres_url, owner):
        assert workers[0].poll() is None
    os.kill(workers[0].pid, stop)
    out, err = workers[0].communicate(timeout=60)
    assert workers[0].returncode == (0 if stop == signal.SIGTERM else 130), err
    assert "Traceback" not in err, err
    assert f"worker {owner} stopped; its unfinished runs are back in the queue" in out
    back = [line for line in out.splitlines() if "stopped with the worker" in line]
    assert back, out  # not vacuous: a run was under way when the signal came
    listed = {line["run_id"]: line for line in _runs(tmp_path, postgres_url)}
    logged = {row[0] for row in sql(postgres_url, "SELECT run_id FROM runs")}
    for line in back:
        run_id = line.split()[1].rstrip(":")
        assert listed[run_id]["owner"] is None, listed[run_id]
        if run_id in logged:  # a run claimed in the signal's instant may have no event yet
            events = _events(postgres_url, run_id)
            assert isinstance(events[-1], RunFinished)
            assert events[-1].status == "cancelled"
    assert logged & {line.split()[1].rstrip(":") for line in back}, out

    workers.append(_worker(postgres_url, "--lease", "600"))
    out, err = workers[1].communicate(timeout=120)
    assert workers[1].returncode == 0, err
    for seed, run_id in ids.items():
        events = _events(postgres_url, run_id)
        assert isinstance(events[-1], RunFinished)
        assert events[-1].status == "succeeded"
        assert _decisions(events) == reference[seed], run_id
        requested = [e.sample_id for e in events if isinstance(e, SampleRequested)]
        assert len(requested) == len(set(requested)), f"{run_id} asked for a sample twice"
    resumed = {run_id for run_id in ids.values() if f"run {run_id}: resumed" in out}
    assert resumed == logged & {line.split()[1].rstrip(":") for line in back}, out


def test_a_run_whose_writer_is_alive_stays_with_it(
    tmp_path: Path, postgres_url: str, workers: list[subprocess.Popen[str]]
) -> None:
    # The writer of a worker whose lease ran out while it still writes (a stalled machine):
    # here an engine of this process, writing the run that the queue then hands to a worker.
    async def write() -> None:
        model = SimulatedModel(SimConfig(latency_ms=150))  # seconds: the worker starts meanwhile
        async with Engine(log=postgres_url, client=model) as engine:
            task = make_task("hanoi", {"disks": DISKS})
            result = await engine.run(
                task, policy=Policy(pipeline=0, hedge=None), seed=1, run_id="held"
            )
            assert result.ok

    writer = threading.Thread(target=run_async, args=(write,))
    writer.start()
    try:
        while sql(postgres_url, "SELECT to_regclass('runs') IS NULL") == [(True,)] or not sql(
            postgres_url, "SELECT 1 FROM runs WHERE run_id = 'held' AND head_seq > 5"
        ):
            assert writer.is_alive()
        run = QueuedRun(
            run_id="held",
            task="hanoi",
            task_params={"disks": DISKS},
            settings=RunSettings(seed=1, pipeline=PIPELINE, hedge=HEDGE),
        )

        async def queue_it() -> None:
            async with RunQueue(postgres_url, create=True) as queue:
                await queue.submit(run)

        run_async(queue_it)
        workers.append(_worker(postgres_url))
        out, err = workers[0].communicate(timeout=120)
    finally:
        writer.join(timeout=120)
    assert workers[0].returncode == 0, err
    # Refused by the log's lock on the run, put back, and found finished once its writer was
    # done: the worker appended nothing to it.
    assert "run held: held by another writer; back in the queue" in out
    assert "run held: had finished, succeeded in 31 steps" in out
    events = _events(postgres_url, "held")
    assert not any(isinstance(e, RunResumed) for e in events)
    assert [type(e) for e in events].count(RunFinished) == 1
    requested = [e.sample_id for e in events if isinstance(e, SampleRequested)]
    assert len(requested) == len(set(requested))


def test_submit_prints_the_run_id_and_runs_lists_it_queued_then_done(
    tmp_path: Path, postgres_url: str, workers: list[subprocess.Popen[str]]
) -> None:
    done = maker(
        tmp_path, "submit", "hanoi", "--disks", "3", "--seed", "7", "--k", "2",
        "--log", postgres_url, "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    run_id = json.loads(done.stdout)["run_id"]
    plain = maker(tmp_path, "submit", "arithmetic", "--steps", "4", "--matcher", "number",
                  "--log", postgres_url)  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    other = plain.stdout.strip()
    queued = {line["run_id"]: line for line in _runs(tmp_path, postgres_url)}
    assert set(queued) == {run_id, other}
    assert queued[run_id]["status"] == "queued"
    assert (queued[run_id]["task"], queued[run_id]["task_params"]) == ("hanoi", {"disks": 3})
    assert queued[other]["task"] == "arithmetic"

    workers.append(_worker(postgres_url))
    out, err = workers[0].communicate(timeout=120)
    assert workers[0].returncode == 0, err
    assert f"run {run_id}: ran, succeeded in 7 steps" in out
    listed = {line["run_id"]: line for line in _runs(tmp_path, postgres_url)}
    assert listed[run_id]["status"] == listed[other]["status"] == "succeeded"
    # The run options went with the run: k = 2, seed 7, as maker run would have recorded.
    started = _events(postgres_url, run_id)[0]
    assert started.seed == 7
    assert started.policy["k"] == 2
    assert "matcher" not in started.policy  # exact, recorded as before matchers
    assert _events(postgres_url, other)[0].policy["matcher"] == "number"


def test_a_task_plugin_needs_the_workers_trust(
    tmp_path: Path, postgres_url: str, workers: list[subprocess.Popen[str]]
) -> None:
    plugins = write_counting(tmp_path / "plugins")
    env = {k: v for k, v in os.environ.items() if k != "MAKER_ALLOW_PLUGINS"}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), str(plugins)]), PYTHONUNBUFFERED="1")
    submitted = subprocess.run(
        [*MAKER, "submit", "--task", "counting:counting", "--params", '{"n": 3}',
         "--log", postgres_url],
        capture_output=True, text=True, env=env, check=False, timeout=120,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.strip()

    workers.append(_worker(postgres_url, env=env))
    out, err = workers[0].communicate(timeout=120)
    assert workers[0].returncode == 0, err
    assert f"maker: run {run_id} refused: " in err
    assert "counting" in err
    assert "--allow-plugin" in err
    (line,) = _runs(tmp_path, postgres_url)
    assert (line["run_id"], line["status"]) == (run_id, "refused")
    assert sql(postgres_url, "SELECT to_regclass('events') IS NULL") == [(True,)]

    # Resubmitted to a worker that trusts the plugin, it runs.
    submitted = subprocess.run(
        [*MAKER, "submit", "--task", "counting:counting", "--params", '{"n": 3}',
         "--log", postgres_url],
        capture_output=True, text=True, env=env, check=False, timeout=120,
    )  # fmt: skip
    trusted = submitted.stdout.strip()
    workers.append(_worker(postgres_url, "--allow-plugin", "counting", env=env))
    out, err = workers[1].communicate(timeout=120)
    assert workers[1].returncode == 0, err
    assert f"run {trusted}: ran, succeeded in 3 steps" in out


def test_an_unreachable_server_is_one_line(tmp_path: Path) -> None:
    url = "postgresql://maker@127.0.0.1:1/maker"
    for args in (
        ("submit", "hanoi", "--disks", "2", "--log", url),
        ("worker", "--log", url),
        ("runs", url),
    ):
        line = one_error_line(maker(tmp_path, *args))
        assert f"cannot open {url}" in line, line


def test_wrong_credentials_are_one_line_and_not_shown(tmp_path: Path, postgres_url: str) -> None:
    url = as_user(postgres_url, PASSWORD_ROLE, "wrong")
    for args in (("submit", "hanoi", "--log", url), ("worker", "--log", url), ("runs", url)):
        line = one_error_line(maker(tmp_path, *args))
        assert "password authentication failed" in line, line
        assert "wrong" not in line
        assert PASSWORD not in line
    assert sql(postgres_url, "SELECT to_regclass('pgqueuer') IS NULL") == [(True,)]


def test_a_database_without_log_or_queue_is_one_line_and_nothing_is_written(
    tmp_path: Path, postgres_url: str
) -> None:
    line = one_error_line(maker(tmp_path, "runs", postgres_url))
    assert "holds no maker log and no run queue" in line, line
    assert sql(postgres_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


def test_a_newer_log_is_refused_before_a_queue_is_made(tmp_path: Path, postgres_url: str) -> None:
    sql(
        postgres_url,
        "CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL)",
        "INSERT INTO meta VALUES ('application', 'maker'), ('schema_version', '99')",
    )
    for args in (("submit", "hanoi", "--log", postgres_url), ("worker", "--log", postgres_url)):
        line = one_error_line(maker(tmp_path, *args))
        assert "99" in line, line
    assert sql(postgres_url, "SELECT to_regclass('pgqueuer') IS NULL") == [(True,)]


def test_a_file_is_not_a_queue(tmp_path: Path) -> None:
    line = one_error_line(maker(tmp_path, "submit", "hanoi", "--log", str(tmp_path / "x.db")))
    assert "must be a postgresql:// URL" in line, line
    assert not (tmp_path / "x.db").exists()


def test_bad_run_options_are_refused_before_anything_is_queued(
    tmp_path: Path, postgres_url: str
) -> None:
    for args, said in (
        (("--k", "2", "--target", "0.9"), "give --k or --target, not both"),
        (("--adaptive",), "--adaptive needs --target"),
        (("--hedge", "0", "--hedge-min-s", "1"), "--hedge-min-s needs --hedge"),
    ):
        line = one_error_line(maker(tmp_path, "submit", "hanoi", "--log", postgres_url, *args))
        assert said in line, line
    assert sql(postgres_url, "SELECT to_regclass('pgqueuer') IS NULL") == [(True,)]
