"""The log's readers on a pipelined, hedged run (tests/replay/_pipelined.py): the fold, the
report and the re-vote tell each step by its decided start, and count what speculating and
hedging cost."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from events import (
    SampleCancelled,
    SampleHedged,
    SampleRequested,
    StepAbandoned,
    StepDecided,
    StepStarted,
    VoteCounted,
)
from maker import Hedge, Policy, SimConfig
from maker.tasks import Hanoi
from replay import report_data, revote, summarize

from . import _pipelined as P
from ._logs import load, record
from .test_revote import _CountTask


def test_the_hand_built_run_is_what_its_constants_say() -> None:
    # The constants the other tests compare with, counted from the events themselves, and the
    # run follows the stream's rule: every sample event belongs to its step's latest start.
    events = P.pipelined_events()
    latest: dict[int, int] = {}
    for event in events:
        if isinstance(event, StepStarted):
            latest[event.step] = event.branch
        elif isinstance(event, SampleRequested):
            assert P.START_OF[event.sample_id] == (event.step, latest[event.step])
    assert [e.seq for e in events] == list(range(len(events)))
    assert sum(isinstance(e, SampleRequested) for e in events) == P.SAMPLES
    assert sum(isinstance(e, VoteCounted) for e in events) == P.VOTES
    assert sum(isinstance(e, StepAbandoned) for e in events) == P.MISSPECULATED_STEPS
    assert sum(isinstance(e, SampleHedged) for e in events) == P.HEDGED_SAMPLES
    abandoned = {(e.step, e.branch) for e in events if isinstance(e, StepAbandoned)}
    assert sum(start in abandoned for start in P.START_OF.values()) == P.MISSPECULATED_SAMPLES
    cancelled = Counter(e.reason for e in events if isinstance(e, SampleCancelled))
    assert cancelled == P.CANCELLED


def test_the_summary_counts_what_speculating_and_hedging_cost() -> None:
    s = summarize(P.pipelined_events())
    assert (s.status, s.steps, s.k) == ("succeeded", P.STEPS, P.K)
    assert s.samples == P.SAMPLES
    assert s.votes == P.VOTES
    assert s.received == P.RECEIVED
    assert s.red_flags == P.RED_FLAGS
    assert s.misspeculated_samples == P.MISSPECULATED_SAMPLES
    assert s.misspeculated_steps == P.MISSPECULATED_STEPS
    assert s.hedged_samples == P.HEDGED_SAMPLES
    assert s.cancelled == sum(P.CANCELLED.values())
    assert s.cancelled_by_reason == P.CANCELLED
    assert s.cost_usd == pytest.approx(0.001 * P.RECEIVED)
    # The samples per step are the decided starts': the misspeculated ones are the rest.
    per_step = [P.DECIDED[n]["samples"] for n in range(P.STEPS)]
    assert s.samples_per_step == dict(enumerate(per_step))
    assert s.mean_samples_per_step == sum(per_step) / P.STEPS
    assert s.max_samples_per_step == max(per_step)
    assert sum(per_step) + s.misspeculated_samples == s.samples
    out = s.to_json()
    assert out["misspeculated_samples"] == P.MISSPECULATED_SAMPLES
    assert out["misspeculated_steps"] == P.MISSPECULATED_STEPS
    assert out["hedged_samples"] == P.HEDGED_SAMPLES
    assert out["cancelled_by_reason"] == dict(P.CANCELLED)
    assert out["cancelled_samples"] == sum(P.CANCELLED.values())


@pytest.mark.parametrize("per_step", [True, 4, 2])
def test_each_step_record_is_of_its_decided_start(per_step: bool | int) -> None:
    s = summarize(P.pipelined_events(), per_step=per_step)
    records = {r.step: r for r in s.step_records}
    if per_step is True:
        assert sorted(records) == list(range(P.STEPS))
    else:
        # The most-sampled decided starts: steps 1 (5) and 0 (4) first, then 2 (3), 3 (2).
        assert sorted(records) == sorted([1, 0, 2, 3][: int(per_step)])
    for n, step in records.items():
        want = P.DECIDED[n]
        assert step.branch == want["branch"]
        assert step.speculative == want["speculative"]
        assert step.samples == want["samples"]
        assert step.received == want["received"]
        assert step.red_flags == want["red_flags"]
        assert step.cancelled == want["cancelled"]
        assert step.votes == want["votes"]
        assert step.winner == want["winner"]
        assert step.abandoned == want["abandoned"]
        assert step.abandoned_samples == want["abandoned_samples"]
        assert step.failures == 0
        assert step.cost_usd == pytest.approx(0.001 * want["received"])
        assert step.state == {"n": n + 1}


def test_a_run_cut_between_an_abandoned_start_and_the_next_shows_no_stale_figures() -> None:
    events = P.pipelined_events()
    cut = next(i for i, e in enumerate(events) if isinstance(e, StepAbandoned) and e.step == 2)
    s = summarize(events[: cut + 1])
    records = {r.step: r for r in s.step_records}
    # Step 2's abandoned start (3 samples, a vote and a red flag) is in the totals only.
    assert records[2].samples == records[2].red_flags == 0
    assert records[2].votes == {}
    assert (records[2].abandoned, records[2].abandoned_samples) == (1, 3)
    assert s.misspeculated_samples == 4
    assert s.status == "running"


def test_the_report_takes_each_step_from_its_decided_start() -> None:
    data = report_data(P.pipelined_events())
    assert data.steps_started == P.STEPS
    want = {n: d["valid_votes"] for n, d in P.DECIDED.items()}
    assert dict(data.votes_to_decide) == want
    assert data.votes_histogram == dict(Counter(want.values()))
    # Undecided after r valid votes: 4 steps, all decided by round 4.
    assert data.convergence == [(1, 4), (2, 1), (3, 1), (4, 0)]
    hard = {h.step: h for h in data.hardest}
    for n, h in hard.items():
        assert (h.votes, h.samples, h.red_flags, h.tally, h.decided) == (
            P.DECIDED[n]["valid_votes"],
            P.DECIDED[n]["samples"],
            P.DECIDED[n]["red_flags"],
            P.DECIDED[n]["votes"],
            True,
        )
    # Red flags by step are the decided starts': the abandoned start's malformed one is not.
    assert data.red_flags_by_step == {0: {"too_long": 1}}
    # The totals count every sample, and say what was misspeculated, hedged and cancelled.
    assert data.summary.samples == P.SAMPLES
    assert data.summary.misspeculated_samples == P.MISSPECULATED_SAMPLES
    assert data.to_json()["summary"]["hedged_samples"] == P.HEDGED_SAMPLES
    assert len(data.latencies) == P.RECEIVED


def test_the_report_page_names_the_price_of_speculating(tmp_path: Path) -> None:
    from replay import render_html

    page = render_html(report_data(P.pipelined_events()))
    assert "misspeculated" in page
    assert "4 samples of 2 abandoned starts" in page
    assert "2 samples" in page.split("hedged", 1)[1]
    assert "3 decided, 2 misspeculated" in page


def test_a_revote_uses_only_the_votes_of_each_steps_decided_start() -> None:
    report = revote(P.pipelined_events(), _CountTask(), k=P.K)
    assert report.revoted == report.decided_steps == P.STEPS
    assert report.changed_steps == report.short_steps == []
    by_step = {s.step: s for s in report.steps}
    # The recorded k decides every step again from its decided start's responses, in order:
    # step 2's abandoned start (move 10 and a red flag) would have left it undecided.
    assert {n: s.winner for n, s in by_step.items()} == {
        n: d["winner"] for n, d in P.DECIDED.items()
    }
    assert {n: s.recorded_samples for n, s in by_step.items()} == {
        n: d["received"] for n, d in P.DECIDED.items()
    }
    assert {n: s.requested for n, s in by_step.items()} == {
        n: d["samples"] for n, d in P.DECIDED.items()
    }
    assert {n: s.votes for n, s in by_step.items()} == {n: d["votes"] for n, d in P.DECIDED.items()}
    assert by_step[0].red_flags == 1  # "no idea" does not parse
    assert by_step[2].red_flags == 0
    # The hedge and the straggler vote like any other sample.
    assert by_step[1].needed == 4
    assert by_step[2].needed == 2
    assert not any("undecided" in note for note in report.notes)


def test_a_revote_that_decides_otherwise_reports_the_changed_steps() -> None:
    report = revote(P.pipelined_events(), _CountTask(), k=1)
    by_step = {s.step: s for s in report.steps}
    # k = 1 takes each start's first valid vote: step 1's is the wrong move 9, which the
    # recording's speculation also followed; step 2's is move 3 (from its decided start), not
    # the abandoned start's move 10.
    assert report.changed_steps == [1]
    assert by_step[1].winner == P.answer(9)
    assert by_step[1].recorded_winner == P.answer(2)
    assert by_step[2].winner == P.answer(3)
    assert (by_step[2].needed, by_step[2].saved) == (1, 1)
    assert report.revoted == P.STEPS
    assert [s.step for s in report.changed] == [1]


def test_the_readers_agree_with_the_engine_on_pipelined_hedged_runs(tmp_path: Path) -> None:
    # Recorded by the engine: a noisy model misspeculates often and latencies spread enough
    # for hedges. The fold's totals are the engine's; each step record and report figure is
    # the decided start's; the recorded policy re-votes every step to its recorded winner.
    policy = Policy(
        k=2,
        pipeline=2,
        hedge=Hedge(quantile=0.5, min_s=0.001, warmup=3, per_step=1, share=0.5),
    )
    path = tmp_path / "log.db"
    results = record(
        path,
        lambda: Hanoi(5),
        [1, 2, 3],
        policy=policy,
        config=SimConfig(p=0.8, latency_ms=3.0, latency_sigma=1.0),
    )
    seen = Counter[str]()
    for result in results:
        events = load(path, result.run_id)
        s = summarize(events)
        assert (s.samples, s.votes, s.cancelled) == (
            result.samples,
            result.votes,
            result.cancelled_samples,
        )
        assert s.misspeculated_samples == result.misspeculated_samples
        assert s.misspeculated_steps == result.misspeculated_steps
        assert s.hedged_samples == result.hedged_samples
        assert s.misspeculated_samples == sum(
            e.samples for e in events if isinstance(e, StepAbandoned)
        )
        decided = {e.step: e for e in events if isinstance(e, StepDecided)}
        records = {r.step: r for r in s.step_records if r.decided}
        assert records.keys() == decided.keys()
        for n, step in records.items():
            assert (step.samples, step.votes, step.red_flags) == (
                decided[n].samples,
                decided[n].votes,
                decided[n].red_flags,
            )
        assert sum(r.samples for r in s.step_records) + s.misspeculated_samples == s.samples
        data = report_data(events)
        assert dict(data.votes_to_decide) == {n: sum(e.votes.values()) for n, e in decided.items()}
        again = revote(events, Hanoi(5), k=2)
        assert again.revoted == len(decided)
        assert again.changed_steps == again.short_steps == []
        seen["misspeculated"] += s.misspeculated_steps
        seen["hedged"] += s.hedged_samples
    # The runs exercised what the readers must handle.
    assert seen["misspeculated"] > 0
    assert seen["hedged"] > 0
