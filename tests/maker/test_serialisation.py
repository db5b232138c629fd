"""Results are serialised by msgspec from their own fields: each type's JSON holds exactly its
fields (under their JSON names), but for the few it documents as left out, plus the derived
values it documents. A field added later therefore reaches the JSON without anyone listing it,
and this file fails when one is left out (or a key appears that no field or derived value
explains)."""

from __future__ import annotations

import dataclasses
import json
from array import array
from collections import Counter
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from events import LogReport, RunIntegrity, open_run, verify_log
from maker import Engine, Policy, RunResult, SimulatedModel
from maker.apps.serve_sim._serve_sim import SimRequest, SimStats
from maker.core import RedFlagRules
from maker.engine import CalibrationReport, ModelCalibration, VerifyResult, calibrate
from maker.engine._recording import Divergence
from maker.tasks import Hanoi
from replay import (
    HardStep,
    ReportData,
    RevoteReport,
    RunSummary,
    StepRecord,
    StepRevote,
    report_data,
    revote,
    summarize,
    verify_run,
)


def field_names(obj: object) -> list[str]:
    return [f.name for f in dataclasses.fields(obj)]  # type: ignore[arg-type]


def as_read(value: Any) -> Any:
    """What a reader of the printed JSON gets back for ``value``."""
    return msgspec.json.decode(msgspec.json.encode(value))


def check_keys(
    obj: object,
    out: dict[str, Any],
    *,
    omitted: Collection[str] = (),
    renamed: Mapping[str, str] | None = None,
    shaped: Collection[str] = (),
    derived: Collection[str] = (),
) -> None:
    """``out`` (``obj``'s JSON) holds every field of ``obj`` but ``omitted``, under its
    ``renamed`` key, and the ``derived`` keys, nothing else; it is plain JSON; and every field
    not ``shaped`` (written in another form) holds the field's value as a reader reads it."""
    renamed = renamed or {}
    names = field_names(obj)
    assert set(omitted) <= set(names), "an omitted name is no field"
    kept = [n for n in names if n not in omitted]
    assert sorted(out) == sorted([renamed.get(n, n) for n in kept] + list(derived))
    # The stored fields come in field order (derived keys follow).
    stored = [k for k in out if k not in derived]
    assert stored == [renamed.get(n, n) for n in kept]
    assert json.loads(json.dumps(out)) == out
    for name in kept:
        if name not in shaped:
            assert out[renamed.get(name, name)] == as_read(getattr(obj, name)), name


def run_result() -> RunResult:
    return RunResult(
        run_id="r",
        status="succeeded",
        steps=4,
        samples=10,
        votes=9,
        red_flags=1,
        red_flags_by_reason={"too_long": 1},
        failures=0,
        cancelled_samples=1,
        k=3,
        wall_s=1.5,
        reason="",
        final_state=object(),  # a task's state object: not JSON, and not in the JSON
        max_samples_in_step=4,
        cost_usd=0.25,
        input_tokens=100,
        output_tokens=200,
    )


def test_a_run_result_is_its_fields_but_the_final_state_and_samples_per_step() -> None:
    result = run_result()
    out = result.to_json()
    check_keys(result, out, omitted={"final_state"}, derived={"samples_per_step"})
    assert out["samples_per_step"] == 2.5


def test_a_field_added_to_a_result_is_in_its_json_without_being_listed() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Extended(RunResult):
        retries: int = 7

    out = Extended(**{f: getattr(run_result(), f) for f in field_names(run_result())}).to_json()
    assert out["retries"] == 7


def test_a_verify_result_is_its_fields_with_the_divergence_written_out() -> None:
    ok = VerifyResult("r", True, 5, 5, None)
    check_keys(ok, ok.to_json(), omitted={"divergence"})
    expected = {"type": "step_decided", "seq": 3, "winner": "a"}
    diverged = VerifyResult("r", False, 3, 5, Divergence(3, expected, None))
    out = diverged.to_json()
    check_keys(diverged, out, omitted={"divergence"}, derived={"divergence"})
    assert out["divergence"] == {
        "seq": 3,
        "message": "replay diverges at seq 3: the replay ended before recorded step_decided",
        "expected": expected,
        "got": None,
    }


