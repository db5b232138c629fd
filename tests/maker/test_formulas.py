"""The paper's formulas: hand-computed values, the paper's own k_min table, exact gambler's-ruin
cross-checks, monotonicity properties and domain errors."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maker.core._errors import ConfigError
from maker.core._formulas import (
    expected_cost,
    expected_cost_exact,
    expected_samples_per_step,
    expected_votes_per_step,
    k_min,
    p_run,
    p_step,
    sample_cost,
    undecided_share,
)

MILLION_STEPS = 2**20 - 1

# p is kept away from 0.5 (where ln((1-p)/p) -> 0 and k_min explodes) and from 1 (where r**k
# underflows and every probability rounds to 1.0); the edges have their own tests.
probabilities = st.floats(min_value=0.51, max_value=0.999999)
margins = st.integers(min_value=1, max_value=40)
step_counts = st.integers(min_value=1, max_value=10**7)
# Targets this close to 1 still leave 1 - t far above float resolution, so p_run comparisons near
# the target are meaningful.
targets = st.floats(min_value=1e-6, max_value=1 - 1e-6)


# -- exact reference: gambler's ruin solved as a linear system over Fractions -----------------


def _solve_walk(
    p: Fraction, k: int, at_top: Fraction, at_bottom: Fraction, per_move: Fraction
) -> Fraction:
    """Value at lead 0 of x_i = per_move + p*x_{i+1} + q*x_{i-1} for -k < i < k, fixed at ±k.

    With (top 1, bottom 0, per_move 0) it is the probability of reaching +k first (Eq 9); with
    (0, 0, 1) it is the expected number of moves (Eq 16). Solved by the Thomas algorithm, with no
    closed form involved, so it checks the formulas independently.
    """
    q = 1 - p
    n = 2 * k - 1  # interior states -k+1 .. k-1
    # Row i: -q * x_{i-1} + 1 * x_i - p * x_{i+1} = per_move (boundary terms moved to the right).
    c_prime: list[Fraction] = []
    d_prime: list[Fraction] = []
    for i in range(n):
        rhs = per_move
        if i == 0:
            rhs += q * at_bottom
        if i == n - 1:
            rhs += p * at_top
        lower = Fraction(0) if i == 0 else -q
        denom = 1 - lower * (c_prime[-1] if c_prime else 0)
        c_prime.append((-p if i < n - 1 else Fraction(0)) / denom)
        d_prime.append((rhs - lower * (d_prime[-1] if d_prime else 0)) / denom)
    x = [Fraction(0)] * n
    x[-1] = d_prime[-1]
    for i in range(n - 2, -1, -1):
        x[i] = d_prime[i] - c_prime[i] * x[i + 1]
    return x[k - 1]


@pytest.mark.parametrize("p", [Fraction(3, 5), Fraction(2, 3), Fraction(3, 4), Fraction(9, 10)])
@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_formulas_match_exact_gamblers_ruin(p: Fraction, k: int) -> None:
    win = _solve_walk(p, k, Fraction(1), Fraction(0), Fraction(0))
    duration = _solve_walk(p, k, Fraction(0), Fraction(0), Fraction(1))
    assert p_step(float(p), k) == pytest.approx(float(win), rel=1e-12)
    assert expected_votes_per_step(float(p), k) == pytest.approx(float(duration), rel=1e-12)


# -- hand-computed values ------------------------------------------------------------------


def test_p_step_by_hand() -> None:
    # p = 3/4: r = 1/3. k=1: 1/(1+1/3) = 3/4. k=2: 1/(1+1/9) = 9/10. k=3: 1/(1+1/27) = 27/28.
    assert p_step(0.75, 1) == pytest.approx(0.75, rel=1e-15)
    assert p_step(0.75, 2) == pytest.approx(0.9, rel=1e-15)
    assert p_step(0.75, 3) == pytest.approx(27 / 28, rel=1e-15)
    # p = 3/5: r = 2/3, r**2 = 4/9, so 1/(1+4/9) = 9/13.
    assert p_step(0.6, 2) == pytest.approx(9 / 13, rel=1e-15)
    assert p_step(1.0, 1) == 1.0
    assert p_step(1.0, 50) == 1.0


def test_p_run_by_hand() -> None:
    # p_step(0.75, 2) = 0.9, so two steps: 0.9**2 = 0.81.
    assert p_run(0.75, 2, 2) == pytest.approx(0.81, rel=1e-14)
    # Four steps two to a call: exponent -s/m = -2, the same 0.81.
    assert p_run(0.75, 2, 4, m=2) == pytest.approx(0.81, rel=1e-14)
    # One step is p_step itself: 27/28.
    assert p_run(0.75, 3, 1) == pytest.approx(27 / 28, rel=1e-14)
    assert p_run(1.0, 1, MILLION_STEPS) == 1.0


def test_p_run_is_accurate_for_a_million_steps() -> None:
    # p = 0.9978 (the paper's gpt-4.1-mini), k = 3: r = 0.0022/0.9978 = 2.20485e-3,
    # r**3 = 1.07183e-8; s * r**3 = 1048575 * 1.07183e-8 = 0.0112389; e**-0.0112389 = 0.988824.
    assert p_run(1 - 0.0022, 3, MILLION_STEPS) == pytest.approx(0.988824, abs=1e-6)
    # Against exact rational arithmetic: ln P = -s * ln(1 + r**k), evaluated on Fractions until
    # the final log.
    p = Fraction(9978, 10000)
    rk = ((1 - p) / p) ** 3
    exact = math.exp(-MILLION_STEPS * math.log1p(float(rk)))
    assert p_run(float(p), 3, MILLION_STEPS) == pytest.approx(exact, rel=1e-12)
    # Where the naive power fails: p = 1 - 1e-5, k = 3, r**3 ~ 1e-15 and s = 1e14. In floats
    # 1 + 1e-15 keeps only about one significant digit of r**3, but log1p keeps them all:
    # P = exp(-1e14 * r**3) ~ e**-0.1, with r**3 taken exactly from the float p.
    p_float = 1 - 1e-5
    p_exact = Fraction(p_float)
    r3 = float(((1 - p_exact) / p_exact) ** 3)
    expected = math.exp(-(10**14) * r3)
    naive = (1 + r3) ** -(10**14)
    assert abs(naive - expected) > 1e-3  # the hazard is real
    assert p_run(p_float, 3, 10**14) == pytest.approx(expected, rel=1e-12)
    assert p_run(0.6, 1, MILLION_STEPS) == 0.0  # 0.6**1048575 underflows, honestly


def test_k_min_by_hand() -> None:
    # p = 0.75, t = 0.9, s = 1: t**-1 - 1 = 1/9 and ln(1/9)/ln(1/3) = 2 exactly.
    assert k_min(0.75, 0.9, 1) == 2
    # p = 0.75, t = 0.81, s = 2: 0.81**(-1/2) - 1 = 1/0.9 - 1 = 1/9, again exactly 2.
    assert k_min(0.75, 0.81, 2) == 2
    # Raising the target a little forces one more vote of margin.
    assert k_min(0.75, 0.9001, 1) == 3
    # t**-1 - 1 = 1 when t = 0.5: ln 1 = 0, so k = 0, raised to the floor of 1.
    assert k_min(0.9, 0.5, 1) == 1
    # A lax target makes the real value negative; still 1.
    assert k_min(0.99, 0.01, 1) == 1
    assert k_min(1.0, 0.999999, MILLION_STEPS) == 1


def test_k_min_does_not_round_a_float_hair_up() -> None:
    # p = 2/3: r = 1/2, r**2 = 1/4, p_step(2/3, 2) = 0.8 exactly, so t = 0.8 needs k = 2. In
    # floats ln(0.25)/ln(0.5) evaluates to 2.0000000000000004 here, and a bare ceil gives 3.
    x = math.log(math.expm1(-math.log(0.8))) / math.log((1 - 2 / 3) / (2 / 3))
    assert x > 2  # the hazard is real for these inputs
    assert k_min(2 / 3, 0.8, 1) == 2


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (0.3571, 29),  # gpt-4.1-nano: real value 28.63
        (0.0022, 3),  # gpt-4.1-mini at temperature 0.1: 2.75
        (0.0018, 3),  # o3-mini: 2.66
        (0.0358, 6),  # gpt-oss-20B: 5.11
        (0.1839, 12),  # haiku-4.5: 11.30
        (0.2342, 15),  # qwen-3: 14.21
    ],
)
def test_k_min_matches_the_papers_table(error: float, expected: int) -> None:
    assert k_min(1 - error, 0.95, MILLION_STEPS) == expected


def test_expected_votes_by_hand() -> None:
    # k = 1: one vote always decides.
    assert expected_votes_per_step(0.75, 1) == pytest.approx(1.0, rel=1e-15)
    # p = 0.75, k = 2: 2 * (2*0.9 - 1) / 0.5 = 3.2. Check by the walk: two votes agree with
    # probability 0.75**2 + 0.25**2 = 0.625, else back to a tie, so 2 / 0.625 = 3.2.
    assert expected_votes_per_step(0.75, 2) == pytest.approx(3.2, rel=1e-14)
    # p = 0.6, k = 2: P = 9/13, 2 * (5/13) / 0.2 = 50/13; by the walk 2 / (0.36 + 0.16) = 50/13.
    assert expected_votes_per_step(0.6, 2) == pytest.approx(50 / 13, rel=1e-14)
    # p = 0.75, k = 3: P = 27/28, 3 * (26/28) / 0.5 = 39/7.
    assert expected_votes_per_step(0.75, 3) == pytest.approx(39 / 7, rel=1e-14)
    assert expected_votes_per_step(1.0, 3) == 3.0
    # Near p = 0.5 the walk is nearly fair and the duration tends to k**2 = 25.
    assert expected_votes_per_step(0.5 + 1e-9, 5) == pytest.approx(25.0, rel=1e-6)


def test_expected_samples_by_hand() -> None:
    # 3.2 votes, each needing 1/0.8 samples when 20% are red-flagged: 4.0.
    assert expected_samples_per_step(0.75, 2, 0.8) == pytest.approx(4.0, rel=1e-14)
    assert expected_samples_per_step(0.75, 2) == pytest.approx(3.2, rel=1e-14)


def test_expected_cost_by_hand() -> None:
    # c * s * k / (v * p**(m-1) * (2p-1)) = 0.001 * 1000 * 2 / (1 * 1 * 0.5) = 4.0.
    assert expected_cost(0.001, 1000, 0.75, 2) == pytest.approx(4.0, rel=1e-14)
    # v = 0.5 doubles it: 8.0.
    assert expected_cost(0.001, 1000, 0.75, 2, v=0.5) == pytest.approx(8.0, rel=1e-14)
    # m = 3 divides by p**2 = 0.5625: 4 / 0.5625 = 64/9.
    assert expected_cost(0.001, 1000, 0.75, 2, m=3) == pytest.approx(64 / 9, rel=1e-14)
    # Exact: 0.001 * 1000 * 3.2 = 3.2; with v = 0.8, 3.2 / 0.8 = 4.0.
    assert expected_cost_exact(0.001, 1000, 0.75, 2) == pytest.approx(3.2, rel=1e-14)
    assert expected_cost_exact(0.001, 1000, 0.75, 2, v=0.8) == pytest.approx(4.0, rel=1e-14)


def test_paper_run_cost_is_theta_s_log_s() -> None:
    # gpt-4.1-mini: p = 0.9978, k = 3, 2p - 1 = 0.9956; 1048575 * 3 / 0.9956 = 3,159,627 samples
    # at c = 1: the "about 3.2 million samples" of PAPER.md.
    assert expected_cost(1.0, MILLION_STEPS, 1 - 0.0022, 3) == pytest.approx(3_159_627, rel=1e-6)


def test_sample_cost_by_hand() -> None:
    # 1000 input tokens at 2e-6 = 0.002, 500 output tokens at 8e-6 = 0.004: 0.006.
    assert sample_cost(2e-6, 1000, 8e-6, 500) == pytest.approx(0.006, rel=1e-14)
    assert sample_cost(0.0, 0, 0.0, 0) == 0.0


# -- properties ------------------------------------------------------------------------------


@given(p=probabilities, target=targets, s1=step_counts, s2=step_counts)
def test_k_min_is_non_decreasing_in_steps(p: float, target: float, s1: int, s2: int) -> None:
    lo, hi = sorted((s1, s2))
    assert k_min(p, target, lo) <= k_min(p, target, hi)


@given(p=probabilities, t1=targets, t2=targets, steps=step_counts)
def test_k_min_is_non_decreasing_in_target(p: float, t1: float, t2: float, steps: int) -> None:
    lo, hi = sorted((t1, t2))
    assert k_min(p, lo, steps) <= k_min(p, hi, steps)


@given(p1=probabilities, p2=probabilities, target=targets, steps=step_counts)
def test_k_min_is_non_increasing_in_p(p1: float, p2: float, target: float, steps: int) -> None:
    lo, hi = sorted((p1, p2))
    assert k_min(lo, target, steps) >= k_min(hi, target, steps)


@given(p=probabilities, target=targets, steps=step_counts, m=st.integers(1, 8))
def test_k_min_is_the_least_margin_reaching_the_target(
    p: float, target: float, steps: int, m: int
) -> None:
    k = k_min(p, target, steps, m)
    # k_min snaps real values within 1e-9 of an integer down to it, which can leave p_run a
    # relative ~|ln t|*|ln r|*1e-9 <= 2e-7 short of the target here; 1e-6 covers that.
    assert p_run(p, k, steps, m) >= target * (1 - 1e-6)
    if k > 1:
        assert p_run(p, k - 1, steps, m) < target


@given(p=probabilities, k=margins)
def test_p_step_increases_with_k(p: float, k: int) -> None:
    lower, higher = p_step(p, k), p_step(p, k + 1)
    assert higher >= lower
    # Strictly, unless r**k is below float resolution: the step is r**k * (1 - r) / ((1 + r**k)
    # * (1 + r**(k+1))), and 1 - r >= 0.04 here, so 1 - P >= 1e-12 leaves a gap of ~4e-14.
    if lower < 1.0 - 1e-12:
        assert higher > lower


@given(p1=probabilities, p2=probabilities, k=margins)
def test_p_step_increases_with_p(p1: float, p2: float, k: int) -> None:
    lo, hi = sorted((p1, p2))
    assert p_step(lo, k) <= p_step(hi, k)
    # Strictly when the gap can show in floats: dP/dp = k * P * (1 - P) / (p * (1 - p)) >=
    # 4k * P * (1 - P), so with 1 - P >= 1e-9 and a gap of 1e-6 in p, P moves by at least ~2e-15,
    # well above the float spacing near 1 (1.1e-16). Adjacent floats of p may round to one P.
    if hi - lo > 1e-6 and p_step(hi, k) < 1.0 - 1e-9:
        assert p_step(lo, k) < p_step(hi, k)


@given(p=probabilities, k=margins)
def test_voting_never_hurts(p: float, k: int) -> None:
    # k = 1 is a single vote, so P = p; any larger margin can only help.
    assert p_step(p, 1) == pytest.approx(p, rel=1e-12)
    assert p_step(p, k) >= p * (1 - 1e-12)


@given(p=probabilities, k=margins)
def test_expected_votes_bounds(p: float, k: int) -> None:
    votes = expected_votes_per_step(p, k)
    # At least k votes are needed to open a lead of k; the paper's k/(2p-1) is an upper bound
    # (it drops the factor 2*p_step - 1 <= 1).
    assert votes >= k * (1 - 1e-12)
    assert votes <= k / (2 * p - 1) * (1 + 1e-12)
    assert expected_cost_exact(1.0, 1, p, k) <= expected_cost(1.0, 1, p, k) * (1 + 1e-12)


@given(p=probabilities, k=margins, v=st.floats(min_value=0.01, max_value=1.0))
def test_red_flags_scale_samples_by_one_over_v(p: float, k: int, v: float) -> None:
    assert expected_samples_per_step(p, k, v) == pytest.approx(
        expected_votes_per_step(p, k) / v, rel=1e-12
    )


@given(p=probabilities, k=margins, steps=step_counts, m=st.integers(1, 8))
def test_p_run_is_p_step_to_the_calls(p: float, k: int, steps: int, m: int) -> None:
    expected = p_step(p, k) ** (steps / m)
    # The log1p route and the naive power agree to the naive power's own accuracy, which loses
    # about steps * 1e-16 relative.
    assert p_run(p, k, steps, m) == pytest.approx(expected, rel=1e-15 * steps + 1e-12, abs=1e-300)


# -- domain errors ---------------------------------------------------------------------------

Call = Callable[[], object]


@pytest.mark.parametrize(
    ("call", "field", "fragment"),
    [
        (lambda: p_step(0.4, 3), "p", "greater than 0.5"),
        (lambda: p_step(0.5, 3), "p", "greater than 0.5"),
        (lambda: p_step(1.2, 3), "p", "at most 1"),
        (lambda: p_step(math.nan, 3), "p", "greater than 0.5"),
        (lambda: p_step(0.9, 0), "k", "at least 1"),
        (lambda: p_step(0.9, 2.5), "k", "integer"),  # type: ignore[arg-type]
        (lambda: p_run(0.9, 3, 0), "steps", "at least 1"),
        (lambda: p_run(0.9, 3, 10, m=0), "m", "at least 1"),
        (lambda: p_run(0.3, 3, 10), "p", "greater than 0.5"),
        (lambda: k_min(0.9, 0.0, 10), "target", "between 0 and 1"),
        (lambda: k_min(0.9, 1.0, 10), "target", "between 0 and 1"),
        (lambda: k_min(0.9, -0.5, 10), "target", "between 0 and 1"),
        (lambda: k_min(0.9, 0.95, 0), "steps", "at least 1"),
        (lambda: k_min(0.9, 0.95, 10, m=0), "m", "at least 1"),
        (lambda: k_min(0.5, 0.95, 10), "p", "greater than 0.5"),
        (lambda: expected_votes_per_step(0.2, 3), "p", "greater than 0.5"),
        (lambda: expected_votes_per_step(0.9, -1), "k", "at least 1"),
        (lambda: expected_samples_per_step(0.9, 3, 0.0), "v", "(0, 1]"),
        (lambda: expected_samples_per_step(0.9, 3, 1.5), "v", "(0, 1]"),
        (lambda: expected_cost(1.0, 10, 0.9, 3, v=0.0), "v", "(0, 1]"),
        (lambda: expected_cost(1.0, 10, 0.9, 3, m=0), "m", "at least 1"),
        (lambda: expected_cost(1.0, 0, 0.9, 3), "steps", "at least 1"),
        (lambda: expected_cost(-1.0, 10, 0.9, 3), "cost_per_call", "not negative"),
        (lambda: expected_cost_exact(1.0, 10, 0.45, 3), "p", "greater than 0.5"),
        (lambda: expected_cost_exact(1.0, 10, 0.9, 3, v=2.0), "v", "(0, 1]"),
        (lambda: sample_cost(-1.0, 10, 1.0, 10), "c_in", "not negative"),
        (lambda: sample_cost(1.0, -10, 1.0, 10), "n_in", "negative"),
        (lambda: sample_cost(1.0, 10, 1.0, -1), "n_out", "negative"),
    ],
)
def test_domain_errors_name_the_field(call: Call, field: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=r"got ") as info:
        call()
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_p_error_message_is_the_documented_one() -> None:
    with pytest.raises(ConfigError) as info:
        p_step(0.4, 3)
    assert str(info.value) == "p: must be greater than 0.5 for voting to converge, got 0.4"


# -- the distribution of votes per step (the convergence curve the report predicts) ----------


@given(probabilities, st.integers(min_value=1, max_value=8))
def test_the_undecided_shares_add_up_to_eq_16(p: float, k: int) -> None:
    # E[T] = sum over r >= 0 of P(T > r): the survival function's sum is the mean number of
    # votes, which Eq 16 gives in closed form. Enough rounds that the tail left is negligible.
    rounds = 60 * k * k + 400
    shares = undecided_share(p, k, rounds)
    assert shares[rounds] < 1e-9
    assert math.fsum(shares) == pytest.approx(expected_votes_per_step(p, k), rel=1e-6)
    assert shares[:k] == [1.0] * k
    assert all(a >= b for a, b in itertools.pairwise(shares))


def test_the_undecided_shares_match_a_seeded_walk() -> None:
    import random

    p, k, walks = 0.8, 3, 20_000
    rng = random.Random(17)
    lengths = []
    for _ in range(walks):
        lead = votes = 0
        while abs(lead) < k:
            lead += 1 if rng.random() < p else -1
            votes += 1
        lengths.append(votes)
    shares = undecided_share(p, k, 12)
    for r in (3, 5, 7, 9):
        measured = sum(n > r for n in lengths) / walks
        # A binomial share of 20,000 walks: 4 standard errors at most (sd <= 0.0036).
        assert abs(measured - shares[r]) < 4 * math.sqrt(shares[r] * (1 - shares[r]) / walks)


@pytest.mark.parametrize("rounds", [-1, 1.5, True])
def test_undecided_share_refuses_bad_rounds(rounds: object) -> None:
    with pytest.raises(ConfigError, match="rounds"):
        undecided_share(0.9, 2, rounds)  # type: ignore[arg-type]
