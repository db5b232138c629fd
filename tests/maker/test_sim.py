"""The simulated model, tested for real: its answers are judged by the tasks' own parsers and its
statistics are checked against its configuration by seeded Monte Carlo.

Tolerances of the Monte Carlo checks are 4.5 standard errors of the estimate (binomial for
shares, sd/sqrt(n) for means). Every draw is seeded, so each check is deterministic; a correct
simulator would fail one of them for a fresh seed with probability below 1e-5, while the bugs
they guard against (a rate ignored, p not compensated, a rate swapped for its complement) move
the estimate by many tolerances.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from functools import cache
from types import SimpleNamespace
from typing import Any

import anyio
import msgspec
import pytest

from maker import (
    PRESETS,
    Client,
    ConfigError,
    RedFlag,
    RedFlagRules,
    SampleRequest,
    SimConfig,
    SimResponse,
    SimulatedModel,
    Task,
    p_step,
)
from maker.core._simulator import randbelow
from maker.tasks import Arithmetic, ArithState, Hanoi, HanoiSimulator, HanoiState
from maker.tasks._hanoi_sim import _REASONS

SIM = HanoiSimulator()

Z = 4.5
"""Standard errors of tolerance for every Monte Carlo check."""

RULES = RedFlagRules()
"""The paper's red flags: over 750 output tokens, or cut off at the cap."""

BIG_CAP = 5000
"""A max_tokens no simulated response reaches (overlong tokens are at most 1400)."""


# --- cases: prompts of real tasks, with their oracle answer ------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """One step of a real task: its prompt, the task (whose parser judges) and the oracle."""

    task: Task[Any, Any]
    system: str
    user: str
    oracle: Any


@cache
def hanoi_cases(disks: int) -> tuple[Case, ...]:
    """Every state the oracle reaches from the start, except the final one (no step is asked
    there). Disk counts of both parities give both directions of disk 1."""
    task = Hanoi(disks)
    state: HanoiState = task.initial_state()
    out: list[Case] = []
    while not task.is_done(state):
        answer = task.oracle(state)
        assert answer is not None
        prompt = task.prompt(state)
        out.append(Case(task, prompt.system, prompt.user, answer))
        state = task.apply(state, answer)
    assert len(out) == task.max_steps()
    return tuple(out)


@cache
def arithmetic_cases(steps: int, digits: int, seed: int) -> tuple[Case, ...]:
    """Every state of one seeded arithmetic chain, walked with its oracle."""
    task = Arithmetic(steps=steps, digits=digits, seed=seed)
    state: ArithState = task.initial_state()
    out: list[Case] = []
    while not task.is_done(state):
        answer = task.oracle(state)
        assert answer is not None
        prompt = task.prompt(state)
        out.append(Case(task, prompt.system, prompt.user, answer))
        state = task.apply(state, answer)
    return tuple(out)


HANOI_DISKS = tuple(range(2, 12))
ARITH_CHAINS = ((400, 3, 1), (400, 6, 2), (400, 9, 3), (400, 12, 4))


def random_cases(rng: random.Random, count: int) -> list[Case]:
    """``count`` cases, half Hanoi (random disks and step), half arithmetic (random chain and
    step); states may repeat."""
    out: list[Case] = []
    for i in range(count):
        if i % 2 == 0:
            out.append(rng.choice(hanoi_cases(rng.choice(HANOI_DISKS))))
        else:
            out.append(rng.choice(arithmetic_cases(*rng.choice(ARITH_CHAINS))))
    return out


def distinct_cases() -> list[Case]:
    """About 4000 cases, each of a different state: every reachable Hanoi state of 3..10 disks
    and every state of two arithmetic chains."""
    cases = [c for n in range(3, 11) for c in hanoi_cases(n)]
    cases += arithmetic_cases(1000, 6, 11) + arithmetic_cases(1000, 8, 12)
    unique = list({(c.system, c.user): c for c in cases}.values())
    assert len(unique) > 4000  # a chain may come back to a value and operation
    return unique


def judge(case: Case, text: str) -> Any:
    """What the task's strict parser makes of the text: the answer, or the RedFlag it raised."""
    try:
        return case.task.parse(text)
    except RedFlag as flag:
        return flag


def ask(model: SimulatedModel, case: Case, seed: int, max_tokens: int = BIG_CAP) -> SimResponse:
    return model.respond(case.system, case.user, max_tokens=max_tokens, seed=seed)


def within(observed: float, expected: float, se: float, what: str) -> None:
    assert abs(observed - expected) <= Z * se, (
        f"{what}: observed {observed:.5f}, expected {expected:.5f} +- {Z * se:.5f}"
    )


