"""Copying runs between logs (:func:`events.copy_runs`): SQLite to PostgreSQL and back, file to
file, on a real server (tests/_postgres.py). A copy is lossless when the destination's run
exports byte for byte as the source's does and both sides' hash chains verify."""

from __future__ import annotations

import hashlib
from contextlib import aclosing
from pathlib import Path

import msgspec
import pytest

from events import (
    BrokenLogError,
    CopyConflictError,
    EventLog,
    EventLogError,
    RunFinished,
    copy_runs,
    encode,
    open_log,
    verify_log,
)

from ._factory import run_events
from .test_store_contract import GOLDEN, drop_append_only, of_run, sql, write

pytestmark = pytest.mark.anyio

VERSIONS = {
    "v1": ["v1-arithmetic", "v1-hanoi", "v1-resumed"],
    "v2": ["v2-arithmetic", "v2-hanoi", "v2-long", "v2-resumed"],
    "v3": [
        "v3-arithmetic",
        "v3-hanoi",
        "v3-hedged",
        "v3-long",
        "v3-pipelined",
        "v3-provider",
        "v3-resumed",
    ],
}


async def exported(target: str, run_id: str) -> bytes:
    """What ``maker export`` writes of the run."""
    async with open_log(target, mode="r") as log, aclosing(log.read(run_id)) as events:
        return b"".join([encode(event) + b"\n" async for event in events])


def golden_export(name: str) -> tuple[str, bytes | None]:
    """The golden export's SHA-256, and its lines when they are kept whole."""
    lines = GOLDEN / f"{name}.export.jsonl"
    if lines.exists():
        data = lines.read_bytes()
        return hashlib.sha256(data).hexdigest(), data
    return (GOLDEN / f"{name}.export.sha256").read_text().split()[0], None


def assert_verifies(*targets: str) -> None:
    for target in targets:
        report = verify_log(target)
        assert report.ok, report


@pytest.mark.parametrize("version", sorted(VERSIONS))
async def test_golden_logs_go_to_postgres_and_back(
    version: str, tmp_path: Path, postgres_url: str
) -> None:
    """Every golden log of a version into one database (so runs share its blob and dictionary
    ids), then the database into a new file: each run exports as its golden export does."""
    names: dict[str, str] = {}
    for name in VERSIONS[version]:
        (run,) = await copy_runs(str(GOLDEN / f"{name}.db"), postgres_url)
        digest, _ = golden_export(name)
        assert run.sha256 == digest
        assert run.copied == run.events
        names[run.run_id] = name
    back = str(tmp_path / "back.db")
    copied = await copy_runs(postgres_url, back)
    assert sorted(run.run_id for run in copied) == sorted(names)
    assert_verifies(postgres_url, back)
    for run in copied:
        digest, lines = golden_export(names[run.run_id])
        assert run.sha256 == digest
        data = await exported(back, run.run_id)
        assert hashlib.sha256(data).hexdigest() == digest
        if lines is not None:
            assert data == lines
            assert await exported(postgres_url, run.run_id) == lines


async def test_file_to_file_and_to_an_existing_log(tmp_path: Path) -> None:
    """A copy into a log that holds other runs already: the copy's rows get that log's ids,
    and still export as the source's."""
    source, dest = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    await write(source, run_events("one", 40) + run_events("two", 7))
    await write(dest, run_events("other", 25))
    copied = await copy_runs(source, dest, ["tw"])  # a unique prefix names a run
    assert [(run.run_id, run.events, run.copied, run.finished) for run in copied] == [
        ("two", len(run_events("two", 7)), len(run_events("two", 7)), True)
    ]
    async with open_log(dest, mode="r") as log:
        assert sorted(info.run_id for info in await log.runs()) == ["other", "two"]
    assert await exported(dest, "two") == await exported(source, "two")
    assert_verifies(source, dest)


async def test_a_copy_cut_short_continues(tmp_path: Path, postgres_url: str) -> None:
    """A destination run that is a prefix of the source's (what a killed copy leaves) is
    continued from its head; copied whole, it is left alone."""
    source = str(tmp_path / "a.db")
    events = run_events("cut", 30)
    await write(source, events)
    await write(postgres_url, events[:100])
    (run,) = await copy_runs(source, postgres_url)
    assert (run.events, run.copied) == (len(events), len(events) - 100)
    assert "continued at seq 100" in run.line()
    assert await exported(postgres_url, "cut") == await exported(source, "cut")
    assert_verifies(postgres_url)
    (again,) = await copy_runs(source, postgres_url)
    assert (again.events, again.copied, again.sha256) == (len(events), 0, run.sha256)
    assert "already copied" in again.line()


async def test_a_conflict_is_refused_before_anything_is_written(
    tmp_path: Path, postgres_url: str
) -> None:
    source = str(tmp_path / "a.db")
    await write(source, run_events("fine", 3) + run_events("clash", 10))
    other = run_events("clash", 10)
    other[5] = msgspec.structs.replace(other[5], ts=other[5].ts + 1)
    await write(postgres_url, other[:20])
    with pytest.raises(CopyConflictError, match="differs from the source's in its first 20"):
        await copy_runs(source, postgres_url)
    async with open_log(postgres_url, mode="r") as log:
        assert [info.run_id for info in await log.runs()] == ["clash"]  # "fine" never came


async def test_a_longer_destination_run_is_a_conflict(tmp_path: Path) -> None:
    source, dest = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    events = run_events("long", 10)
    await write(source, events[:30])
    await write(dest, events)
    with pytest.raises(CopyConflictError, match="is longer than the source's"):
        await copy_runs(source, dest)


async def test_a_run_being_written_is_copied_to_its_committed_head(
    tmp_path: Path, postgres_url: str
) -> None:
    """The writer keeps the run; the copy takes what is committed, and a later copy the rest."""
    source = str(tmp_path / "live.db")
    events = run_events("live", 20)
    async with EventLog(source) as writer:
        for event in events[:50]:
            await writer.put(event)
        await writer.flush()
        (run,) = await copy_runs(source, postgres_url)
        assert (run.events, run.finished) == (50, False)
        assert "unfinished, up to seq 49" in run.line()
        for event in events[50:]:
            await writer.put(event)
    (rest,) = await copy_runs(source, postgres_url)
    assert (rest.events, rest.copied, rest.finished) == (len(events), len(events) - 50, True)
    assert await exported(postgres_url, "live") == await exported(source, "live")
    assert isinstance(events[-1], RunFinished)
    assert_verifies(source, postgres_url)


async def test_a_log_is_not_copied_onto_itself(tmp_path: Path) -> None:
    source = str(tmp_path / "a.db")
    await write(source, run_events("self", 2))
    with pytest.raises(EventLogError, match="both the source and the destination"):
        await copy_runs(source, str(tmp_path / "." / "a.db"))


async def test_a_broken_source_run_is_refused_at_its_first_bad_seq(
    tmp_path: Path, postgres_url: str
) -> None:
    """What the source's check finds stops the copy; what was copied before it is the run's
    intact prefix, which verifies."""
    source = str(tmp_path / "a.db")
    await write(source, run_events("bent", 10))
    sql(
        source,
        *drop_append_only(source),
        f"UPDATE events SET ts = ts + 1 WHERE {of_run('bent')} AND seq = 30",
    )
    with pytest.raises(BrokenLogError, match="at seq 30"):
        await copy_runs(source, postgres_url)
    report = verify_log(postgres_url)
    assert report.ok, report
    assert all(run.events <= 30 for run in report.runs)
