"""The run report: its data against the log's own counts, the page and its PNGs, the command."""

from __future__ import annotations

import re
import sqlite3
import sys
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner

from events import EventLogError, KChanged, StepDecided
from events._compact import TYPE_CODES
from maker import AdaptiveK, ConfigError, Policy, SimConfig, SimulatedModel
from maker.apps.cli._workflow_cli import report_command
from maker.engine._calibrate import calibrate
from maker.tasks import Hanoi
from replay import load_events
from replay._report import render_html, report_data, write_report

from ._logs import load, record

NOISY = SimConfig(p=0.85, malformed_rate=0.05, overlong_rate=0.05, hard_fraction=0.02, rivals=2)
PNG = b"\x89PNG\r\n\x1a\n"


def _recount(path: Path, run_id: str) -> tuple[list[tuple[int, int]], dict[int, int]]:
    """The convergence curve and the votes of each decided step, counted in SQL from the rows."""
    with closing(sqlite3.connect(path)) as conn:
        (key,) = conn.execute("SELECT key FROM runs WHERE run_id = ?", (run_id,)).fetchone()

        def steps(kind: str) -> set[int]:
            rows = conn.execute(
                "SELECT DISTINCT step FROM events WHERE run = ? AND type = ?",
                (key, TYPE_CODES[kind]),
            )
            return {int(s) for (s,) in rows}

        started, decided = steps("step_started"), steps("step_decided")
        votes = {
            int(step): int(n)
            for step, n in conn.execute(
                "SELECT step, COUNT(*) FROM events WHERE run = ? AND type = ? GROUP BY step",
                (key, TYPE_CODES["vote_counted"]),
            )
        }
    # The decision's own tally must agree with the votes counted before it.
    for event in load(path, run_id):
        if isinstance(event, StepDecided):
            assert sum(event.votes.values()) == votes[event.step]
    last = max((votes[s] for s in decided), default=0)
    curve = [
        (r, sum(1 for s in started if s not in decided or votes.get(s, 0) > r))
        for r in range(1, last + 1)
    ]
    return curve, {s: votes[s] for s in decided}


