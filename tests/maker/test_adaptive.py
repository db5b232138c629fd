"""Adaptive k: the estimator, the engine's use of it, and its replay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events import KChanged, StepDecided
from maker import (
    AdaptiveK,
    ConfigError,
    Engine,
    PEstimate,
    Policy,
    SimConfig,
    SimulatedModel,
    k_min,
)
from maker.tasks import Hanoi, optimal_moves
from replay import load_events, verify_run


def test_the_prior_sets_the_first_k() -> None:
    config = AdaptiveK(target=0.999, prior_p=0.8, prior_strength=20)
    estimate = PEstimate(config)
    assert estimate.mean == pytest.approx(0.8)
    assert estimate.lower < 0.8  # planned at the lower bound, not the mean
    assert estimate.k(1023) == k_min(estimate.lower, 0.999, 1023)


@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 3)), min_size=1, max_size=60))
def test_agreement_raises_p_and_never_raises_k(steps: list[tuple[int, int]]) -> None:
    config = AdaptiveK(target=0.99, prior_p=0.7, k_max=40)
    estimate = PEstimate(config)
    for agree, disagree in steps:
        before_mean, before_k = estimate.mean, estimate.k(500)
        estimate.add(agree=agree, disagree=0)
        assert estimate.mean >= before_mean
        assert estimate.k(500) <= before_k
        estimate.add(agree=0, disagree=disagree)
        assert config.k_min <= estimate.k(500) <= config.k_max


def test_bounds_hold_and_hopeless_p_takes_k_max() -> None:
    config = AdaptiveK(target=0.999, prior_p=0.55, prior_strength=2, k_min=2, k_max=9)
    estimate = PEstimate(config)
    estimate.add(agree=1, disagree=30)
    assert estimate.k(1000) == 9
    estimate.add(agree=1_000_000, disagree=0)  # p near 0.99997: k_min would be 2
    assert estimate.k(1000) == 2


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"target": 1.0}, "adaptive.target"),
        ({"target": 0.9, "prior_p": 0.5}, "adaptive.prior_p"),
        ({"target": 0.9, "k_min": 5, "k_max": 4}, "adaptive.k_min"),
        ({"target": 0.9, "confidence": 1.0}, "adaptive.confidence"),
    ],
)
def test_adaptive_settings_are_validated(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        AdaptiveK(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_a_policy_cannot_cap_samples_below_k_max() -> None:
    with pytest.raises(ConfigError, match="max_samples_per_step"):
        Policy(max_samples_per_step=10, adaptive=AdaptiveK(target=0.9, k_max=20))


@pytest.mark.anyio
async def test_the_engine_adapts_k_records_each_change_and_replays_it(tmp_path: Path) -> None:
    path = tmp_path / "adaptive.db"
    adaptive = AdaptiveK(target=0.999, prior_p=0.8)
    policy = Policy(adaptive=adaptive)
    async with Engine(log=path, client=SimulatedModel(SimConfig(p=0.99))) as engine:
        result = await engine.run(Hanoi(8), policy=policy, seed=4)
    assert result.ok
    events = await load_events(path)
    changes = [e for e in events if isinstance(e, KChanged)]
    assert changes[0].step == 0
    assert changes[0].k == PEstimate(adaptive).k(255)
    assert changes[-1].k < changes[0].k  # the run's own votes showed p is better than feared
    assert result.k == changes[-1].k
    moves = [tuple(json.loads(e.winner)["move"]) for e in events if isinstance(e, StepDecided)]
    assert moves == optimal_moves(8)

    # Every step was decided with the k in force: the winner's lead at its decision is that k.
    k_at: dict[int, int] = {}
    change_steps = {c.step: c.k for c in changes}
    current = 0
    for step in range(255):
        current = change_steps.get(step, current)
        k_at[step] = current
    for e in events:
        if isinstance(e, StepDecided):
            votes = e.votes
            lead = votes[e.winner] - max((v for c, v in votes.items() if c != e.winner), default=0)
            assert lead == k_at[e.step]

    assert (await verify_run(path)).ok
    other = await verify_run(path, policy=Policy(adaptive=AdaptiveK(target=0.999, prior_p=0.9)))
    assert not other.ok
    assert other.divergence is not None
    assert other.divergence.expected["type"] == "k_changed"


@pytest.mark.anyio
async def test_adaptive_k_uses_fewer_samples_than_k_min_of_a_pessimistic_guess(
    tmp_path: Path,
) -> None:
    target, guess, steps = 0.999, 0.8, 255
    fixed = Policy(k=k_min(guess, target, steps))
    adaptive = Policy(adaptive=AdaptiveK(target=target, prior_p=guess))
    samples = {}
    for name, policy in (("fixed", fixed), ("adaptive", adaptive)):
        async with Engine(
            log=tmp_path / f"{name}.db", client=SimulatedModel(SimConfig(p=0.99))
        ) as engine:
            result = await engine.run(Hanoi(8), policy=policy, seed=7)
        assert result.ok
        samples[name] = result.samples
    assert samples["adaptive"] < 0.8 * samples["fixed"]