def test_a_calibration_is_its_counts_with_the_totals_given_per_response(tmp_path: Path) -> None:
    models = [SimulatedModel(preset="nano"), SimulatedModel(preset="ideal", name="ideal")]
    report = anyio.run(
        lambda: calibrate(Hanoi(6), models, samples=20, seed=3, log=tmp_path / "cal.db")
    )
    out = report.to_json()
    check_keys(report, out, omitted={"steps"}, shaped={"models"})
    totals = {"input_tokens", "output_tokens", "cost_usd", "latency_s"}
    per_response = {"mean_input_tokens", "mean_output_tokens", "cost_per_call", "mean_latency_s"}
    for model, entry in zip(report.models, out["models"], strict=True):
        assert isinstance(model, ModelCalibration)
        check_keys(
            model,
            entry,
            omitted=totals,
            shaped={"red_flags"},
            derived={"p", "p_low", "p_high", "v", *per_response},
        )
        assert list(entry["red_flags"]) == sorted(model.red_flags)
        assert (entry["p"], entry["p_low"], entry["v"]) == (model.p, model.p_low, model.v)
    assert isinstance(report, CalibrationReport)


def test_an_integrity_report_is_its_fields_with_ok_and_the_events(tmp_path: Path) -> None:
    run = RunIntegrity(run_id="r", events=3, ok=False, first_bad_seq=2, problem="gap")
    check_keys(run, run.to_json())
    assert RunIntegrity(**run.to_json()) == run
    report = LogReport(path="log.db", runs=(run,), problem="")
    out = report.to_json()
    check_keys(report, out, derived={"ok", "events"})
    assert (out["ok"], out["events"]) == (False, 3)
    assert out["runs"] == [run.to_json()]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunResult]:
    path = tmp_path_factory.mktemp("log") / "log.db"

    async def go() -> RunResult:
        async with Engine(log=path, client=SimulatedModel(preset="nano")) as engine:
            return await engine.run(Hanoi(3), policy=Policy(k=2), seed=2)

    return path, anyio.run(go)


def events_of(path: Path, run_id: str) -> list[Any]:
    async def go() -> list[Any]:
        async with open_run(path, run_id) as run:
            return [event async for event in run.events]

    return anyio.run(go)


SUMMARY_OMITTED = {
    "received",
    "samples_per_step",
    "decided_steps",
    "decided_samples",
    "max_decided_samples",
    "first_ts",
    "last_ts",
    "final_state",
    "model_params",
    "version",
    "initial_state",
    "step_records",
}
SUMMARY_RENAMED = {"cancelled": "cancelled_samples", "red_flags": "red_flags_by_reason"}
SUMMARY_DERIVED = {"red_flags", "samples_per_step_mean", "samples_per_step_max"}


def test_a_summary_and_its_steps_are_their_fields(recorded: tuple[Path, RunResult]) -> None:
    path, result = recorded
    summary = summarize(events_of(path, result.run_id))
    assert isinstance(summary, RunSummary)
    out = summary.to_json()
    check_keys(
        summary,
        out,
        omitted=SUMMARY_OMITTED,
        renamed=SUMMARY_RENAMED,
        shaped={"wall_s"},
        derived=SUMMARY_DERIVED,
    )
    assert out["red_flags"] == sum(summary.red_flags.values()) == result.red_flags
    assert out["samples_per_step_max"] == result.max_samples_in_step
    assert summary.step_records
    for step in summary.step_records:
        assert isinstance(step, StepRecord)
        check_keys(step, step.to_json())
    # A summary the run's run_finished did not close: wall_s is the span of its events.
    unfinished = RunSummary(first_ts=10.0, last_ts=12.5, red_flags=Counter(malformed=2))
    assert unfinished.to_json()["wall_s"] == 2.5


