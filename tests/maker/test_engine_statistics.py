"""Seeded Monte Carlo of the whole engine on the simulated model, against the paper's formulas.

test_montecarlo.py checks the voting rule alone. This checks the real thing end to end: the
engine's concurrent sampling, red flags and tally, driven by the simulated model's prompts and
text. With one rival answer per state (the case Eq 9 describes exactly) and red flags at rate
1 - v, the share of steps decided correctly must match Eq 9, and samples per step must match
Eq 16 divided by v (Eq 19's red-flag factor).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from events import Event, StepDecided, StepStarted, canonical_json
from maker import (
    Engine,
    Policy,
    SimConfig,
    SimulatedModel,
    expected_samples_per_step,
    p_step,
)
from maker.tasks import Arithmetic

pytestmark = pytest.mark.anyio

# 4.5 standard errors per check: with the 2 checks x 4 cells here, a false alarm has a chance
# of about 5e-5 per run, while a real bias of a few standard errors is still caught.
Z = 4.5
STEPS = 1500


@pytest.mark.parametrize(
    ("p", "k", "v"),
    [(0.75, 2, 1.0), (0.7, 3, 0.9), (0.85, 1, 0.8), (0.65, 3, 0.95)],
)
async def test_engine_matches_eq9_and_eq16_over_v(
    tmp_path: Path, p: float, k: int, v: float
) -> None:
    task = Arithmetic(steps=STEPS, digits=4, seed=11)
    config = SimConfig(p=p, rivals=1, hard_fraction=0.0, malformed_rate=1.0 - v, overlong_rate=0.0)
    states: dict[int, Any] = {}
    correct = 0
    samples: list[int] = []

    def observe(event: Event) -> None:
        nonlocal correct
        if isinstance(event, StepStarted):
            states[event.step] = task.state_from_json(event.state)
        elif isinstance(event, StepDecided):
            answer = task.oracle(states[event.step])
            assert answer is not None
            truth = canonical_json(task.answer_to_json(answer))
            correct += event.winner == truth
            samples.append(event.samples)

    async with Engine(log=tmp_path / "mc.db", client=SimulatedModel(config)) as engine:
        result = await engine.run(task, policy=Policy(k=k), seed=int(p * 1000) + k, sinks=[observe])
    assert result.ok, result.reason
    n = len(samples)
    assert n == STEPS

    expected_p = p_step(p, k)
    se_p = math.sqrt(expected_p * (1 - expected_p) / n)
    assert abs(correct / n - expected_p) <= Z * se_p + 1 / n, (correct / n, expected_p)

    expected_s = expected_samples_per_step(p, k, v)
    mean = sum(samples) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in samples) / (n - 1))
    assert abs(mean - expected_s) <= Z * sd / math.sqrt(n), (mean, expected_s)