def check_share(hits: int, n: int, rate: float, what: str) -> None:
    """A share against its rate, with the binomial standard error."""
    assert n > 0, what
    within(hits / n, rate, math.sqrt(rate * (1.0 - rate) / n), what)


def share(flags: Iterable[bool]) -> tuple[int, int]:
    values = list(flags)
    return sum(values), len(values)


# --- the main Monte Carlo: rates, accuracy, the parser's verdicts, tokens -----------------------

MC = SimConfig(
    p=0.9,
    rivals=3,
    hard_fraction=0.0,
    malformed_rate=0.05,
    overlong_rate=0.08,
    overlong_error=0.25,
    output_tokens_mean=500.0,
    output_tokens_sd=80.0,
)
MC_DRAWS = 8000


@dataclasses.dataclass(frozen=True)
class Drawn:
    case: Case
    response: SimResponse
    verdict: Any


@pytest.fixture(scope="module")
def drawn() -> list[Drawn]:
    """8000 responses to random reachable states of both tasks, one fresh seed each. With
    hard_fraction 0 the draws are independent, so every share below is binomial."""
    model = SimulatedModel(MC)
    cases = random_cases(random.Random(20240601), MC_DRAWS)
    out = []
    for seed, case in enumerate(cases):
        response = ask(model, case, seed)
        out.append(Drawn(case, response, judge(case, response.completion.text)))
    return out


def test_draws_cover_both_tasks_and_every_kind(drawn: list[Drawn]) -> None:
    kinds = Counter((d.case.task.name, d.response.kind) for d in drawn)
    for task in ("hanoi", "arithmetic"):
        for kind in ("normal", "malformed", "overlong"):
            assert kinds[task, kind] > 0, (task, kind)
    assert sum(kinds.values()) == MC_DRAWS
    assert all(not d.response.hard for d in drawn)  # hard_fraction = 0


def test_share_of_malformed_is_malformed_rate(drawn: list[Drawn]) -> None:
    # SE = sqrt(0.05 * 0.95 / 8000) = 0.0024: tolerance +-0.011 around 0.05.
    hits, n = share(d.response.kind == "malformed" for d in drawn)
    check_share(hits, n, MC.malformed_rate, "malformed share")


def test_share_of_overlong_is_overlong_rate(drawn: list[Drawn]) -> None:
    # SE = sqrt(0.08 * 0.92 / 8000) = 0.0030: tolerance +-0.014 around 0.08.
    hits, n = share(d.response.kind == "overlong" for d in drawn)
    check_share(hits, n, MC.overlong_rate, "overlong share")


def test_accuracy_of_valid_responses_is_p(drawn: list[Drawn]) -> None:
    # Valid: neither malformed nor overlong, about 6960 draws. Judged by the parser, not by the
    # simulator's own label. SE = sqrt(0.9 * 0.1 / 6960) = 0.0036: tolerance +-0.016.
    hits, n = share(d.verdict == d.case.oracle for d in drawn if d.response.kind == "normal")
    check_share(hits, n, MC.p, "accuracy of valid responses")
    for task in ("hanoi", "arithmetic"):  # each task alone, about 3480 draws: +-0.023
        hits, n = share(
            d.verdict == d.case.oracle
            for d in drawn
            if d.response.kind == "normal" and d.case.task.name == task
        )
        check_share(hits, n, MC.p, f"accuracy of valid {task} responses")


def test_accuracy_of_overlong_responses_is_one_minus_overlong_error(drawn: list[Drawn]) -> None:
    # About 640 overlong draws: SE = sqrt(0.75 * 0.25 / 640) = 0.017, tolerance +-0.077 around
    # 0.75; p (0.9) or overlong_error (0.25) in its place is 2 to 7 tolerances away.
    hits, n = share(d.verdict == d.case.oracle for d in drawn if d.response.kind == "overlong")
    check_share(hits, n, 1.0 - MC.overlong_error, "accuracy of overlong responses")


def test_every_response_is_judged_as_labelled_by_the_real_parser(drawn: list[Drawn]) -> None:
    wrong = 0
    for d in drawn:
        r, verdict = d.response, d.verdict
        completion = r.completion
        assert completion.finish_reason == "stop"  # nothing reaches BIG_CAP
        assert completion.model == "sim"
        assert completion.input_tokens >= (len(d.case.system) + len(d.case.user)) // 5
        if r.kind == "malformed":
            assert r.correct is None
            assert isinstance(verdict, RedFlag), completion.text
            assert verdict.reason == "malformed"
            continue
        assert r.kind in ("normal", "overlong")
        assert not isinstance(verdict, RedFlag), (completion.text, verdict)
        if r.correct:
            assert verdict == d.case.oracle, completion.text
        else:
            assert r.correct is False
            assert verdict != d.case.oracle, completion.text
            wrong += 1
    assert wrong > 500


