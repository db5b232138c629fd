"""The README's figures come from `benchmarks/`: the paper's-run benchmark and the latency
benchmark must keep running.

They run here on small puzzles, end to end, in their own subprocesses as they always run:
nothing about time is asserted, only that every stage ran and its figures hold together.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_million_benchmark_runs_end_to_end_on_a_small_puzzle(tmp_path: Path) -> None:
    log = tmp_path / "small.db"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.million", "--disks", "5", "--log", str(log), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["status"] == "succeeded"
    assert figures["steps"] == 31
    assert figures["samples"] >= 31 * 3  # k = 3: at least three votes a step
    for stage in ("run", "verify", "replay_verify", "report"):
        assert figures[f"{stage}_wall_s"] > 0
        assert figures[f"{stage}_peak_rss_mib"] > 0
    # The run's peak counts its writer process too.
    assert figures["run_writer_peak_rss_mib"] > 0
    assert figures["run_peak_rss_mib"] >= figures["run_engine_peak_rss_mib"]
    assert 0 < figures["bytes_per_sample"] < 10_000
    assert figures["rows_all_tables"] >= figures["rows_events_table"] == figures["events"]
    assert figures["engine_vs_raw_ratio"] > 0
    assert not log.exists()  # without --keep the log is removed


SMALL_LATENCY_RUN = (
    "--disks 3 --repeat 2 --pipeline 2 --hedge 0.9 --stragglers 0.2 --straggler-s 0.05 --json"
)
"""Both modes twice, with and without 20% of answers 50 ms late: seconds, not minutes."""


def test_the_latency_benchmark_measures_both_modes_and_stragglers_in_one_run() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.serve_sim_latency", *SMALL_LATENCY_RUN.split()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1  # --json: only the summary
    figures = json.loads(lines[0])
    runs = figures["runs"]
    # Two repetitions of both modes, each without and with stragglers.
    assert len(runs) == 8
    assert {(r["mode"], r["stragglers"] > 0) for r in runs} == {
        (mode, late) for mode in ("sequential", "pipelined") for late in (False, True)
    }
    assert all(r["status"] == "succeeded" and r["steps"] == 7 for r in runs)
    for r in runs:
        expected = (2, 0.9) if r["mode"] == "pipelined" else (0, 0.0)
        assert (r["pipeline"], r["hedge"]) == expected
        assert r["p"] == 0.99
        if r["stragglers"] == 0:
            assert r["late_faults"] == 0
    assert sum(r["late_faults"] for r in runs if r["stragglers"] > 0) > 0
    for mode in ("sequential", "pipelined"):
        assert figures["wall_over_limit"][mode] > 0
        assert figures["straggler_wall_ratio"][mode] > 0
    assert figures["samples_per_step_ratio"] > 0
    assert 0.6 < figures["pipelined_bound"] < 0.8  # E[min of 3] / median at sigma 0.5: 0.70


def test_the_report_figure_of_the_readme_is_drawn(tmp_path: Path) -> None:
    out = tmp_path / "report.png"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.report_figure", "--disks", "4", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["status"] == "succeeded"
    assert figures["steps"] == 15
    assert figures["undecided_by_round"][0] == 15
    assert figures["undecided_by_round"][-1] == 0
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_the_matchers_benchmark_measures_both_ways_on_the_same_seeds() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.matchers", "--steps", "60", "--seeds", "2", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    exact, number = figures["matchers"]["exact"], figures["matchers"]["number"]
    assert exact["steps"] == number["steps"] == 120
    assert exact["runs_ok"] == number["runs_ok"] == 2
    assert number["samples_per_step"] < exact["samples_per_step"]
    assert figures["ratio_number_to_exact"] == round(
        number["samples_per_step"] / exact["samples_per_step"], 3
    )


def test_the_copy_benchmark_copies_one_run_each_way(postgres_url: str) -> None:
    command = [sys.executable, "-m", "benchmarks.copy_speed", "--disks", "3", "--json"]
    done = subprocess.run(
        [*command, "--postgres", postgres_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["steps"] == 7
    assert figures["events"] > 7
    for name in ("sqlite_to_postgres", "sqlite_to_sqlite", "postgres_to_sqlite"):
        assert figures[f"{name}_events_per_s"] > 0
        assert figures[f"{name}_peak_rss_mib"] > 0
    assert figures["postgres_vs_sqlite_ratio"] > 0


def test_the_store_benchmark_runs_one_run_into_each_store(postgres_url: str) -> None:
    command = [sys.executable, "-m", "benchmarks.store_speed", "--disks", "3", "--json"]
    done = subprocess.run(
        [*command, "--postgres", postgres_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert [r["store"] for r in figures["runs"]] == ["sqlite", "postgres"]
    # The same run, the same events, in either store.
    assert {(r["status"], r["steps"], r["events"]) for r in figures["runs"]} == {
        ("succeeded", 7, figures["runs"][0]["events"])
    }
    assert figures["postgres_vs_sqlite_ratio"] > 0
