"""maker against a PostgreSQL log, through real subprocesses and a real server: a run and every
command that reads it, and bad input (unreachable server, wrong credentials, a database without
the schema, a newer schema, another application's tables), each one clear line, a non-zero
exit and nothing written."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from events import NotALogError, SchemaVersionError, open_log
from tests._postgres import PASSWORD, PASSWORD_ROLE, PostgresServer
from tests.events.test_store_contract import sql

from ._cli import maker, one_error_line, verified

pytestmark = pytest.mark.anyio


def as_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


def test_a_run_and_every_reader_on_a_database(tmp_path: Path, postgres_url: str) -> None:
    done = maker(tmp_path, "run", "hanoi", "--disks", "4", "--log", postgres_url, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "succeeded"
    run_id = result["run_id"]
    events = verified(tmp_path, postgres_url)
    assert list(events) == [run_id]

    shown = maker(tmp_path, "show", postgres_url, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["steps"] == 15

    replayed = maker(tmp_path, "replay", "--verify", postgres_url)
    assert replayed.returncode == 0, replayed.stderr
    assert f"{events[run_id]} events reproduced exactly" in replayed.stdout

    exported = maker(tmp_path, "export", postgres_url)
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [line["seq"] for line in lines] == list(range(events[run_id]))
    assert lines[0]["type"] == "run_started"
    assert lines[-1]["type"] == "run_finished"

    resumed = maker(tmp_path, "resume", postgres_url, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["resumed"] is False
    assert verified(tmp_path, postgres_url) == events

    # The report and a calibration read and write the database as they do a file.
    reported = maker(tmp_path, "report", postgres_url, "--out", "report", "--json")
    assert reported.returncode == 0, reported.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["last_seq"] == events[run_id] - 1
    calibrated = maker(tmp_path, "calibrate", "hanoi", "--disks", "4", "--model", "sim",
                       "--samples", "20", "--log", postgres_url, "--json")  # fmt: skip
    assert calibrated.returncode == 0, calibrated.stderr
    assert len(verified(tmp_path, postgres_url)) == 2  # the run and the calibration's model


def test_an_unreachable_server_is_one_line(tmp_path: Path) -> None:
    url = "postgresql://maker@127.0.0.1:1/maker"
    for args in (("run", "hanoi", "--disks", "2", "--log", url), ("show", url), ("verify", url)):
        line = one_error_line(maker(tmp_path, *args))
        assert "cannot open postgresql://maker@127.0.0.1:1/maker" in line, line


def test_wrong_credentials_are_one_line_and_not_shown(
    tmp_path: Path, postgres_url: str, postgres_server: PostgresServer
) -> None:
    url = as_user(postgres_url, PASSWORD_ROLE, "wrong")
    done = maker(tmp_path, "run", "hanoi", "--disks", "2", "--log", url)
    line = one_error_line(done)
    assert "password authentication failed" in line, line
    assert "wrong" not in line  # the password is never echoed
    assert PASSWORD not in line
    assert sql(postgres_url, "SELECT to_regclass('events') IS NULL") == [(True,)]


def test_a_password_in_the_url_never_reaches_the_output(
    tmp_path: Path, postgres_url: str, postgres_server: PostgresServer
) -> None:
    sql(postgres_url, f"GRANT ALL ON SCHEMA public TO {PASSWORD_ROLE}")
    url = as_user(postgres_url, PASSWORD_ROLE, PASSWORD)
    for args in (
        ("run", "hanoi", "--disks", "2", "--log", url),
        ("run", "hanoi", "--disks", "2", "--log", url, "--json"),
        ("show", url, "--run", "x"),  # a failure names the log too
    ):
        done = maker(tmp_path, *args)
        assert PASSWORD not in done.stdout + done.stderr, args
        if args[0] == "run":
            assert done.returncode == 0, done.stderr
            assert ":***@" in done.stdout, done.stdout


def test_a_database_without_the_schema(tmp_path: Path, postgres_url: str) -> None:
    """Reading it says so (and makes nothing); the first run makes the schema."""
    for command in ("show", "export", "verify"):
        line = one_error_line(maker(tmp_path, command, postgres_url))
        assert "holds no maker log" in line, line
    assert sql(postgres_url, "SELECT to_regclass('meta') IS NULL") == [(True,)]
    done = maker(tmp_path, "run", "hanoi", "--disks", "2", "--log", postgres_url)
    assert done.returncode == 0, done.stderr
    assert len(verified(tmp_path, postgres_url)) == 1


def test_a_newer_schema_is_refused_and_nothing_written(tmp_path: Path, postgres_url: str) -> None:
    assert maker(tmp_path, "run", "hanoi", "--disks", "2", "--log", postgres_url).returncode == 0
    sql(postgres_url, "UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    before = sql(postgres_url, "SELECT count(*) FROM events")
    for args in (("run", "hanoi", "--disks", "2", "--log", postgres_url), ("show", postgres_url)):
        line = one_error_line(maker(tmp_path, *args))
        assert line.endswith("has log schema version 99; this maker reads version 3"), line
    assert sql(postgres_url, "SELECT count(*) FROM events") == before


async def test_schema_errors_as_the_sqlite_log_raises_them(postgres_url: str) -> None:
    with pytest.raises(NotALogError, match="holds no maker log"):
        async with open_log(postgres_url, mode="r"):
            pass
    sql(postgres_url, "CREATE TABLE events (x integer)")
    with pytest.raises(NotALogError, match="no maker meta table"):
        async with open_log(postgres_url):
            pass
    sql(postgres_url, "DROP TABLE events")
    async with open_log(postgres_url) as log:
        assert log.schema_version == 3
    sql(postgres_url, "UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    with pytest.raises(SchemaVersionError) as raised:
        async with open_log(postgres_url):
            pass
    assert (raised.value.found, raised.value.supported) == (4, 3)