def test_red_flag_rules_flag_exactly_the_overlong(drawn: list[Drawn]) -> None:
    for d in drawn:
        flag = RULES.check(d.response.completion)
        if d.response.kind == "overlong":
            assert flag is not None
            assert flag.reason == "too_long"
            assert 750 < d.response.completion.output_tokens <= 1400
        else:
            assert flag is None, d.response


def test_output_tokens_of_normal_responses(drawn: list[Drawn]) -> None:
    tokens = [d.response.completion.output_tokens for d in drawn if d.response.kind != "overlong"]
    assert all(16 <= t <= 700 for t in tokens)
    n = len(tokens)
    mean = sum(tokens) / n
    sd = math.sqrt(sum((t - mean) ** 2 for t in tokens) / (n - 1))
    # About 7360 draws: SE = 80 / sqrt(7360) = 0.93, tolerance +-4.2 tokens. Rounding down to an
    # int lowers the mean by 0.5 and the clip at 700 (2.5 sd) by 0.2: both well inside it.
    within(mean, MC.output_tokens_mean, MC.output_tokens_sd / math.sqrt(n), "mean output tokens")
    # The sd of a normal sample has SE sd / sqrt(2n) = 0.66: tolerance +-3.0 tokens.
    within(sd, MC.output_tokens_sd, MC.output_tokens_sd / math.sqrt(2 * n), "sd of output tokens")


# --- hard states: p compensated, errors correlated ---------------------------------------------

HARD = SimConfig(
    p=0.9, rivals=3, hard_fraction=0.2, hard_p=0.6, malformed_rate=0.0, overlong_rate=0.0
)


def test_p_normal_compensates_for_hard_states() -> None:
    assert HARD.p_hard == 0.6
    assert HARD.p_normal == pytest.approx((0.9 - 0.2 * 0.6) / 0.8)
    assert (1 - HARD.hard_fraction) * HARD.p_normal + HARD.hard_fraction * HARD.p_hard == (
        pytest.approx(HARD.p)
    )
    assert SimConfig(p=0.5, hard_p=0.9).p_hard == 0.5  # a hard state is never easier


@pytest.fixture(scope="module")
def hard_drawn() -> list[Drawn]:
    """One response per distinct state (about 4000), so that hardness, drawn per state, is
    independent from draw to draw and each draw is correct with probability p overall."""
    model = SimulatedModel(HARD)
    out = []
    for seed, case in enumerate(distinct_cases()):
        response = ask(model, case, 1000 + seed)
        out.append(Drawn(case, response, judge(case, response.completion.text)))
    return out


def test_accuracy_averaged_over_states_is_p(hard_drawn: list[Drawn]) -> None:
    # n ~ 4000: SE = sqrt(0.9 * 0.1 / 4000) = 0.0047, tolerance +-0.021. Without compensation the
    # average would be 0.8 * 0.9 + 0.2 * 0.6 = 0.84, 3 tolerances off.
    hits, n = share(d.verdict == d.case.oracle for d in hard_drawn)
    check_share(hits, n, HARD.p, "accuracy averaged over states")
    assert all(d.response.correct == (d.verdict == d.case.oracle) for d in hard_drawn)


def test_share_of_hard_states_and_their_accuracy(hard_drawn: list[Drawn]) -> None:
    # Hard share: SE = sqrt(0.2 * 0.8 / 4000) = 0.0063, tolerance +-0.028.
    hits, n = share(d.response.hard for d in hard_drawn)
    check_share(hits, n, HARD.hard_fraction, "share of hard states")
    # About 800 hard draws: SE = sqrt(0.6 * 0.4 / 800) = 0.017, tolerance +-0.078 around 0.6.
    hits, n = share(d.verdict == d.case.oracle for d in hard_drawn if d.response.hard)
    check_share(hits, n, HARD.p_hard, "accuracy of hard states")
    # About 3200 normal draws: SE = sqrt(0.975 * 0.025 / 3200) = 0.0028, tolerance +-0.012.
    hits, n = share(d.verdict == d.case.oracle for d in hard_drawn if not d.response.hard)
    check_share(hits, n, HARD.p_normal, "accuracy of normal states")


