"""Seeded Monte Carlo of first-to-ahead-by-k voting, run through the real Tally, against Eq 9,
Eq 16 and Eq 19.

Tolerances. Each comparison allows Z = 4.5 standard errors. Under the normal approximation a
correct implementation lands outside that with probability about 6.8e-6 per comparison; this file
makes about 50 comparisons, so even over fresh seeds the whole file would fail spuriously with
probability below about 4e-4. With fixed seeds the outcome is deterministic; the bound says the
seeds were not picked to pass. Meanwhile the bounds are tight enough to catch a wrong formula: at
20,000 trials a proportion's 4.5 SE is at most 4.5 * sqrt(0.25 / 20000) = 0.016.
"""

from __future__ import annotations

import math
import random
from typing import NamedTuple

import pytest

from maker.core._formulas import expected_samples_per_step, expected_votes_per_step, p_step
from maker.core._tally import Tally

Z = 4.5
# The normal approximation understates the binomial's upper tail when only a handful of wrong
# decisions are expected (p = 0.99, k >= 2 expects well under one in a cell). Allowing 3 extra
# wrong decisions on top of Z standard errors keeps the Poisson tail P(X > mu + 4.5 sqrt(mu) + 3)
# below 5.1e-6 for every mean mu (checked numerically over mu in [1e-3, 1e4]), in line with the
# normal tail used elsewhere.
COUNT_SLACK = 3
# Formula values are floats; k = 1 makes every step exactly one vote, where the sample SD is 0.
FLOAT_SLACK = 1e-9

TRIALS = 20_000
RIGHT = "right"


class Outcome(NamedTuple):
    correct: int
    votes: list[int]
    samples: list[int]


def simulate(seed: int, p: float, k: int, trials: int, rivals: int = 1, v: float = 1.0) -> Outcome:
    """Decide ``trials`` steps with the real Tally.

    Each sample is red-flagged with probability 1 - v and then discarded before it can vote (the
    paper's get_vote loop). A valid sample votes for the right answer with probability p, and
    otherwise for one of ``rivals`` wrong answers chosen uniformly.
    """
    rng = random.Random(seed)
    wrong = [f"wrong{i}" for i in range(rivals)]
    correct = 0
    votes_per_step: list[int] = []
    samples_per_step: list[int] = []
    for _ in range(trials):
        tally = Tally(k)
        votes = samples = 0
        winner: str | None = None
        while winner is None:
            samples += 1
            if v < 1.0 and rng.random() >= v:
                continue
            votes += 1
            if rng.random() < p:
                winner = tally.add(RIGHT)
            else:
                winner = tally.add(wrong[0] if rivals == 1 else rng.choice(wrong))
        correct += winner == RIGHT
        votes_per_step.append(votes)
        samples_per_step.append(samples)
    return Outcome(correct, votes_per_step, samples_per_step)


def proportion_tolerance(expected: float, n: int) -> float:
    # The SE is taken at the formula's value (the null hypothesis), not the observed share, which
    # would give a zero SE whenever no wrong decision happens to be seen.
    return Z * math.sqrt(expected * (1 - expected) / n) + COUNT_SLACK / n


def mean_and_tolerance(values: list[int]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    variance = sum((x - mean) ** 2 for x in values) / (n - 1)
    return mean, Z * math.sqrt(variance / n) + FLOAT_SLACK


def _seed(*parts: float) -> int:
    # A fixed, readable seed per cell, so cells are independent and reruns identical.
    return int("".join(f"{round(x * 100):04d}" for x in parts))


GRID = [(p, k) for p in (0.6, 0.7, 0.8, 0.9, 0.99) for k in (1, 2, 3, 5)]


@pytest.mark.parametrize(("p", "k"), GRID)
def test_one_rival_matches_eq9_and_eq16(p: float, k: int) -> None:
    outcome = simulate(_seed(p, k), p, k, TRIALS)

    expected_p = p_step(p, k)
    observed_p = outcome.correct / TRIALS
    assert abs(observed_p - expected_p) <= proportion_tolerance(expected_p, TRIALS)

    mean_votes, tolerance = mean_and_tolerance(outcome.votes)
    assert abs(mean_votes - expected_votes_per_step(p, k)) <= tolerance
    # Opening a lead of k takes at least k votes, and with one rival every step has the same
    # parity as k (each vote moves the lead by exactly one).
    assert min(outcome.votes) == k
    assert all((n - k) % 2 == 0 for n in outcome.votes)


@pytest.mark.parametrize(("p", "k"), [(0.6, 2), (0.6, 3), (0.8, 2), (0.8, 3)])
def test_several_rivals_do_at_least_as_well_as_eq9(p: float, k: int) -> None:
    # Eq 9 is the worst case: spreading the errors over 3 wrong answers slows every rival down.
    trials = TRIALS // 2
    outcome = simulate(_seed(p, k, 3), p, k, trials, rivals=3)
    worst_case = p_step(p, k)
    tolerance = proportion_tolerance(worst_case, trials)
    observed = outcome.correct / trials
    assert observed >= worst_case - tolerance
    # And for these cells the gain is large enough to see, so the bound above is not vacuous:
    # at p = 0.6, k = 2 one rival gives 9/13 = 0.692 but three rivals about 0.86.
    assert observed > worst_case + tolerance


@pytest.mark.parametrize(("p", "k", "v"), [(0.8, 3, 0.5), (0.9, 3, 0.8), (0.7, 2, 0.25)])
def test_red_flags_scale_samples_by_one_over_v(p: float, k: int, v: float) -> None:
    outcome = simulate(_seed(p, k, v), p, k, TRIALS // 2, v=v)

    mean_samples, tolerance = mean_and_tolerance(outcome.samples)
    assert abs(mean_samples - expected_samples_per_step(p, k, v)) <= tolerance
    # Red flags cost samples but never change the vote itself (k_min depends on p, not on v).
    mean_votes, vote_tolerance = mean_and_tolerance(outcome.votes)
    assert abs(mean_votes - expected_votes_per_step(p, k)) <= vote_tolerance
    expected_p = p_step(p, k)
    observed_p = outcome.correct / (TRIALS // 2)
    assert abs(observed_p - expected_p) <= proportion_tolerance(expected_p, TRIALS // 2)
