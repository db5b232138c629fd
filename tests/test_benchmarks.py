"""The README's figures come from `benchmarks/`: the paper's-run benchmark must keep running.

It is run here on 5 disks (31 steps), end to end, in its own subprocesses as it always runs:
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