CORRELATED = SimConfig(
    p=0.3, rivals=3, hard_fraction=0.3, hard_p=0.1, malformed_rate=0.0, overlong_rate=0.0
)
"""Errors common enough to see where they go: p_normal = (0.3 - 0.03) / 0.7 = 0.386."""


def test_hard_states_err_on_one_rival_normal_states_on_up_to_rivals() -> None:
    model = SimulatedModel(CORRELATED)
    rng = random.Random(77)
    cases = rng.sample(distinct_cases(), 60)
    wrong_per_state: dict[bool, list[Counter[Any]]] = defaultdict(list)
    for index, case in enumerate(cases):
        responses = [ask(model, case, 10_000 * index + s) for s in range(100)]
        assert len({r.hard for r in responses}) == 1  # hardness is a property of the state
        wrong: Counter[Any] = Counter()
        for r in responses:
            verdict = judge(case, r.completion.text)
            assert not isinstance(verdict, RedFlag)
            assert r.correct == (verdict == case.oracle)
            if verdict != case.oracle:
                wrong[verdict] += 1
        wrong_per_state[responses[0].hard].append(wrong)
    hard, normal = wrong_per_state[True], wrong_per_state[False]
    # About 18 hard and 42 normal states; 100 draws give about 90 errors in a hard state and
    # 61 +- 5 in a normal one.
    assert len(hard) >= 5
    assert len(normal) >= 20
    # Every hard state's errors agree on one rival: two wrong votes there always collide.
    assert all(len(w) == 1 and sum(w.values()) >= 50 for w in hard), hard
    # Normal states spread their errors over at most `rivals` fixed rivals, and with 40 or more
    # errors over 3 rivals each state shows all three (missing one: 3 * (2/3)**40 < 1e-6).
    assert all(sum(w.values()) >= 40 for w in normal), normal
    assert all(len(w) == CORRELATED.rivals for w in normal), normal


def test_rivals_and_hardness_are_fixed_per_state_and_vary_with_salt() -> None:
    config = SimConfig(p=0.0, rivals=2, hard_fraction=0.5, malformed_rate=0.0, overlong_rate=0.0)
    cases = distinct_cases()[::40]
    assert len(cases) >= 100

    def errors(model: SimulatedModel, case: Case) -> tuple[bool, frozenset[Any]]:
        responses = [ask(model, case, seed) for seed in range(20)]
        return responses[0].hard, frozenset(judge(case, r.completion.text) for r in responses)

    first = [errors(SimulatedModel(config), c) for c in cases]
    again = [errors(SimulatedModel(config), c) for c in cases]
    salted = [errors(SimulatedModel(config.replace(salt=1)), c) for c in cases]
    assert first == again
    assert [h for h, _ in first] != [h for h, _ in salted]
    assert [w for _, w in first] != [w for _, w in salted]
    # p = 0: never right; a hard state's errors are its one rival, a normal state's its two.
    for case, (hard, wrong) in zip(cases, first, strict=True):
        assert case.oracle not in wrong
        assert len(wrong) == (1 if hard else 2)


# --- determinism ---------------------------------------------------------------------------------


def test_same_prompt_and_seed_give_the_same_response() -> None:
    config = SimConfig(p=0.7, malformed_rate=0.1, overlong_rate=0.1, latency_ms=30.0)
    cases = random_cases(random.Random(5), 300)  # more than the reading cache holds
    model = SimulatedModel(config)
    forward = [ask(model, c, i, max_tokens=1000) for i, c in enumerate(cases)]
    again = [ask(model, c, i, max_tokens=1000) for i, c in enumerate(cases)]
    fresh = SimulatedModel(config)
    backward = [ask(fresh, c, i, max_tokens=1000) for i, c in reversed(list(enumerate(cases)))]
    assert forward == again
    assert forward == backward[::-1]


