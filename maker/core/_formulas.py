"""The paper's formulas (Meyerson et al. 2025, arXiv:2511.09030, section 3) as pure functions.

Notation follows the paper: ``p`` is the per-step success rate among valid (not red-flagged)
responses, ``k`` the vote margin, ``steps`` (s) the number of steps, ``m`` the steps decided per
model call (1 in MAKER), ``target`` (t) the wanted probability that the whole run succeeds,
``v`` the share of samples that are not red-flagged, and ``cost_per_call`` (c) the cost of one
sample.

Every function validates its inputs and raises :class:`maker.core._errors.ConfigError` naming the
offending field.
"""

from __future__ import annotations

import math

from ._errors import ConfigError

# Within this distance of an integer, k_min's real value is taken to be that integer: the float
# evaluation of Eq 14 can land a hair above an exact integer, and ceil would then add a whole vote
# of margin (and cost) that the formula does not ask for.
_INTEGER_SLACK = 1e-9


def _check_p(p: float) -> None:
    # Written as negations so that NaN fails every check.
    if not p > 0.5:
        raise ConfigError("p", f"must be greater than 0.5 for voting to converge, got {p}")
    if not p <= 1.0:
        raise ConfigError("p", f"must be at most 1 (it is a probability), got {p}")


def _check_positive_int(field: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(field, f"must be an integer, got {value!r}")
    if value < 1:
        raise ConfigError(field, f"must be at least 1, got {value}")


def _check_v(v: float) -> None:
    if not 0.0 < v <= 1.0:
        raise ConfigError(
            "v", f"must be in (0, 1] (the share of samples that are not red-flagged), got {v}"
        )


def _check_cost(field: str, value: float) -> None:
    if not 0.0 <= value < math.inf:
        raise ConfigError(field, f"must be finite and not negative, got {value}")


def _ratio(p: float) -> float:
    """(1 - p) / p, the odds of a wrong vote; 0 when p == 1."""
    return (1.0 - p) / p


def p_step(p: float, k: int) -> float:
    """Eq 9/12: the probability that a step's first-to-ahead-by-k vote decides correctly.

    ``1 / (1 + ((1 - p) / p) ** k)``, for ``0.5 < p <= 1``. This is exact for one rival
    candidate (a gambler's-ruin walk between -k and +k) and the worst case with several.

    >>> p_step(0.75, 1)
    0.75
    >>> round(p_step(0.75, 2), 12)  # (1/3)**2 = 1/9, so 1 / (1 + 1/9) = 9/10
    0.9
    >>> p_step(1.0, 3)
    1.0
    """
    _check_p(p)
    _check_positive_int("k", k)
    return 1.0 / (1.0 + _ratio(p) ** k)


def p_run(p: float, k: int, steps: int, m: int = 1) -> float:
    """Eq 13: the probability that a run of ``steps`` steps decides every step correctly.

    ``(1 + ((1 - p) / p) ** k) ** (-steps / m)``, computed as ``exp(-steps/m * log1p(r**k))``
    so that it stays accurate for millions of steps, where ``r**k`` is tiny.

    >>> round(p_run(0.75, 2, 2), 12)  # 0.9 ** 2
    0.81
    >>> round(p_run(1 - 0.0022, 3, 2**20 - 1), 4)  # the paper's gpt-4.1-mini run at k = 3
    0.9888
    """
    _check_p(p)
    _check_positive_int("k", k)
    _check_positive_int("steps", steps)
    _check_positive_int("m", m)
    return math.exp(-(steps / m) * math.log1p(_ratio(p) ** k))


def k_min(p: float, target: float, steps: int, m: int = 1) -> int:
    """Eq 14: the smallest vote margin k whose run succeeds with probability at least ``target``.

    ``ceil(ln(t ** (-m/s) - 1) / ln((1 - p) / p))``, never less than 1; 1 when ``p == 1``.
    ``t ** (-m/s) - 1`` is computed as ``expm1(-(m/s) * ln t)``, which keeps its precision when
    s is huge and the power is a hair above 1.

    >>> k_min(1 - 0.0022, 0.95, 2**20 - 1)  # the paper's gpt-4.1-mini: k = 3
    3
    >>> k_min(1 - 0.3571, 0.95, 2**20 - 1)  # gpt-4.1-nano
    29
    >>> k_min(0.75, 0.81, 2)  # p_run(0.75, 2, 2) is exactly 0.81
    2
    """
    _check_p(p)
    if not 0.0 < target < 1.0:
        raise ConfigError("target", f"must be strictly between 0 and 1, got {target}")
    _check_positive_int("steps", steps)
    _check_positive_int("m", m)
    if p == 1.0:
        return 1
    slack = math.expm1(-(m / steps) * math.log(target))
    x = math.log(slack) / math.log(_ratio(p))
    nearest = round(x)
    k = nearest if abs(x - nearest) <= _INTEGER_SLACK else math.ceil(x)
    return max(1, k)


def expected_votes_per_step(p: float, k: int) -> float:
    """Eq 16: the expected number of votes before a step is decided, with one rival.

    ``k * (2 * p_step(p, k) - 1) / (2p - 1)``, and ``k`` when ``p == 1``. With one rival the
    lead of the correct answer is a walk that moves +1 with probability p and -1 otherwise, so
    this is the exact expected duration of gambler's ruin between -k and +k (not only the
    paper's approximation ``k / (2p - 1)``).

    >>> round(expected_votes_per_step(0.75, 2), 12)  # 2 * (2 * 0.9 - 1) / 0.5
    3.2
    >>> expected_votes_per_step(1.0, 3)
    3.0
    """
    _check_p(p)
    _check_positive_int("k", k)
    if p == 1.0:
        return float(k)
    # 2 * p_step - 1 == (1 - r**k) / (1 + r**k); expm1 keeps 1 - r**k accurate as p nears 0.5.
    rk = _ratio(p) ** k
    lead = -math.expm1(k * math.log(_ratio(p))) / (1.0 + rk)
    return k * lead / (2.0 * p - 1.0)


def expected_samples_per_step(p: float, k: int, v: float = 1.0) -> float:
    """Eq 16 with Eq 19's red-flag factor: expected samples drawn per step.

    A red-flagged sample is discarded and drawn again, so each vote takes ``1 / v`` samples on
    average, where ``v`` is the share of samples that are not red-flagged.

    >>> round(expected_samples_per_step(0.75, 2, v=0.8), 12)  # 3.2 / 0.8
    4.0
    """
    _check_v(v)
    return expected_votes_per_step(p, k) / v


def expected_cost(
    cost_per_call: float, steps: int, p: float, k: int, v: float = 1.0, m: int = 1
) -> float:
    """Eq 17-19: the paper's approximate expected cost of a run.

    ``c * s * k / (v * p ** (m - 1) * (2p - 1))``. This is an approximation: it takes
    ``k / (2p - 1)`` votes per step, an upper bound of the exact
    :func:`expected_votes_per_step` that is close when ``p_step`` is near 1. See
    :func:`expected_cost_exact` for the exact value with m = 1.

    >>> expected_cost(0.001, 1000, 0.75, 2)  # 0.001 * 1000 * 2 / 0.5
    4.0
    >>> expected_cost(0.001, 1000, 0.75, 2, v=0.5)
    8.0
    """
    _check_cost("cost_per_call", cost_per_call)
    _check_positive_int("steps", steps)
    _check_p(p)
    _check_positive_int("k", k)
    _check_v(v)
    _check_positive_int("m", m)
    return cost_per_call * steps * k / (v * p ** (m - 1) * (2.0 * p - 1.0))


def expected_cost_exact(
    cost_per_call: float, steps: int, p: float, k: int, v: float = 1.0
) -> float:
    """The exact expected cost of a run with one step per call (m = 1) and one rival.

    ``c * s * expected_samples_per_step(p, k, v)``; compare :func:`expected_cost` (Eq 17-19),
    which the paper approximates from above.

    >>> round(expected_cost_exact(0.001, 1000, 0.75, 2), 12)  # 0.001 * 1000 * 3.2
    3.2
    """
    _check_cost("cost_per_call", cost_per_call)
    _check_positive_int("steps", steps)
    return cost_per_call * steps * expected_samples_per_step(p, k, v)


def sample_cost(c_in: float, n_in: int, c_out: float, n_out: int) -> float:
    """Eq 20: the cost of one sample, ``c_in * n_in + c_out * n_out``.

    ``c_in`` and ``c_out`` are prices per input and output token; ``n_in`` and ``n_out`` are
    token counts.

    >>> sample_cost(2e-6, 1000, 8e-6, 500)  # 0.002 + 0.004
    0.006
    """
    _check_cost("c_in", c_in)
    _check_cost("c_out", c_out)
    if n_in < 0:
        raise ConfigError("n_in", f"must not be negative, got {n_in}")
    if n_out < 0:
        raise ConfigError("n_out", f"must not be negative, got {n_out}")
    return c_in * n_in + c_out * n_out


def undecided_share(p: float, k: int, rounds: int) -> list[float]:
    """The share of steps still undecided after each of ``rounds`` valid votes, with one rival.

    Entry ``r`` (for r = 0, 1, ... ``rounds``) is the probability that a first-to-ahead-by-k
    vote is still open after r votes: the survival function of the gambler's-ruin walk of the
    correct answer's lead, which moves +1 with probability p and -1 otherwise and stops at +k
    or -k (the walk behind Eq 9 and Eq 16). Its differences are the distribution of the votes a
    step needs; its sum is their mean, Eq 16's ``expected_votes_per_step`` (as ``rounds`` grows).
    Several rivals split the wrong votes, so this is the paper's worst case, as Eq 9 is.

    Nothing decides before k votes; after that the share falls geometrically, the shape of the
    paper's Fig. 8.

    >>> undecided_share(1.0, 3, 4)  # every vote right: all decide at the third
    [1.0, 1.0, 1.0, 0.0, 0.0]
    >>> [round(x, 6) for x in undecided_share(0.75, 1, 2)]  # k = 1: the first vote decides
    [1.0, 0.0, 0.0]
    >>> [round(x, 6) for x in undecided_share(0.75, 2, 4)]  # 1 - p^2 - q^2 = 0.375 after 2
    [1.0, 1.0, 0.375, 0.375, 0.140625]
    """
    _check_p(p)
    _check_positive_int("k", k)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ConfigError("rounds", f"must be an integer >= 0, got {rounds!r}")
    q = 1.0 - p
    # lead[i] is the probability of being open with a lead of i - (k - 1), for leads -(k-1)..k-1.
    lead = [0.0] * (2 * k - 1)
    lead[k - 1] = 1.0
    # The open share is 1 minus what has stopped, not the sum of what is open: it is then exactly
    # 1 before the k-th vote and never grows, whatever the rounding of p + (1 - p).
    stopped = 0.0
    out = [1.0]
    for _ in range(rounds):
        moved = [0.0] * (2 * k - 1)
        for i, mass in enumerate(lead):
            if mass:
                if i + 1 < len(moved):
                    moved[i + 1] += mass * p
                else:
                    stopped += mass * p
                if i >= 1:
                    moved[i - 1] += mass * q
                else:
                    stopped += mass * q
        lead = moved
        out.append(max(0.0, 1.0 - stopped))
    return out
