"""``maker copy`` through real subprocesses and a real PostgreSQL server: a fresh run each way,
checked by ``maker verify`` and ``maker replay --verify`` on every side; a copy killed with
kill -9 part-way, resumed to a whole copy; and bad input, each one clear line, a non-zero exit
and nothing written."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import anyio
import pytest

from events import open_log, verify_log
from maker.apps.cli._cli import main
from tests.events._factory import run_events
from tests.events.test_copy import exported
from tests.events.test_store_contract import HANG_GUARD, sql, write

from ._cli import MAKER, one_error_line

pytestmark = pytest.mark.anyio

_BLOCK = 4242  # the advisory lock a test trigger waits on, so a copy stops part-way


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``maker ARGS`` in this process (quicker than a subprocess), as a finished process."""
    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    else:  # pragma: no cover - main always exits
        code = 0
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


def ok(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    done = cli(capsys, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def checked(capsys: pytest.CaptureFixture[str], log: str) -> dict[str, int]:
    """Every run of the log and its event count, after ``maker verify`` passed."""
    report = json.loads(ok(capsys, "verify", log, "--json"))
    assert report["ok"], report
    return {run["run_id"]: run["events"] for run in report["runs"]}


def test_a_fresh_run_goes_to_postgres_and_back(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, postgres_url: str
) -> None:
    a, b = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    run_id = json.loads(ok(capsys, "run", "hanoi", "--disks", "4", "--log", a, "--json"))["run_id"]

    there = ok(capsys, "copy", a, postgres_url)
    assert there.startswith(f"{run_id}: ")
    assert "events copied" in there
    (line,) = [json.loads(x) for x in ok(capsys, "copy", postgres_url, b, "--json").splitlines()]
    assert (line["run_id"], line["finished"]) == (run_id, True)
    assert line["copied"] == line["events"]

    events = checked(capsys, a)
    for log in (postgres_url, b):
        assert checked(capsys, log) == events
        replayed = ok(capsys, "replay", "--verify", log)
        assert f"{events[run_id]} events reproduced exactly" in replayed
        assert ok(capsys, "export", log) == ok(capsys, "export", a)
    assert "already copied" in ok(capsys, "copy", a, b)


def test_bad_input_is_one_line_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, postgres_url: str
) -> None:
    a, b = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    ok(capsys, "run", "hanoi", "--disks", "3", "--log", a)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a log\n")
    down = "postgresql://maker@127.0.0.1:1/maker"

    def refused(*args: str) -> str:
        return one_error_line(cli(capsys, "copy", *args))

    assert f"cannot open {down}" in refused(a, down)
    assert f"cannot open {down}" in refused(down, b)
    assert "notes.txt is not a maker event log" in refused(str(notes), b)
    assert "missing.db" in refused(str(tmp_path / "missing.db"), b)
    assert "nosuch" in refused(a, b, "--run", "nosuch")
    assert "both the source and the destination" in refused(a, a)
    assert not Path(b).exists()

    # Another run of the same id in the destination: refused, the destination unchanged.
    (run_id,) = checked(capsys, a)
    other = ok(capsys, "run", "hanoi", "--disks", "4", "--log", postgres_url, "--json")
    taken = json.loads(other)["run_id"]
    before = checked(capsys, postgres_url)
    renamed = tmp_path / "renamed.db"
    anyio.run(_rename, Path(a), renamed, run_id, taken)
    line = refused(str(renamed), postgres_url)
    assert f"already holds a run {taken} that" in line, line
    assert "nothing was copied" in line, line
    assert checked(capsys, postgres_url) == before


async def test_a_copy_killed_part_way_resumes(tmp_path: Path, postgres_url: str) -> None:
    """The copy is held part-way by a trigger that waits on a lock the test holds (after its
    first batch is committed: a later batch moves the run's head), then killed with kill -9.
    Copying again continues from the destination's head to a whole, verifying copy."""
    import asyncpg

    source = str(tmp_path / "big.db")
    events = run_events("big", 1800)  # more events than the store commits in one batch
    await write(source, events)
    async with open_log(postgres_url):
        pass  # the schema, for the trigger to go on
    sql(
        postgres_url,
        "CREATE FUNCTION hold() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" PERFORM pg_advisory_xact_lock({_BLOCK}); RETURN NEW; END $$",
        "CREATE TRIGGER hold BEFORE UPDATE ON runs FOR EACH ROW EXECUTE FUNCTION hold()",
    )
    holder = await asyncpg.connect(postgres_url)
    try:
        await holder.execute(f"SELECT pg_advisory_lock({_BLOCK})")
        async with await anyio.open_process([*MAKER, "copy", source, postgres_url]) as copying:
            with anyio.fail_after(HANG_GUARD):
                while not await holder.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                ):
                    assert copying.returncode is None
                    await anyio.sleep(0.05)
            copying.send_signal(signal.SIGKILL)
            assert await copying.wait() == -signal.SIGKILL
        head = await holder.fetchval("SELECT head_seq FROM runs WHERE run_id = 'big'")
        assert 0 < head < len(events) - 1
        await holder.execute(f"SELECT pg_advisory_unlock({_BLOCK})")
        await holder.execute("DROP TRIGGER hold ON runs")
        with anyio.fail_after(HANG_GUARD):
            # The killed copy's server sessions end once they find its socket closed.
            while await holder.fetchval(  # noqa: ASYNC110 (the server's state)
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ):
                await anyio.sleep(0.05)
    finally:
        await holder.close()
    report = verify_log(postgres_url)
    assert report.ok, report
    assert [(run.run_id, run.events) for run in report.runs] == [("big", head + 1)]

    resumed = await anyio.run_process([*MAKER, "copy", source, postgres_url], check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert f"continued at seq {head + 1}: {len(events) - head - 1} of {len(events)}" in (
        resumed.stdout.decode()
    )
    for log in (source, postgres_url):
        report = verify_log(log)
        assert report.ok, report
        assert [(run.run_id, run.events) for run in report.runs] == [("big", len(events))]
    assert await exported(postgres_url, "big") == await exported(source, "big")


async def _rename(source: Path, dest: Path, run_id: str, new_id: str) -> None:
    """``source``'s run under another id, in a new log."""
    import msgspec

    async with open_log(source, mode="r") as log, open_log(dest) as out:
        async for event in log.read(run_id):
            await out.put(msgspec.structs.replace(event, run_id=new_id))