def test_a_response_is_what_a_fresh_generator_of_its_seed_draws() -> None:
    # The model reseeds one generator per response and inlines the stdlib's draws; the texts
    # and token counts must still be those of random.Random(seed) drawn in the documented order:
    # validity, correctness, then the render (reason, compactness, layout) and the tokens.
    task = Hanoi(5)
    prompts = [task.prompt(state) for state in _hanoi_states(task)[:12]]
    configs = (PRESETS["ideal"], SimConfig(malformed_rate=0.0, overlong_rate=0.9))
    kinds: Counter[str] = Counter()
    for config in configs:
        model = SimulatedModel(config)
        for seed in range(300):
            prompt = prompts[seed % len(prompts)]
            response = model.respond(prompt.system, prompt.user, max_tokens=BIG_CAP, seed=seed)
            rng = random.Random(seed)
            overlong = rng.random() < config.overlong_rate
            p_correct = 1.0 - config.overlong_error if overlong else config.p_normal
            if rng.random() >= p_correct:
                continue  # a rival's answer: the statistics below cover those
            state = SIM.read_prompt(prompt.system, prompt.user)
            assert state is not None
            answer = SIM.oracle(state)
            assert answer is not None
            move = answer.move
            reason = rng.choice(_REASONS).format(d=move[0], f=move[1], t=move[2])
            rng.random(), rng.randrange(3)  # compact or not, and the layout
            if overlong:
                tokens = rng.randint(760, 1400)
            else:
                gauss = rng.gauss(config.output_tokens_mean, config.output_tokens_sd)
                tokens = int(min(700.0, max(16.0, gauss)))
            assert response.kind == ("overlong" if overlong else "normal")
            assert response.completion.text.startswith(reason + "\n"), seed
            assert response.completion.output_tokens == tokens, seed
            kinds[response.kind] += 1
    assert kinds["normal"] > 300
    assert kinds["overlong"] > 200


def _hanoi_states(task: Hanoi) -> list[HanoiState]:
    state = task.initial_state()
    out = []
    while not task.is_done(state):
        out.append(state)
        answer = task.oracle(state)
        assert answer is not None
        state = task.apply(state, answer)
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 641, 2**40 + 1])
def test_randbelow_draws_as_randrange_and_choice(n: int) -> None:
    for seed in range(200):
        ours, theirs, chosen = random.Random(seed), random.Random(seed), random.Random(seed)
        got = [randbelow(ours, n) for _ in range(5)]
        assert got == [theirs.randrange(n) for _ in range(5)]
        if n < 1000:
            assert got == [chosen.choice(range(n)) for _ in range(5)]
        assert ours.getstate() == theirs.getstate()  # the same bits were used up


def test_different_seeds_give_different_responses() -> None:
    case = hanoi_cases(5)[7]
    model = SimulatedModel(SimConfig(p=0.5, malformed_rate=0.1, overlong_rate=0.1))
    responses = [ask(model, case, seed) for seed in range(200)]
    # 30 renderings (5 reasons, compact or not, 3 layouts) times the token counts: almost all
    # distinct; and every kind and both verdicts occur.
    assert len({r.completion for r in responses}) >= 150
    assert len({r.completion.text for r in responses}) >= 20
    assert {r.kind for r in responses} == {"normal", "malformed", "overlong"}
    assert {r.correct for r in responses} == {True, False, None}


def test_latency_does_not_change_any_answer() -> None:
    config = SimConfig(p=0.7, malformed_rate=0.1, overlong_rate=0.1)
    quiet = SimulatedModel(config)
    slow = SimulatedModel(config.replace(latency_ms=25.0, latency_sigma=1.0))
    for seed, case in enumerate(random_cases(random.Random(9), 600)):
        a, b = ask(quiet, case, seed, 1000), ask(slow, case, seed, 1000)
        assert a.latency_s == 0.0
        assert b.latency_s > 0.0
        assert msgspec.structs.replace(b, latency_s=0.0) == a


# --- the output cap ------------------------------------------------------------------------------


def test_overlong_responses_are_cut_at_the_cap() -> None:
    model = SimulatedModel(SimConfig(p=0.9, malformed_rate=0.0, overlong_rate=0.5))
    cut = whole = 0
    for seed, case in enumerate(random_cases(random.Random(3), 1500)):
        r = ask(model, case, seed, max_tokens=1000)
        if r.kind != "overlong":
            continue
        completion = r.completion
        flag = RULES.check(completion)
        assert flag is not None
        if completion.finish_reason == "length":
            cut += 1
            assert completion.output_tokens == 1000
            assert flag.reason == "truncated"
            # The answer lines are lost: nothing the strict parser accepts is left.
            assert isinstance(judge(case, completion.text), RedFlag), completion.text
        else:
            whole += 1
            assert completion.finish_reason == "stop"
            assert 750 < completion.output_tokens <= 1000
            assert flag.reason == "too_long"
            assert not isinstance(judge(case, completion.text), RedFlag)
    # Overlong tokens are uniform on 760..1400: 62% of about 750 overlong responses are cut.
    assert cut > 300
    assert whole > 200


