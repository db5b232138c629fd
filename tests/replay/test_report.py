"""The run report: its data against counts made here from the log's events, the page and its
files, the calibration page, the command."""

from __future__ import annotations

import io
import json
import math
import re
import sqlite3
import sys
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner

from events import (
    AnyEvent,
    BreakerChanged,
    EventLogError,
    KChanged,
    RedFlagged,
    RunStarted,
    SampleFailed,
    SampleReceived,
    StepAbandoned,
    StepDecided,
    StepStarted,
    VoteCounted,
    encode,
)
from events._compact import TYPE_CODES
from maker import (
    AdaptiveK,
    ClientError,
    ConfigError,
    Engine,
    Limits,
    Policy,
    SampleRequest,
    Scheduler,
    SimConfig,
    SimulatedModel,
    calibration_from_events,
)
from maker.apps.cli._workflow_cli import report_command
from maker.engine._calibrate import calibrate
from maker.tasks import Hanoi
from replay import (
    ReportData,
    load_events,
    render_html,
    report_data,
    report_files,
    write_report,
)
from replay._plots import RUN_PLOTS
from replay._report import STEP_BINS, TOKEN_BINS

from ..maker._fakes import Count, Reply, ScriptedClient, correct
from ._logs import load, record

NOISY = SimConfig(p=0.85, malformed_rate=0.05, overlong_rate=0.05, hard_fraction=0.02, rivals=2)
SOUND = SimConfig(p=0.95, malformed_rate=0.01, overlong_rate=0.01, hard_fraction=0.01, rivals=2)
"""Noisy enough for red flags, disagreements and a long tail, sound enough for 1023 steps."""
PNG = b"\x89PNG\r\n\x1a\n"


# -- counts made here, from the events alone -------------------------------------------------