def test_convergence_data_equals_the_counts_in_the_log(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    (result,) = record(path, lambda: Hanoi(7), [4], policy=Policy(k=3), config=NOISY)
    assert result.ok
    data = report_data(load(path, result.run_id))
    curve, votes = _recount(path, result.run_id)
    assert data.convergence == curve
    assert data.votes_to_decide == votes
    assert data.steps_started == data.undecided[0] == 127
    # The paper's shape: nothing decides before k votes, and every step has decided by the end.
    assert [n for r, n in data.convergence if r < 3] == [127, 127]
    assert data.convergence[-1][1] == 0
    counts = [n for _, n in data.convergence]
    assert counts == sorted(counts, reverse=True)
    # The hardest steps are the ones that needed the most votes, hardest first.
    most = max(votes.values())
    assert data.hardest[0].votes == most
    assert [h.votes for h in data.hardest] == sorted((h.votes for h in data.hardest), reverse=True)
    assert len(data.hardest) == 10
    summary = data.summary
    assert sum(sum(r.values()) for r in data.red_flags_by_step.values()) == sum(
        summary.red_flags.values()
    )
    assert len(data.latencies) == summary.received
    assert data.cost_over_time[-1][1] == pytest.approx(summary.cost_usd)
    times = [t for t, _ in data.cost_over_time]
    assert times == sorted(times)
    assert times[0] >= 0


def test_an_undecided_step_stays_undecided_to_the_last_round(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    # Three samples may not decide a noisy step at k = 3: the run fails on the first that doesn't.
    (result,) = record(
        path, lambda: Hanoi(7), [1], policy=Policy(k=3, max_samples_per_step=3), config=NOISY
    )
    assert result.status == "failed"
    data = report_data(load(path, result.run_id))
    curve, _ = _recount(path, result.run_id)
    assert data.convergence == curve
    assert data.undecided[-1] == 1
    assert data.steps_started == result.steps + 1


def test_adaptive_k_changes_are_in_the_data_and_the_page(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    policy = Policy(adaptive=AdaptiveK(target=0.999, prior_p=0.8))
    (result,) = record(path, lambda: Hanoi(6), [3], policy=policy, config=NOISY)
    events = load(path, result.run_id)
    data = report_data(events)
    recorded = [(e.step, e.k) for e in events if isinstance(e, KChanged)]
    assert recorded
    assert list(data.k_changes) == recorded
    assert data.ks[0] == data.summary.k
    assert set(data.ks) == {data.summary.k} | {k for _, k in recorded}
    assert data.convergence == _recount(path, result.run_id)[0]
    assert "k changes (adaptive)" in render_html(data)


def test_the_report_page_references_existing_non_empty_pngs(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    (result,) = record(path, lambda: Hanoi(6), [2], policy=Policy(k=2), config=NOISY)
    page = write_report(load(path, result.run_id), tmp_path / "out" / "report")
    assert page == tmp_path / "out" / "report" / "index.html"
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    sources = re.findall(r'<img src="([^"]+)"', text)
    assert sources == ["convergence.png", "votes.png", "red_flags.png", "cost.png", "latency.png"]
    for source in sources:
        image = page.parent / source
        assert image.stat().st_size > 1000
        assert image.read_bytes().startswith(PNG)
    # Self-contained: nothing is fetched from elsewhere.
    assert "<script" not in text
    assert not re.search(r'(src|href)="(https?:)?//', text)
    # The header holds the run's figures, and the hardest steps are listed.
    assert result.run_id in text
    assert f"{result.samples} (per decided step" in text
    assert "Hardest steps" in text


@pytest.mark.anyio
async def test_a_calibration_run_reports_too(tmp_path: Path) -> None:
    path = tmp_path / "cal.db"
    report = await calibrate(Hanoi(6), [SimulatedModel(NOISY)], samples=30, seed=1, log=path)
    events = await load_events(path, report.models[0].run_id)
    data = report_data(events)
    assert data.convergence == []
    assert data.votes_to_decide == {}
    assert data.steps_started == 30
    page = write_report(events, tmp_path / "out")
    assert "calibration" in page.read_text(encoding="utf-8")
    assert all((tmp_path / "out" / name).stat().st_size > 0 for name in ("votes.png", "cost.png"))


def test_report_data_covers_one_run(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    first, second = record(path, lambda: Hanoi(3), [1, 2], policy=Policy(k=1))
    mixed = load(path, first.run_id) + load(path, second.run_id)
    with pytest.raises(ConfigError, match="one run"):
        report_data(mixed)
    with pytest.raises(ConfigError, match="no events"):
        report_data([])


def test_without_matplotlib_the_report_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "run.db"
    (result,) = record(path, lambda: Hanoi(3), [1], policy=Policy(k=1))
    events = load(path, result.run_id)
    # A None entry in sys.modules makes the import fail, as if matplotlib were not installed.
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ConfigError, match=re.escape("pip install 'maker[report]'")):
        write_report(events, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # The data needs no plotting library.
    assert report_data(events).steps_started == 7


def test_report_command_writes_the_page_of_the_named_run(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    first, second = record(path, lambda: Hanoi(4), [1, 2], policy=Policy(k=2))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        report_command, [str(path), "--run", second.run_id[:10], "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out / "index.html")
    assert second.run_id in (out / "index.html").read_text(encoding="utf-8")
    assert first.run_id not in (out / "index.html").read_text(encoding="utf-8")
    # Two runs and no --run: the log's error names them, for the CLI to print in one line.
    unnamed = CliRunner().invoke(report_command, [str(path), "--out", str(out)])
    assert unnamed.exit_code == 1
    assert isinstance(unnamed.exception, EventLogError)
    assert "--run" in str(unnamed.exception)