@pytest.mark.parametrize("cap", [1, 12, 300, 540, 700])
def test_no_response_exceeds_the_cap(cap: int) -> None:
    config = SimConfig(p=0.8, malformed_rate=0.1, overlong_rate=0.1)
    capped, uncapped = SimulatedModel(config), SimulatedModel(config)
    cut = 0
    cases = random_cases(random.Random(cap), 400)
    cases.append(Case(Hanoi(3), "Hi.", "Tell me a joke.", None))  # the 12-token "unknown"
    for seed, case in enumerate(cases):
        a, b = ask(capped, case, seed, max_tokens=cap), ask(uncapped, case, seed)
        assert (a.kind, a.correct, a.hard, a.latency_s) == (b.kind, b.correct, b.hard, b.latency_s)
        if b.completion.output_tokens <= cap:
            assert a.completion == b.completion
            continue
        cut += 1
        assert a.completion.finish_reason == "length"
        assert a.completion.output_tokens == cap
        assert b.completion.text.startswith(a.completion.text)
        assert len(a.completion.text) < len(b.completion.text)
        assert RULES.check(a.completion) is not None
    assert cut > 0


# --- latency -------------------------------------------------------------------------------------


def latencies(config: SimConfig, count: int) -> list[float]:
    model = SimulatedModel(config)
    case = arithmetic_cases(400, 6, 2)[0]
    return [ask(model, case, seed).latency_s for seed in range(count)]


def test_latency_is_log_normal_around_the_median() -> None:
    median_ms, sigma, n = 40.0, 0.5, 4000
    values = latencies(SimConfig(latency_ms=median_ms, latency_sigma=sigma), n)
    assert all(v > 0 for v in values)
    # The share of draws below a quantile q of the distribution is binomial(n, q)/n.
    # Below the median, q = 0.5: SE = sqrt(0.25 / 4000) = 0.0079, tolerance +-0.036.
    hits, _ = share(v < median_ms / 1000 for v in values)
    check_share(hits, n, 0.5, "share below the median latency")
    # Below median * e**sigma, q = Phi(1) = 0.8413: SE 0.0058, tolerance +-0.026. A sigma of
    # 0.25 or 1 instead would put 0.977 or 0.69 there.
    hits, _ = share(v < median_ms / 1000 * math.exp(sigma) for v in values)
    check_share(hits, n, 0.5 * (1 + math.erf(1 / math.sqrt(2))), "share below one sigma")


def test_latency_is_independent_of_the_answer() -> None:
    # Latency has its own stream: within each kind of answer, half the draws are still below
    # the median. Groups of 100 draws or more (about 400 malformed, 360 overlong right, 2240
    # normal right, 960 normal wrong): tolerance 4.5 * 0.5 / sqrt(360) = +-0.12 at worst. Drawn
    # from the answer's own sequence instead, the latency of a malformed or overlong answer (its
    # first uniform below 0.2, so a positive Box-Muller normal) would never be below.
    config = SimConfig(p=0.7, malformed_rate=0.1, overlong_rate=0.1, latency_ms=40.0)
    model = SimulatedModel(config)
    below: dict[tuple[str, bool | None], list[bool]] = defaultdict(list)
    for seed, case in enumerate(random_cases(random.Random(6), 4000)):
        r = ask(model, case, seed)
        below[r.kind, r.correct].append(r.latency_s < 0.04)
    assert set(below) == {
        ("malformed", None),
        *((k, c) for k in ("normal", "overlong") for c in (True, False)),
    }
    for group, flags in below.items():
        hits, n = share(flags)
        if n >= 100:  # overlong and wrong, about 40 draws, is left out
            check_share(hits, n, 0.5, f"share below the median latency of {group}")


def test_latency_without_spread_and_without_latency() -> None:
    assert all(
        v == pytest.approx(0.04)
        for v in latencies(SimConfig(latency_ms=40.0, latency_sigma=0.0), 50)
    )
    assert all(v == 0.0 for v in latencies(SimConfig(latency_ms=0.0, latency_sigma=2.0), 200))
    assert all(v == 0.0 for v in latencies(SimConfig(), 200))  # no latency by default


# --- the async path ------------------------------------------------------------------------------


def request_for(
    case: Case, seed: int, max_tokens: int = 1000, temperature: float = 0.1
) -> SampleRequest:
    return SampleRequest(
        sample_id=f"3:{seed}",
        step=3,
        model="sim",
        system=case.system,
        user=case.user,
        temperature=temperature,
        max_tokens=max_tokens,
        seed=seed,
    )