@dataclass
class Counted:
    """What a run's events say, counted plainly: every figure keyed by its raw position (a
    step, a second since the run started, an output token count), for re-binning."""

    started: set[int] = field(default_factory=set)
    votes: dict[int, int] = field(default_factory=dict)
    """Decided step -> the valid votes of its decided start."""
    received: Counter[int] = field(default_factory=Counter)
    flagged: Counter[int] = field(default_factory=Counter)
    flagged_by_reason: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    decided_at: list[float] = field(default_factory=list)
    samples_of: dict[int, int] = field(default_factory=dict)
    responses_by_tokens: Counter[int] = field(default_factory=Counter)
    flagged_by_tokens: Counter[int] = field(default_factory=Counter)
    judged_by_tokens: Counter[int] = field(default_factory=Counter)
    against_by_tokens: Counter[int] = field(default_factory=Counter)
    retries_at: list[float] = field(default_factory=list)
    failures_at: list[float] = field(default_factory=list)
    breakers: list[list[Any]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    agree: int = 0
    disagree: int = 0
    tokens: int = 0


def count(events: Sequence[AnyEvent]) -> Counted:
    c = Counted()
    start = next(e for e in events if isinstance(e, RunStarted))
    attempts = start.policy.get("max_attempts", 3)
    tokens_of = {e.sample_id: e.output_tokens for e in events if isinstance(e, SampleReceived)}
    # The valid votes of each start: those after its step_started (or its abandonment).
    ballots: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for e in events:
        t = e.ts - start.ts
        if isinstance(e, StepStarted):
            c.started.add(e.step)
            ballots[e.step] = []
        elif isinstance(e, StepAbandoned):
            ballots[e.step] = []
        elif isinstance(e, SampleReceived):
            c.received[e.step] += 1
            c.responses_by_tokens[e.output_tokens] += 1
            c.latencies.append(e.latency_s)
            c.tokens += e.input_tokens + e.output_tokens
        elif isinstance(e, RedFlagged):
            c.flagged[e.step] += 1
            c.flagged_by_reason[e.reason][e.step] += 1
            c.flagged_by_tokens[tokens_of[e.sample_id]] += 1
        elif isinstance(e, VoteCounted):
            ballots[e.step].append((e.candidate, tokens_of[e.sample_id]))
        elif isinstance(e, StepDecided):
            c.votes[e.step] = len(ballots[e.step])
            c.samples_of[e.step] = e.samples
            c.decided_at.append(t)
            for candidate, tokens in ballots[e.step]:
                c.judged_by_tokens[tokens] += 1
                c.against_by_tokens[tokens] += candidate != e.winner
                c.agree += candidate == e.winner
                c.disagree += candidate != e.winner
        elif isinstance(e, SampleFailed):
            retried = e.retryable and e.attempt < attempts
            (c.retries_at if retried else c.failures_at).append(t)
        elif isinstance(e, BreakerChanged):
            c.breakers.append([t, e.model, e.state, e.failures])
    return c


def rebin(raw: Mapping[int, float] | Sequence[float], width: float, bins: int) -> list[float]:
    """Raw counts (by position, or a list of positions counted once each) summed into bins."""
    out = [0.0] * bins
    items = raw.items() if isinstance(raw, Mapping) else ((x, 1) for x in raw)
    for x, n in items:
        out[int(x // width) if x > 0 else 0] += n
    return out


def _power_of_two(width: float, first: float = 1.0) -> bool:
    ratio = width / first
    return ratio >= 1 and math.log2(ratio).is_integer()


def _read(out: Path, name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
    return loaded


# -- the acceptance: a 10-disk run's report against the log ----------------------------------


def test_a_10_disk_report_shows_convergence_to_zero_beside_its_prediction(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    (result,) = record(path, lambda: Hanoi(10), [4], policy=Policy(k=3), config=SOUND)
    assert result.ok
    events = load(path, result.run_id)
    out = tmp_path / "report"
    data = report_data(events)
    page = write_report(data, out, logs=(path,))
    c = count(events)
    n = len(c.started)
    assert n == 1023

    # Convergence: every round from 0 to the last, down to zero, and the prediction beside it.
    conv = _read(out, "convergence")
    last = max(c.votes.values())
    assert conv["rounds"] == list(range(last + 1))
    assert conv["undecided"] == [
        sum(1 for s in c.started if c.votes.get(s, math.inf) > r) for r in range(last + 1)
    ]
    assert conv["undecided"][0] == n
    assert conv["undecided"][-1] == 0
    assert conv["ks"] == [3]
    p = c.agree / (c.agree + c.disagree)
    assert conv["p"] == pytest.approx(p)
    predicted = conv["predicted"]
    assert predicted[:3] == [n, n, n]  # nothing decides before k votes
    assert predicted[-1] < 0.5 <= predicted[-2] or len(predicted) == len(conv["undecided"])
    # At round k the measured count is a binomial draw around the prediction, give or take
    # the simulated model's hard states (2% of them, where p is lower): 4 standard errors.
    share = predicted[3] / n
    assert abs(conv["undecided"][3] - predicted[3]) < 4 * math.sqrt(n * share * (1 - share)) + 2

    votes = _read(out, "votes")
    histogram = Counter(c.votes.values())
    assert dict(zip(votes["votes"], votes["steps"], strict=True)) == dict(sorted(histogram.items()))
    assert sum(votes["predicted"]) == pytest.approx(n, abs=0.5)

    # Over the steps: the JSON's bins hold the counts of the steps they cover.
    flags = _read(out, "red_flags")
    width, bins = flags["width"], len(flags["start"])
    assert _power_of_two(width)
    assert bins <= 64
    assert width * bins >= n
    assert flags["received"] == rebin(c.received, width, bins)
    assert flags["red_flags"] == rebin(c.flagged, width, bins)
    assert sum(flags["red_flags"]) == result.red_flags > 0
    for reason, counts in c.flagged_by_reason.items():
        assert flags["by_reason"][reason] == rebin(counts, width, bins)
    samples = _read(out, "samples")
    assert samples["decided"] == rebin(Counter(c.votes.keys()), samples["width"], bins)
    assert samples["votes"] == rebin(c.votes, samples["width"], bins)
    assert samples["samples"] == rebin(c.samples_of, samples["width"], bins)
    assert samples["mean_samples"] == pytest.approx(sum(c.samples_of.values()) / n)
    v = (sum(c.received.values()) - sum(c.flagged.values())) / sum(c.received.values())
    assert samples["v"] == pytest.approx(v)
    assert samples["eq16_samples"] == pytest.approx(samples["eq16_votes"] / v)

    # By output tokens: responses, red flags, and votes against the winner.
    tokens = _read(out, "tokens")
    width, bins = tokens["width"], len(tokens["start"])
    assert _power_of_two(width)
    assert bins <= TOKEN_BINS
    assert tokens["responses"] == rebin(c.responses_by_tokens, width, bins)
    assert tokens["red_flags"] == rebin(c.flagged_by_tokens, width, bins)
    assert tokens["judged"] == rebin(c.judged_by_tokens, width, bins)
    assert tokens["against"] == rebin(c.against_by_tokens, width, bins)
    assert sum(tokens["against"]) == c.disagree > 0

    # Over time: steps decided per second.
    speed = _read(out, "throughput")
    width, bins = speed["width"], len(speed["start"])
    assert _power_of_two(width, 1 / 64)
    assert bins <= 64
    span = events[-1].ts - events[0].ts
    assert (bins - 1) * width <= span < bins * width  # the bins end with the run
    assert speed["decided"] == rebin(c.decided_at, width, bins)
    assert speed["steps_per_second"] == [d / width for d in speed["decided"]]

    latency = _read(out, "latency")
    ordered = sorted(c.latencies)
    assert latency["responses"] == len(ordered)
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        assert latency["quantiles"][name] == ordered[math.ceil(q * len(ordered)) - 1]
    assert sum(latency["counts"]) + latency["zero"] == len(ordered)

    cost = _read(out, "cost")
    assert cost["measure"] == "tokens"  # the simulated model has no price
    assert cost["value"][-1] == c.tokens

    # The whole data, and each hardest step's events as maker export prints them.
    whole = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert whole["convergence"] == [[r, u] for r, u in enumerate(conv["undecided"])][1:]
    assert whole["prediction"]["undecided"] == predicted
    assert whole["last_seq"] == events[-1].seq
    hardest = whole["hardest"]
    assert [h["votes"] for h in hardest] == sorted(c.votes.values(), reverse=True)[:10]
    for h in hardest:
        lines = (out / f"step-{h['step']}.jsonl").read_text(encoding="utf-8").splitlines()
        mine = [e for e in events if getattr(e, "step", None) == h["step"]]
        assert lines == [encode(e).decode() for e in mine]
        assert h["events_total"] == len(mine)
    _check_page(page, data, result.run_id, result.samples)


def _check_page(page: Path, data: ReportData, run_id: str, samples: int) -> None:
    """The page references every plot as PNG, SVG and JSON, and nothing from elsewhere."""
    out = page.parent
    assert page.name == "index.html"
    assert sorted(p.name for p in out.iterdir()) == sorted(report_files(data))
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    sources = re.findall(r'<img src="([^"]+)\.png"', text)
    assert sources[:3] == ["overview", "convergence", "votes"]
    for source in sources:
        assert (out / f"{source}.png").read_bytes().startswith(PNG)
        assert (out / f"{source}.png").stat().st_size > 1000
        assert (out / f"{source}.svg").read_text(encoding="utf-8").lstrip().startswith("<?xml")
        assert f'href="{source}.svg"' in text
        assert f'href="{source}.json"' in text
    # Self-contained: nothing is fetched from elsewhere, no script runs.
    assert "<script" not in text
    assert not re.search(r'(src|href)="(https?:)?//', text)
    # The header holds the run's figures and the prediction; the hardest steps link their events.
    assert run_id in text
    assert f"{samples} (per decided step" in text
    assert "Eq 16 / v" in text
    assert "Hardest steps" in text
    for h in data.hardest:
        assert f'href="step-{h.step}.jsonl"' in text
    # No date in the SVGs: the same data gives the same files.
    assert "<dc:date>" not in (out / "convergence.svg").read_text(encoding="utf-8")


def test_retries_failures_waits_and_breaker_changes_are_counted_over_time(tmp_path: Path) -> None:
    path = tmp_path / "run.db"

    def flaky(request: SampleRequest, attempt: int) -> Reply:
        step = int(request.sample_id.split(":")[0])
        if step in (1, 2) and attempt == 1:
            return ClientError("busy", kind="rate_limit", retryable=True)
        if step == 4:  # fails twice: out of attempts, the run fails here
            return ClientError("down", kind="server", retryable=True)
        return correct(request, attempt)

    async def go() -> str:
        limits = Limits(
            concurrency=1, backoff_base_s=0.001, breaker_threshold=2, breaker_cooldown_s=0.01
        )
        async with Engine(log=path, client=ScriptedClient(flaky), scheduler=Scheduler(limits)) as e:
            result = await e.run(Count(8), policy=Policy(k=2, max_attempts=2), seed=1)
        assert result.status == "failed"
        return result.run_id

    run_id = anyio.run(go, backend="asyncio")
    events = load(path, run_id)
    c = count(events)
    assert c.retries_at
    assert c.failures_at
    assert c.breakers
    data = report_data(events)
    (plot,) = [p for p in RUN_PLOTS if p.name == "incidents"]
    incidents = json.loads(json.dumps(plot.data(data)))
    width, bins = incidents["width"], len(incidents["start"])
    assert incidents["retries"] == rebin(c.retries_at, width, bins)
    assert incidents["failures"] == rebin(c.failures_at, width, bins)
    assert [
        [b["t"], b["model"], b["state"], b["failures"]] for b in incidents["breaker_changes"]
    ] == (c.breakers)
    waits = [e for e in events if type(e).__name__ == "SchedulerWaited"]
    assert sum(incidents["waits"]) == len(waits) > 0
    # The plot draws them: one line each, labelled with its count.
    svg = io.StringIO()
    plot.render(incidents).savefig(svg, format="svg")
    assert f"retries ({len(c.retries_at)})" in svg.getvalue().replace("\u2009", " ")


def test_an_undecided_step_stays_undecided_to_the_last_round(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    # Three samples may not decide a noisy step at k = 3: the run fails on the first that doesn't.
    (result,) = record(
        path, lambda: Hanoi(7), [1], policy=Policy(k=3, max_samples_per_step=3), config=NOISY
    )
    assert result.status == "failed"
    data = report_data(load(path, result.run_id))
    assert data.undecided[-1] == 1
    assert data.steps_started == result.steps + 1
    assert data.convergence == _sql_convergence(path, result.run_id)


def _sql_convergence(path: Path, run_id: str) -> list[tuple[int, int]]:
    """The convergence curve counted in SQL from the stored rows."""
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
    last = max((votes[s] for s in decided), default=0)
    return [
        (r, sum(1 for s in started if s not in decided or votes.get(s, 0) > r))
        for r in range(1, last + 1)
    ]


def test_adaptive_k_changes_are_in_the_data_the_prediction_and_the_page(tmp_path: Path) -> None:
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
    assert data.convergence == _sql_convergence(path, result.run_id)
    # Each step counts under the k it was voted with: the recorded one, then each change's.
    by_k: Counter[int] = Counter()
    for step in {e.step for e in events if isinstance(e, StepStarted)}:
        k = data.summary.k
        for at, changed in recorded:
            if at <= step:
                k = changed
        by_k[k] += 1
    assert data.started_by_k == dict(sorted(by_k.items()))
    assert data.prediction is not None
    assert data.prediction.undecided[0] == pytest.approx(data.steps_started)
    assert "k changes (adaptive)" in render_html(data)


@pytest.mark.anyio
async def test_a_calibration_run_gets_its_own_page_with_p_and_its_interval(tmp_path: Path) -> None:
    path = tmp_path / "cal.db"
    report = await calibrate(Hanoi(6), [SimulatedModel(NOISY)], samples=60, seed=1, log=path)
    events = await load_events(path, report.models[0].run_id)
    data = report_data(events)
    assert data.is_calibration
    assert data.convergence == []
    assert data.prediction is None
    # The model's figures are those `maker calibrate` folds from the same events.
    assert data.calibration == calibration_from_events(events) == report.models[0]
    assert data.calibration is not None
    assert data.calibration.valid > data.calibration.correct > 0
    out = tmp_path / "out"
    page = write_report(data, out)
    text = page.read_text(encoding="utf-8")
    assert "<h1>Calibration" in text
    low, high = data.calibration.interval
    assert f"{data.calibration.p:.4f}" in text
    assert f"{low:.4f} to {high:.4f}" in text
    assert not (out / "convergence.png").exists()
    assert data.hardest == ()
    flags = _read(out, "flag_reasons")
    assert flags["red_flags"] == dict(
        sorted(Counter(e.reason for e in events if isinstance(e, RedFlagged)).items())
    )
    tokens = _read(out, "tokens")
    assert tokens["reference"] == "oracle"
    assert sum(tokens["against"]) == data.calibration.valid - data.calibration.correct


@pytest.mark.anyio
async def test_a_log_of_one_calibration_gets_a_page_with_a_row_per_model(tmp_path: Path) -> None:
    path = tmp_path / "cal.db"
    models = [SimulatedModel(NOISY), SimulatedModel(SimConfig(p=0.99), name="sim-good")]
    report = await calibrate(Hanoi(5), models, samples=40, seed=2, log=path)
    out = tmp_path / "out"
    result = await anyio.to_thread.run_sync(
        lambda: CliRunner().invoke(report_command, [str(path), "--out", str(out), "--json"])
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["page"] == str(out / "index.html")
    # Each model's figures are those `maker calibrate` reported, in the page and its JSON.
    assert [m["calibration"] for m in printed["models"]] == [m.to_json() for m in report.models]
    page = (out / "index.html").read_text(encoding="utf-8")
    for model in report.models:
        low, high = model.interval
        assert f"<td>{model.p:.4f}</td><td>{low:.4f} to {high:.4f}</td>" in page
        assert f'href="{model.run_id}/index.html"' in page
        assert (out / model.run_id / "flag_reasons.svg").exists()


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
        report_command, [str(path), "--run", second.run_id[:10], "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["page"] == str(out / "index.html")
    assert all(Path(name).exists() for name in printed["files"])
    assert printed["report"]["summary"]["run_id"] == second.run_id
    assert second.run_id in (out / "index.html").read_text(encoding="utf-8")
    assert first.run_id not in (out / "index.html").read_text(encoding="utf-8")
    # Two runs and no --run: the log's error names them, for the CLI to print in one line.
    unnamed = CliRunner().invoke(report_command, [str(path), "--out", str(out)])
    assert unnamed.exit_code == 1
    assert isinstance(unnamed.exception, EventLogError)
    assert "--run" in str(unnamed.exception)


def test_binned_series_keep_their_counts_as_bins_widen() -> None:
    from replay._report import _Bins

    bins = _Bins(1, 8)
    for x in range(100):
        bins.add(x, "n")
    result = bins.result()
    assert result.width == 16
    assert result.bins == 7
    assert result.get("n") == (16.0,) * 6 + (4.0,)
    # Reaching past the last bin widens the bins first, then extends them.
    reached = _Bins(1, 8)
    reached.add(7, "n")
    reached.reach(9.5)
    assert reached.result().width == 2
    assert reached.result().get("n") == (0.0, 0.0, 0.0, 1.0, 0.0)
    wider = result.coarsened(3)
    assert wider.width == 64
    assert wider.get("n") == (64.0, 36.0)
    assert STEP_BINS >= 64
