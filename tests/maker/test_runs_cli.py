"""``maker runs FILE``: every run of a log, from its first and last events, with who writes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MAKER = [sys.executable, "-m", "maker"]


def maker(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MAKER, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def listed(cwd: Path, log: str) -> list[dict[str, Any]]:
    done = maker(cwd, "runs", log, "--json")
    assert done.returncode == 0, done.stderr
    lines: list[dict[str, Any]] = json.loads(done.stdout)
    return lines


def test_runs_lists_finished_interrupted_and_running_runs(tmp_path: Path) -> None:
    done = maker(tmp_path, "run", "hanoi", "--disks", "4", "--log", "x.db", "--json")
    finished = json.loads(done.stdout)
    # A run killed mid-way has no end: interrupted, once nobody holds it.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    writer = subprocess.Popen(
        # One step at a time, so that the run's length is known (pipelined, it is halved).
        [*MAKER, "run", "hanoi", "--disks", "8", "--latency-ms", "10", "--pipeline", "0",
         "--hedge", "0", "--log", "x.db"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            lines = listed(tmp_path, "x.db")
            if len(lines) == 2 and lines[1]["events"] > 20:
                break
            assert time.monotonic() < deadline, "the second run never started writing"
            time.sleep(0.1)
        running = lines[1]
        assert running["status"] == "running"
        assert running["pid"] == writer.pid
        assert running["steps"] is None
        table = maker(tmp_path, "runs", "x.db")
        assert f"running (pid {writer.pid})" in table.stdout
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    first, second = listed(tmp_path, "x.db")
    assert first["run_id"] == finished["run_id"]
    assert first["status"] == "succeeded"
    assert (first["steps"], first["samples"]) == (finished["steps"], finished["samples"])
    assert first["task"] == "hanoi"
    assert first["task_params"] == {"disks": 4}
    assert first["models"] == ["sim"]
    assert second["status"] == "interrupted"
    assert second["pid"] is None
    rows = maker(tmp_path, "runs", "x.db").stdout.splitlines()
    assert rows[0].split() == [
        "run", "task", "model", "status", "steps", "samples", "cost", "events", "started",
        "(UTC)",
    ]  # fmt: skip
    assert rows[1].startswith(finished["run_id"])
    assert "interrupted" in rows[2]
    # The simulated model has no price: its cost is unknown, not $0; an interrupted run's is
    # not in its last event, so not listed.
    assert (first["cost_usd"], second["cost_usd"]) == (0.0, None)
    assert rows[1].split()[7] == "unknown"  # the 8th word: the task cell has two
    assert rows[2].split()[7] == "-"


def test_runs_lists_the_cost_the_run_recorded_at_its_end(tmp_path: Path) -> None:
    (tmp_path / "prices.toml").write_text("[models]\nsim = { input = 3.0, output = 15.0 }\n")
    done = maker(tmp_path, "run", "hanoi", "--disks", "3", "--log", "x.db", "--prices",
                 "prices.toml", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["cost_usd"] > 0
    [line] = listed(tmp_path, "x.db")
    assert line["cost_usd"] == result["cost_usd"]
    shown = maker(tmp_path, "show", "x.db", "--json")
    # show folds every sample's recorded cost; the listing reads the run's last event only.
    assert abs(json.loads(shown.stdout)["cost_usd"] - line["cost_usd"]) < 1e-12
    row = maker(tmp_path, "runs", "x.db").stdout.splitlines()[1]
    assert row.split()[7] == f"${result['cost_usd']:.4f}"


def test_runs_of_a_file_that_is_not_a_log_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    done = maker(tmp_path, "runs", "notes.txt")
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1
    assert "is not a maker event log" in done.stderr
    assert "Traceback" not in done.stderr


def test_export_otel_and_report_say_what_they_wrote_as_json(tmp_path: Path) -> None:
    done = maker(tmp_path, "run", "hanoi", "--disks", "3", "--log", "x.db", "--json")
    result = json.loads(done.stdout)
    exported = maker(
        tmp_path, "export-otel", "x.db", "--exporter", "json", "--out", "t.jsonl", "--json"
    )
    assert exported.returncode == 0, exported.stderr
    summary = json.loads(exported.stdout)
    assert summary["run_id"] == result["run_id"]
    assert summary["out"] == "t.jsonl"
    assert summary["exporter"] == "json"
    # One span per run, step and sample.
    assert summary["spans"] == 1 + result["steps"] + result["samples"]
    spans = [
        span
        for line in (tmp_path / "t.jsonl").read_text().splitlines()
        for resource in json.loads(line)["resourceSpans"]
        for scope in resource["scopeSpans"]
        for span in scope["spans"]
    ]
    assert len(spans) == summary["spans"]
    assert {s["traceId"] for s in spans} == {summary["trace_id"]}

    report = maker(tmp_path, "report", "x.db", "--out", "rep", "--json")
    assert report.returncode == 0, report.stderr
    written = json.loads(report.stdout)
    assert written["page"] == str(Path("rep") / "index.html")
    assert all((tmp_path / f).is_file() for f in written["files"])
    assert sorted(Path(f).name for f in written["files"]) == sorted(os.listdir(tmp_path / "rep"))
    assert written["report"]["summary"]["run_id"] == result["run_id"]
    assert written["report"]["summary"]["steps"] == result["steps"]