def test_a_report_is_its_fields_with_the_plots_series_summed_up(
    recorded: tuple[Path, RunResult],
) -> None:
    path, result = recorded
    data = report_data(events_of(path, result.run_id))
    assert isinstance(data, ReportData)
    out = data.to_json()
    check_keys(
        data,
        out,
        omitted={
            "undecided",
            "cost_over_time",
            "tokens_over_time",
            "red_flags_step_width",
            "votes_histogram",
        },
        shaped={
            "summary",
            "votes_to_decide",
            "hardest",
            "red_flags_by_step",
            "latencies",
            "by_step",
            "by_time",
            "by_tokens",
        },
        derived={
            "convergence",
            "cost_usd",
            "tokens",
            "p_estimate",
            "v_estimate",
            "prediction",
            "latency_quantiles",
        },
    )
    for binned in ("by_step", "by_time", "by_tokens"):
        assert out[binned] == getattr(data, binned).to_json()
    assert out["summary"] == data.summary.to_json()
    assert out["latencies"] == len(data.latencies)
    assert out["votes_to_decide"] == {str(s): v for s, v in sorted(data.votes_to_decide.items())}
    assert out["convergence"] == [list(pair) for pair in data.convergence]
    assert data.hardest
    for hard, entry in zip(data.hardest, out["hardest"], strict=True):
        assert isinstance(hard, HardStep)
        check_keys(hard, entry, derived={"candidates"})


def test_a_revote_is_its_fields_with_the_recorded_settings_nested(
    recorded: tuple[Path, RunResult],
) -> None:
    path, result = recorded
    report = revote(events_of(path, result.run_id), Hanoi(3), k=1, rule="first")
    assert isinstance(report, RevoteReport)
    nested = {"recorded_k", "recorded_rule", "recorded_red_flags", "recorded_matcher"}
    for steps in (False, True):
        out = report.to_json(steps=steps)
        check_keys(
            report,
            out,
            omitted={*nested, "steps", "changed_steps_", "short_steps_"},
            renamed={"revoted": "steps"},
            shaped={"changed"},
            derived={"recorded", "changed_steps", "short_steps", *(["per_step"] if steps else [])},
        )
        assert out["recorded"] == {
            "k": report.recorded_k,
            "rule": report.recorded_rule,
            "red_flags": report.recorded_red_flags,
            "matcher": report.recorded_matcher,
        }
    assert report.steps
    for step in report.steps:
        assert isinstance(step, StepRevote)
        check_keys(step, step.to_json(), derived={"decided", "changed"})
    short = RevoteReport(
        run_id="r",
        k=2,
        rule="ahead",
        red_flags={},
        recorded_k=3,
        recorded_rule="ahead",
        recorded_red_flags={},
        changed_steps_=array("I", [4, 9]),
        short_steps_=array("I", [1]),
    )
    assert (short.to_json()["changed_steps"], short.to_json()["short_steps"]) == ([4, 9], [1])


def test_serve_sim_stats_are_their_fields_with_the_counters_keyed_for_json() -> None:
    request = SimRequest(index=0, arrived=1.0, format="openai", model="m", fault=None, status=200)
    stats = SimStats(
        total=3,
        in_flight=1,
        max_in_flight=2,
        fault_counts={"timeout": 1, "malformed": 2},
        status_counts={None: 1, 500: 1, 200: 3},
        requests=(request,),
    )
    out = stats.to_json()
    check_keys(
        stats,
        out,
        renamed={"fault_counts": "faults", "status_counts": "statuses"},
        shaped={"status_counts", "fault_counts"},
    )
    assert list(out["faults"].items()) == [("malformed", 2), ("timeout", 1)]
    assert list(out["statuses"].items()) == [("200", 3), ("500", 1), ("none", 1)]
    assert out["requests"] == [request.to_json()]


def test_red_flag_rules_are_their_fields_with_checks_by_name() -> None:
    def no_digits(completion: Any) -> str | None:
        return None

    rules = RedFlagRules(max_output_tokens=10, checks=(no_digits,))
    out = rules.describe()
    check_keys(rules, out, shaped={"checks"})
    assert out["checks"] == ["no_digits"]


def test_a_verified_run_and_its_log_give_their_fields(recorded: tuple[Path, RunResult]) -> None:
    path, result = recorded
    verified = anyio.run(lambda: verify_run(path, result.run_id))
    out = verified.to_json()
    check_keys(verified, out, omitted={"divergence"})
    assert out["ok"]
    assert out["checked"] == out["recorded"] > result.samples
    log = verify_log(path)
    check_keys(log, log.to_json(), shaped={"path"}, derived={"ok", "events"})