@pytest.mark.anyio
async def test_complete_returns_the_respond_completion_after_its_latency(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr("maker.clients._sim.anyio", SimpleNamespace(sleep=fake_sleep))
    config = SimConfig(p=0.7, malformed_rate=0.1, overlong_rate=0.1, latency_ms=5000.0)
    model = SimulatedModel(config)
    expected_sleeps = []
    for seed, case in enumerate(random_cases(random.Random(4), 40)):
        temperature = (0.0, 0.1, 0.7)[seed % 3]
        completion = await model.complete(request_for(case, seed, temperature=temperature))
        response = ask(SimulatedModel(config), case, seed, max_tokens=1000)
        # The pure core's completion, stamped with the temperature sent (which changes nothing).
        assert completion == msgspec.structs.replace(
            response.completion, temperature_sent=temperature
        )
        expected_sleeps.append(response.latency_s)
    assert slept == expected_sleeps
    slept.clear()
    await SimulatedModel().complete(request_for(hanoi_cases(3)[0], 1))
    assert slept == []  # no latency configured: no sleep at all


@pytest.mark.anyio
async def test_complete_really_waits_a_small_latency() -> None:
    model = SimulatedModel(PRESETS["ideal"].replace(latency_ms=1.0, latency_sigma=0.0))
    case = hanoi_cases(4)[5]
    started = time.perf_counter()
    with anyio.fail_after(5):
        completion = await model.complete(request_for(case, 3))
    assert time.perf_counter() - started >= 0.0005
    expected = ask(model, case, 3, max_tokens=1000).completion
    assert completion == msgspec.structs.replace(expected, temperature_sent=0.1)
    assert judge(case, completion.text) == case.oracle


# --- presets, validation, description -----------------------------------------------------------


def test_presets_follow_the_paper() -> None:
    assert {"paper", "o3-mini", "nano", "ideal"} <= set(PRESETS)
    assert PRESETS["paper"].p == 0.9978  # gpt-4.1-mini: 0.22% errors
    assert PRESETS["paper"].output_tokens_mean == 538.0
    assert PRESETS["o3-mini"].p == 0.9982  # 0.18% errors
    assert abs((1 - PRESETS["nano"].p) - 0.357) < 0.001  # 35.7% errors
    assert PRESETS["ideal"].p == 1.0
    model = SimulatedModel(preset="o3-mini")
    assert model.config is PRESETS["o3-mini"]
    assert SimulatedModel().config == PRESETS["paper"]


def test_the_paper_preset_makes_the_papers_k_enough_for_its_run() -> None:
    """The paper ran 1,048,575 steps at k = 3 without an error, and its table gives k_min = 3 at
    t = 0.95. The preset's hard states (its guess at correlated errors) must keep that true.

    Per state class the step errs as in the gambler's ruin against one rival (Eq 9, an upper
    bound for normal states, whose errors split over two rivals); a run succeeds when no step
    errs."""
    config = PRESETS["paper"]
    steps = 2**20 - 1

    def p_success(k: int) -> float:
        normal = (1.0 - config.hard_fraction) * (1.0 - p_step(config.p_normal, k))
        hard = config.hard_fraction * (1.0 - p_step(config.p_hard, k))
        return math.exp(-steps * (normal + hard))

    assert p_success(3) >= 0.95
    assert p_success(2) < 0.05
    # The hard states still err together more often than independent errors would.
    assert config.p_hard < config.p_normal
    assert steps * config.hard_fraction * (1 - config.p_hard) ** 2 > 0.25


def test_ideal_never_errs_nor_flags() -> None:
    model = SimulatedModel(preset="ideal")
    for seed, case in enumerate(random_cases(random.Random(8), 2000)):
        r = ask(model, case, seed, max_tokens=1000)
        assert (r.kind, r.correct, r.hard) == ("normal", True, False)
        assert RULES.check(r.completion) is None
        assert judge(case, r.completion.text) == case.oracle


def test_unknown_preset_and_config_with_preset_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        SimulatedModel(preset="gpt-5")
    assert info.value.field == "preset"
    assert "paper" in str(info.value)
    with pytest.raises(ConfigError) as info:
        SimulatedModel(SimConfig(), preset="paper")
    assert info.value.field == "preset"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"p": 1.5}, "p"),
        ({"p": -0.1}, "p"),
        ({"p": math.nan}, "p"),
        ({"hard_p": 2.0}, "hard_p"),
        ({"hard_fraction": -0.5}, "hard_fraction"),
        ({"rivals": 0}, "rivals"),
        ({"malformed_rate": 0.5, "overlong_rate": 0.5}, "malformed_rate"),
        ({"malformed_rate": 1.2}, "malformed_rate"),
        ({"overlong_rate": -0.01}, "overlong_rate"),
        ({"overlong_error": 1.01}, "overlong_error"),
        ({"output_tokens_mean": 0.0}, "output_tokens_mean"),
        ({"output_tokens_sd": -1.0}, "output_tokens_mean"),
        ({"latency_ms": -1.0}, "latency_ms"),
        ({"latency_ms": math.inf}, "latency_ms"),
        ({"latency_sigma": -0.1}, "latency_sigma"),
        ({"latency_sigma": math.nan}, "latency_sigma"),
        ({"straggler_rate": -0.01}, "straggler_rate"),
        ({"straggler_rate": 1.5}, "straggler_rate"),
        ({"straggler_rate": math.nan}, "straggler_rate"),
        ({"straggler_s": 0.0}, "straggler_s"),
        ({"straggler_s": math.inf}, "straggler_s"),
    ],
)
def test_config_validation_names_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        SimConfig(**changes)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    with pytest.raises(ConfigError):
        SimConfig().replace(**changes)  # replace validates again


