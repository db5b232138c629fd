"""The vote tally against an independent reference, under random vote sequences."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maker import ConfigError
from maker.core._tally import Tally, VoteRule

# Few candidates make ties, lead changes and long races common; a free-text alphabet checks that
# nothing depends on the shape of candidate strings.
candidates = st.one_of(
    st.sampled_from(["a", "b", "c", "d"]),
    st.sampled_from(['{"move":[1,0,2]}', '{"move":[1,0,1]}', ""]),
)
vote_sequences = st.lists(candidates, max_size=60)
margins = st.integers(min_value=1, max_value=6)
rules: st.SearchStrategy[VoteRule] = st.sampled_from(("ahead", "first"))


def reference_decision(votes: list[str], k: int, rule: VoteRule) -> tuple[int, str] | None:
    """(index of the deciding vote, winner) by brute force over every prefix, or None."""
    for end in range(1, len(votes) + 1):
        counts = Counter(votes[:end])
        for candidate, n in counts.items():
            best_other = max((m for c, m in counts.items() if c != candidate), default=0)
            threshold = k + best_other if rule == "ahead" else k
            if n >= threshold:
                return end - 1, candidate
    return None


def reference_needed(votes: list[str], k: int, rule: VoteRule) -> int:
    ranked = [*sorted(Counter(votes).values(), reverse=True), 0, 0]
    top, second = ranked[0], ranked[1]
    return k - (top - second) if rule == "ahead" else k - top


def reference_leader(votes: list[str]) -> str | None:
    counts = Counter(votes)
    if not counts:
        return None
    top = max(counts.values())
    # Counter keeps first-insertion order, so this is the earliest candidate among the tied top.
    return next(c for c, n in counts.items() if n == top)


@given(votes=vote_sequences, k=margins, rule=rules)
def test_decides_exactly_at_the_first_deciding_prefix(
    votes: list[str], k: int, rule: VoteRule
) -> None:
    expected = reference_decision(votes, k, rule)
    tally = Tally(k, rule)
    for i, vote in enumerate(votes):
        result = tally.add(vote)
        if expected is not None and i == expected[0]:
            assert result == expected[1]
            assert tally.winner == expected[1]
            assert tally.total == i + 1
            break
        # Never earlier than the reference.
        assert result is None
        assert tally.winner is None
    else:
        assert expected is None
        assert tally.winner is None


@given(votes=vote_sequences, k=margins, rule=rules, extra=candidates)
def test_adding_after_decision_raises_and_changes_nothing(
    votes: list[str], k: int, rule: VoteRule, extra: str
) -> None:
    tally = Tally(k, rule)
    # Enough votes for one candidate always decide, whatever came before.
    for vote in [*votes, *["winner"] * (k + len(votes))]:
        if tally.add(vote) is not None:
            break
    assert tally.winner is not None
    before = (tally.votes, tally.total, tally.winner)
    with pytest.raises(RuntimeError, match="already decided"):
        tally.add(extra)
    assert (tally.votes, tally.total, tally.winner) == before
    assert tally.needed() == 0


def _undecided_prefix(votes: list[str], k: int, rule: VoteRule) -> list[str]:
    decision = reference_decision(votes, k, rule)
    return votes if decision is None else votes[: decision[0]]


@given(votes=vote_sequences, k=margins, rule=rules)
def test_needed_and_leader_before_decision(votes: list[str], k: int, rule: VoteRule) -> None:
    tally = Tally(k, rule)
    prefix = _undecided_prefix(votes, k, rule)
    assert tally.needed() == k
    for end, vote in enumerate(prefix, start=1):
        tally.add(vote)
        assert tally.needed() == reference_needed(prefix[:end], k, rule)
        assert 1 <= tally.needed() <= k
        leader, lead = tally.leader()
        assert leader == reference_leader(prefix[:end])
        assert lead == k - tally.needed()


@given(votes=vote_sequences, k=margins, rule=rules)
def test_needed_votes_for_the_leader_always_decide(
    votes: list[str], k: int, rule: VoteRule
) -> None:
    tally = Tally(k, rule)
    for vote in _undecided_prefix(votes, k, rule):
        tally.add(vote)
    leader = tally.leader()[0]
    if leader is None:
        leader = "anyone"
    needed = tally.needed()
    # needed() is a lower bound that is reached: all but the last of those votes leave the
    # tally open, and the last one decides for the leader.
    for _ in range(needed - 1):
        assert tally.add(leader) is None
    assert tally.add(leader) == leader
    assert tally.winner == leader


@given(votes=vote_sequences, k=margins)
def test_first_rule_decides_at_the_first_count_to_reach_k(votes: list[str], k: int) -> None:
    tally = Tally(k, "first")
    seen: Counter[str] = Counter()
    for vote in votes:
        seen[vote] += 1
        result = tally.add(vote)
        if seen[vote] >= k:
            assert result == vote
            break
        assert result is None


@given(votes=vote_sequences, k=margins, rule=rules)
def test_votes_keep_first_appearance_order(votes: list[str], k: int, rule: VoteRule) -> None:
    tally = Tally(k, rule)
    prefix = votes
    decision = reference_decision(votes, k, rule)
    if decision is not None:
        prefix = votes[: decision[0] + 1]
    for vote in prefix:
        tally.add(vote)
    assert list(tally.votes) == list(dict.fromkeys(prefix))
    assert tally.votes == dict(Counter(prefix))
    assert tally.total == len(prefix)


def test_votes_is_a_copy() -> None:
    tally = Tally(3)
    tally.add("a")
    tally.votes["a"] = 99
    assert tally.votes == {"a": 1}


def test_ahead_needs_a_lead_not_a_count() -> None:
    # Under "first" the third "a" wins at once; under "ahead" b's two votes keep it open.
    votes = ["a", "b", "a", "b", "a"]
    first, ahead = Tally(3, "first"), Tally(3, "ahead")
    assert [first.add(v) for v in votes] == [None, None, None, None, "a"]
    assert [ahead.add(v) for v in votes] == [None, None, None, None, None]
    assert ahead.needed() == 2


@pytest.mark.parametrize("k", [0, -1, -100])
def test_k_below_one_is_rejected(k: int) -> None:
    with pytest.raises(ConfigError, match="k: must be at least 1"):
        Tally(k)


@pytest.mark.parametrize("rule", ["", "Ahead", "majority", "first-to-k"])
def test_unknown_rule_is_rejected(rule: str) -> None:
    with pytest.raises(ConfigError, match="rule: must be"):
        Tally(3, rule)  # type: ignore[arg-type]
