"""Planning: k_min from the lower bound of p, the recommendation, the expectations against
simulated runs, calibration files, and the ``plan`` command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from maker import (
    ConfigError,
    Engine,
    Hedge,
    Policy,
    SimConfig,
    SimulatedModel,
    expected_samples_per_step,
    k_min,
    p_run,
)
from maker.apps.cli._workflow_cli import plan_command
from maker.core._plan import ModelEstimate, estimates_from_calibration, plan
from maker.engine._calibrate import calibrate
from maker.tasks import Hanoi

PAPER_STEPS = 2**20 - 1


@pytest.mark.anyio
async def test_expected_samples_per_step_is_within_5_percent_of_simulated_ten_disk_runs(
    tmp_path: Path,
) -> None:
    """The issue's acceptance test: plan against the mean of three seeded 10-disk runs.

    The simulated model has one rival answer per state (Eq 16's gambler's ruin is exact for
    one rival; with more, wrong votes split and steps end sooner) and no hard states, so p is
    the same at every step. Over about 3000 steps the standard error of the mean is about 0.6%
    of it, so the 5% bound is over eight standard errors: it fails for a wrong formula (leaving
    out the red-flag factor v alone is 10% off), not for noise. A run that decides a step wrong
    still votes every step of its budget, so every run contributes all its steps.
    """
    p, v = 0.95, 0.9
    config = SimConfig(p=p, hard_fraction=0.0, rivals=1, malformed_rate=0.06, overlong_rate=0.04)
    task = Hanoi(10)
    steps = task.max_steps()
    result = plan([ModelEstimate(model="sim", p=p, v=v)], steps=steps, target=0.8)
    planned = result.model("sim")
    assert planned.k_min == 3
    assert planned.expected_samples_per_step is not None
    total_samples = total_steps = 0
    async with Engine(log=tmp_path / "runs.db", client=SimulatedModel(config)) as engine:
        for seed in range(3):
            run = await engine.run(task, policy=Policy(k=planned.k_min), seed=seed)
            total_samples += run.samples
            total_steps += run.steps
    assert total_steps == 3 * steps
    measured = total_samples / total_steps
    assert measured == pytest.approx(planned.expected_samples_per_step, rel=0.05)
    assert planned.expected_samples == pytest.approx(planned.expected_samples_per_step * steps)


def test_k_min_and_p_run_come_from_the_lower_bound_of_p() -> None:
    estimate = ModelEstimate(model="m", p=0.999, p_low=0.99, p_high=0.9997, v=0.98)
    result = plan([estimate], steps=PAPER_STEPS, target=0.95)
    planned = result.model("m")
    assert k_min(0.999, 0.95, PAPER_STEPS) < k_min(0.99, 0.95, PAPER_STEPS)
    assert planned.k_min == k_min(0.99, 0.95, PAPER_STEPS)
    assert planned.p_run == pytest.approx(p_run(0.99, planned.k_min, PAPER_STEPS))
    assert planned.p_run is not None
    assert planned.p_run >= 0.95
    # The expected samples are the best estimate: at the point estimate of p, over v.
    assert planned.expected_samples_per_step == pytest.approx(
        expected_samples_per_step(0.999, planned.k_min, 0.98)
    )


def test_the_recommendation_is_the_cheapest_model_that_converges() -> None:
    cheap = ModelEstimate(model="cheap", p=0.99, p_low=0.985, v=0.99, cost_per_call=0.0005)
    dear = ModelEstimate(model="dear", p=0.9995, p_low=0.999, v=1.0, cost_per_call=0.004)
    lucky = ModelEstimate(model="lucky", p=0.7, p_low=0.45, v=1.0, cost_per_call=0.00001)
    result = plan([dear, lucky, cheap], steps=PAPER_STEPS, target=0.95)
    costs = {m.model: m.expected_cost_usd for m in result.models}
    assert costs["lucky"] is None  # its lower bound is not above 1/2
    assert costs["cheap"] is not None
    assert costs["dear"] is not None
    assert costs["cheap"] < costs["dear"]
    assert result.recommended == "cheap"
    assert not result.model("lucky").converges
    assert "0.5" in result.model("lucky").note
    for planned in result.models:
        if planned.converges:
            assert planned.expected_cost_usd == pytest.approx(
                planned.expected_samples * planned.estimate.cost_per_call  # type: ignore[operator]
            )
    out = result.to_json()
    assert out["recommended"] == "cheap"
    for entry in out["models"]:
        for key in ("model", "k_min", "expected_samples", "expected_cost_usd", "p_run"):
            assert key in entry
    # The dearer model wins once the cheap one's lower bound falls to a coin flip.
    shaky = ModelEstimate(model="cheap", p=0.99, p_low=0.5, v=0.99, cost_per_call=0.0005)
    assert plan([dear, shaky], steps=PAPER_STEPS, target=0.95).recommended == "dear"
    assert plan([lucky], steps=PAPER_STEPS, target=0.95).recommended is None


def test_ties_in_cost_go_to_fewer_samples() -> None:
    # Unpriced models (cost 0) tie on cost: the one that needs fewer samples is recommended.
    a = ModelEstimate(model="a", p=0.9)
    b = ModelEstimate(model="b", p=0.99)
    assert plan([a, b], steps=1023, target=0.9).recommended == "b"


def test_wall_time_follows_latency_and_concurrency() -> None:
    perfect = ModelEstimate(model="m", p=1.0, latency_s=2.0)
    k = plan([perfect], steps=100, target=0.9).model("m").k_min
    assert k == 1
    sure = ModelEstimate(model="m", p=0.999, latency_s=2.0)
    one = plan([sure], steps=100, target=0.99).model("m")
    assert one.k_min is not None
    assert one.k_min > 1
    assert one.expected_samples_per_step is not None
    # One call at a time: every sample costs a latency.
    assert one.expected_wall_s == pytest.approx(100 * one.expected_samples_per_step * 2.0)
    # k in flight: a step takes samples / k rounds, and at least one.
    wide = plan([sure], steps=100, target=0.99, concurrency=8, latency_s=0.5).model("m")
    rounds = max(1.0, one.expected_samples_per_step / one.k_min)
    assert wide.expected_wall_s == pytest.approx(100 * rounds * 0.5)
    assert (
        plan([ModelEstimate(model="m", p=0.99)], steps=5, target=0.9).models[0].expected_wall_s
        is None
    )


def test_pipelining_and_hedging_add_their_samples_to_the_estimates() -> None:
    est = ModelEstimate(model="m", p=0.99, v=0.98, cost_per_call=0.002)
    alone = plan([est], steps=1023, target=0.95).model("m")
    assert alone.misspeculation_samples_per_step == 0.0
    assert alone.hedge_samples_per_step == 0.0
    k, s = alone.k_min, alone.expected_samples_per_step
    assert k is not None
    assert s is not None
    assert alone.expected_samples == pytest.approx(s * 1023)

    # Depth 3: a wrong first vote (1 - p) abandons the 3 steps started ahead, k samples each.
    piped = plan([est], steps=1023, target=0.95, pipeline=3).model("m")
    assert piped.k_min == k
    assert piped.expected_samples_per_step == s  # the deciding start's samples do not change
    assert piped.misspeculation_samples_per_step == pytest.approx(0.01 * k * 3)
    assert piped.expected_samples == pytest.approx((s + 0.01 * k * 3) * 1023)
    assert piped.expected_cost_usd == pytest.approx((s + 0.01 * k * 3) * 1023 * 0.002)

    # Hedging past the 0.9 quantile: a tenth of the step's samples, within share and per_step.
    hedge = Hedge(quantile=0.9, share=0.5)
    hedged = plan([est], steps=1023, target=0.95, hedge=hedge).model("m")
    assert hedged.hedge_samples_per_step == pytest.approx(0.1 * s)
    assert hedged.expected_samples == pytest.approx(1.1 * s * 1023)
    # share bounds it: at most 2% of all samples, misspeculated ones included.
    both = plan([est], steps=1023, target=0.95, pipeline=3, hedge=Hedge(share=0.02)).model("m")
    assert both.hedge_samples_per_step == pytest.approx(0.02 * (s + 0.01 * k * 3))
    # per_step bounds it: one hedge per start at most, whatever the quantile.
    many = plan([est], steps=10, target=0.9, hedge=Hedge(quantile=0.01, share=1.0)).model("m")
    assert many.hedge_samples_per_step == 1.0

    recorded = plan([est], steps=1023, target=0.95, pipeline=3, hedge=hedge).to_json()
    assert recorded["pipeline"] == 3
    assert recorded["hedge"]["quantile"] == 0.9
    assert recorded["models"][0]["misspeculation_samples_per_step"] == pytest.approx(0.03 * k)
    # A model whose voting cannot converge has no estimates at all.
    weak = plan([ModelEstimate(model="w", p=0.5)], steps=10, target=0.9, pipeline=2).models[0]
    assert weak.misspeculation_samples_per_step is None
    assert weak.hedge_samples_per_step is None


@pytest.mark.parametrize(
    ("given", "field"), [({"pipeline": -1}, "pipeline"), ({"hedge": 0.9}, "hedge")]
)
def test_pipeline_and_hedge_of_a_plan_are_validated(given: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field}: "):
        plan([ModelEstimate(model="m", p=0.99)], steps=10, target=0.9, **given)  # type: ignore[arg-type]


def test_estimates_are_validated_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="p_low"):
        ModelEstimate(model="m", p=0.9, p_low=0.95)
    with pytest.raises(ConfigError, match="p_high"):
        ModelEstimate(model="m", p=0.9, p_high=0.8)
    with pytest.raises(ConfigError, match=r"^v:"):
        ModelEstimate(model="m", p=0.9, v=0.0)
    with pytest.raises(ConfigError, match="cost_per_call"):
        ModelEstimate(model="m", p=0.9, cost_per_call=-1.0)
    with pytest.raises(ConfigError, match=r"^p:"):
        ModelEstimate(model="m", p=math.nan)
    with pytest.raises(ConfigError, match="target"):
        plan([ModelEstimate(model="m", p=0.9)], steps=10, target=1.0)
    with pytest.raises(ConfigError, match="models"):
        plan([ModelEstimate(model="m", p=0.9)] * 2, steps=10, target=0.9)


@pytest.mark.anyio
async def test_a_calibration_report_becomes_estimates(tmp_path: Path) -> None:
    sims = [
        SimulatedModel(SimConfig(p=0.97, hard_fraction=0.0, malformed_rate=0.05)),
        SimulatedModel(SimConfig(p=0.99, hard_fraction=0.0), name="sim-b"),
    ]
    report = await calibrate(Hanoi(8), sims, samples=80, seed=1, log=tmp_path / "c.db")
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(report.to_json()))
    estimates = estimates_from_calibration(path)
    assert [e.model for e in estimates] == ["sim", "sim-b"]
    for estimate, measured in zip(estimates, report.models, strict=True):
        assert (estimate.p, estimate.p_low, estimate.p_high) == (
            measured.p,
            measured.p_low,
            measured.p_high,
        )
        assert estimate.v == measured.v
        assert estimate.latency_s == measured.mean_latency_s
    result = plan(estimates, steps=2**10 - 1, target=0.95)
    for planned, measured in zip(result.models, report.models, strict=True):
        assert planned.k_min == k_min(measured.p_low, 0.95, 1023)


def test_bad_calibration_files_are_refused(tmp_path: Path) -> None:
    missing = tmp_path / "none.json"
    with pytest.raises(ConfigError, match="cannot read"):
        estimates_from_calibration(missing)
    garbage = tmp_path / "bad.json"
    garbage.write_text("{not json")
    with pytest.raises(ConfigError, match="not JSON"):
        estimates_from_calibration(garbage)
    with pytest.raises(ConfigError, match="no 'models' list"):
        estimates_from_calibration({"task": "hanoi"})
    with pytest.raises(ConfigError, match="p_low"):
        estimates_from_calibration({"models": [{"model": "m", "v": 1.0, "cost_per_call": 0}]})
    # A model that never gave a valid answer plans as one that cannot converge.
    (silent,) = estimates_from_calibration(
        {"models": [{"model": "m", "p": None, "p_low": 0.0, "v": 0.2, "cost_per_call": 0.0}]}
    )
    assert silent.p_low == 0.0
    assert plan([silent], steps=10, target=0.9).recommended is None


# -- the command -----------------------------------------------------------------------------


def test_plan_command_with_a_given_p_prints_the_papers_figures() -> None:
    result = CliRunner().invoke(
        plan_command,
        ["hanoi", "--disks", "20", "--target", "0.95", "--p", "0.9978", "--v", "0.996",
         "--cost-per-call", "0.001", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["recommended"] == "model"
    (entry,) = data["models"]
    assert entry["k_min"] == 3  # the paper's gpt-4.1-mini at t = 0.95
    assert entry["p_run"] == pytest.approx(0.9888, abs=1e-4)
    assert entry["expected_samples"] == pytest.approx(
        expected_samples_per_step(0.9978, 3, 0.996) * PAPER_STEPS
    )
    assert entry["expected_cost_usd"] == pytest.approx(entry["expected_samples"] * 0.001)

    text = CliRunner().invoke(
        plan_command, ["arithmetic", "--steps", "500", "--target", "0.99", "--p", "0.95"]
    )
    assert text.exit_code == 0, text.output
    assert "recommended: model with k = " in text.output


def test_plan_command_counts_misspeculated_and_hedged_samples() -> None:
    args = ["hanoi", "--disks", "10", "--target", "0.95", "--p", "0.99", "--cost-per-call", "0.01"]
    base = json.loads(CliRunner().invoke(plan_command, [*args, "--json"]).output)
    # The defaults are maker run's: Policy's.
    assert base["pipeline"] == Policy().pipeline
    assert (base["hedge"] is None) == (Policy().hedge is None)
    more = CliRunner().invoke(plan_command, [*args, "--pipeline", "2", "--hedge", "0.95", "--json"])
    assert more.exit_code == 0, more.output
    (entry,) = json.loads(more.output)["models"]
    expected = plan(
        [ModelEstimate(model="model", p=0.99, cost_per_call=0.01)],
        steps=1023,
        target=0.95,
        pipeline=2,
        hedge=Hedge(quantile=0.95),
    ).models[0]
    assert entry["misspeculation_samples_per_step"] == pytest.approx(0.01 * entry["k_min"] * 2)
    assert entry["hedge_samples_per_step"] == pytest.approx(expected.hedge_samples_per_step)
    assert entry["expected_cost_usd"] == pytest.approx(expected.expected_cost_usd)
    text = CliRunner().invoke(plan_command, [*args, "--pipeline", "2", "--hedge", "0.95"])
    assert "pipeline 2; hedge at the 0.95 quantile" in text.output
    assert "misspeculated and " in text.output
    bad = CliRunner().invoke(plan_command, [*args, "--hedge", "1"])
    assert bad.exit_code == 2
    assert "--hedge" in bad.output


def test_plan_command_reads_a_calibration(tmp_path: Path) -> None:
    path = tmp_path / "cal.json"
    path.write_text(
        json.dumps(
            {
                "task": "hanoi",
                "models": [
                    {"model": "a", "p": 0.99, "p_low": 0.98, "p_high": 0.995, "v": 1.0,
                     "cost_per_call": 0.002, "mean_latency_s": 1.5},
                    {"model": "b", "p": 0.999, "p_low": 0.995, "p_high": 0.9998, "v": 0.99,
                     "cost_per_call": 0.01, "mean_latency_s": 1.0},
                ],
            }
        )
    )  # fmt: skip
    result = CliRunner().invoke(
        plan_command,
        ["hanoi", "--disks", "12", "--target", "0.9", "--from-calibration", str(path),
         "--concurrency", "4", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    by_model = {m["model"]: m for m in data["models"]}
    assert by_model["a"]["k_min"] == k_min(0.98, 0.9, 4095)
    assert by_model["b"]["k_min"] == k_min(0.995, 0.9, 4095)
    assert data["recommended"] == min(by_model, key=lambda m: by_model[m]["expected_cost_usd"])
    assert all(m["expected_wall_s"] > 0 for m in data["models"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "0.9"], "give --from-calibration FILE, or --p"),
        (["--target", "0.9", "--p", "0.9", "--from-calibration", "CAL"], "or --p"),
        (["--target", "0.9", "--from-calibration", "CAL", "--v", "0.9"], "--v goes with --p"),
        (["--target", "0.9", "--p", "0.9", "--steps", "4"], "--steps does not apply"),
        (["--target", "1.5", "--p", "0.9"], "--target"),
    ],
)
def test_plan_command_refuses_bad_combinations(
    tmp_path: Path, args: list[str], message: str
) -> None:
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps({"task": "hanoi", "models": []}))
    args = [str(cal) if a == "CAL" else a for a in args]
    result = CliRunner().invoke(plan_command, ["hanoi", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_plan_command_refuses_a_calibration_of_another_task(tmp_path: Path) -> None:
    cal = tmp_path / "cal.json"
    entry = {"model": "a", "p": 0.99, "p_low": 0.98, "v": 1.0, "cost_per_call": 0.0}
    cal.write_text(json.dumps({"task": "arithmetic", "models": [entry]}))
    result = CliRunner().invoke(
        plan_command, ["hanoi", "--target", "0.9", "--from-calibration", str(cal)]
    )
    assert result.exit_code == 2
    assert "calibrated the arithmetic task" in result.output