def test_edge_configs_are_valid() -> None:
    SimConfig(p=0.0, hard_p=1.0, hard_fraction=1.0, malformed_rate=0.0, overlong_rate=0.999)
    SimConfig(rivals=1, latency_ms=0.0, latency_sigma=0.0, output_tokens_sd=0.0)


STRAGGLER_FIELDS = {"straggler_rate", "straggler_s"}
"""Added after logs were recorded: described only when not at their defaults."""


def test_describe_is_json_and_names_every_field() -> None:
    fields = {f.name for f in dataclasses.fields(SimConfig)} - STRAGGLER_FIELDS
    config = SimConfig(p=0.95, salt=7, latency_ms=3.0)
    plain = SimulatedModel(config).describe()
    assert json.loads(json.dumps(plain, allow_nan=False)) == plain
    assert set(plain) == fields
    assert plain == {name: getattr(config, name) for name in fields}
    preset = SimulatedModel(preset="nano").describe()
    assert json.loads(json.dumps(preset, allow_nan=False)) == preset
    assert set(preset) == fields | {"preset"}
    assert preset["preset"] == "nano"
    assert preset["p"] == PRESETS["nano"].p


def test_model_name() -> None:
    case = hanoi_cases(3)[2]
    default = SimulatedModel()
    assert default.model == "sim"
    named = SimulatedModel(preset="ideal", name="sim:ideal")
    assert named.model == "sim:ideal"
    assert ask(named, case, 1).completion.model == "sim:ideal"
    assert isinstance(named, Client)


# --- prompts of no known task --------------------------------------------------------------------


def unknown_prompts() -> Sequence[tuple[str, str]]:
    hanoi = hanoi_cases(3)[1]  # 3 disks: disk 1 circles counterclockwise
    wrong_parity = hanoi.user.replace(
        "counterclockwise one peg (0 -> 2 -> 1 -> 0)", "clockwise one peg (0 -> 1 -> 2 -> 0)"
    )
    assert wrong_parity != hanoi.user
    arith = arithmetic_cases(400, 6, 2)[0]
    return [
        ("You are a helpful assistant.", "Tell me a joke about pegs."),
        ("", ""),
        (hanoi.system, wrong_parity),  # a strategy that cannot reach peg 2: not a Hanoi prompt
        (arith.system, arith.user.replace("Operation: ", "Operation: square root of ")),
    ]


@pytest.mark.parametrize("prompt", unknown_prompts())
def test_prompt_of_no_known_task(prompt: tuple[str, str]) -> None:
    system, user = prompt
    model = SimulatedModel(preset="ideal")
    for seed in range(5):
        r = model.respond(system, user, max_tokens=1000, seed=seed)
        assert (r.kind, r.correct, r.hard) == ("unknown", None, False)
        assert r.completion.finish_reason == "stop"
        with pytest.raises(RedFlag):
            Hanoi(3).parse(r.completion.text)
        with pytest.raises(RedFlag):
            Arithmetic().parse(r.completion.text)


def test_complete_now_is_complete_without_awaiting_and_declines_with_latency() -> None:
    task = Hanoi(4)
    prompt = task.prompt(task.initial_state())
    model = SimulatedModel(SimConfig(p=0.7, malformed_rate=0.1, overlong_rate=0.1))
    for seed in range(200):
        request = SampleRequest(
            sample_id=f"0:{seed}", step=0, model="sim", system=prompt.system, user=prompt.user,
            temperature=0.1, max_tokens=1000, seed=seed,
        )  # fmt: skip
        assert model.complete_now(request) == anyio.run(model.complete, request)
    slow = SimulatedModel(SimConfig(latency_ms=5.0))
    assert slow.complete_now(request) is None
