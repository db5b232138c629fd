"""The vote tally: first-to-ahead-by-k (the paper's rule) or first-to-k. Pure, no I/O."""

from __future__ import annotations

from typing import Literal

from ._errors import ConfigError

VoteRule = Literal["ahead", "first"]


class Tally:
    """Counts votes for candidates (canonical JSON strings) and says when one has won.

    Under ``"ahead"`` a candidate wins when its votes reach k plus the most votes of any other
    candidate; under ``"first"`` when its votes reach k.

    >>> t = Tally(2)
    >>> t.add("a"), t.add("b"), t.add("a"), t.add("a")
    (None, None, None, 'a')
    >>> t.votes
    {'a': 3, 'b': 1}
    """

    __slots__ = ("_counts", "_winner", "k", "rule")

    def __init__(self, k: int, rule: VoteRule = "ahead") -> None:
        if k < 1:
            raise ConfigError("k", f"must be at least 1, got {k}")
        if rule not in ("ahead", "first"):
            raise ConfigError("rule", f"must be 'ahead' or 'first', got {rule!r}")
        self.k = k
        self.rule: VoteRule = rule
        self._counts: dict[str, int] = {}
        self._winner: str | None = None

    @property
    def votes(self) -> dict[str, int]:
        """Votes per candidate, in the order candidates first appeared."""
        return dict(self._counts)

    @property
    def total(self) -> int:
        """Votes counted so far."""
        return sum(self._counts.values())

    @property
    def winner(self) -> str | None:
        """The decided candidate, or None while undecided."""
        return self._winner

    def leader(self) -> tuple[str | None, int]:
        """The candidate with most votes (earliest on ties) and its lead over the runner-up."""
        best: str | None = None
        top = second = 0
        for candidate, n in self._counts.items():
            if n > top:
                best, top, second = candidate, n, top
            elif n > second:
                second = n
        if self.rule == "first":
            return best, top
        return best, top - second

    def needed(self) -> int:
        """The fewest further votes that could decide: k minus the leader's lead (or votes)."""
        if self._winner is not None:
            return 0
        return self.k - self.leader()[1]

    def add(self, candidate: str) -> str | None:
        """Count one vote. Returns the winner if this vote decided, else None."""
        if self._winner is not None:
            raise RuntimeError("the tally is already decided")
        counts = self._counts
        n = counts.get(candidate, 0) + 1
        counts[candidate] = n
        if self.rule == "first":
            won = n >= self.k
        else:
            # The runner-up's votes; a plain loop, since a step has one or two candidates.
            rival = 0
            for c, v in counts.items():
                if v > rival and c != candidate:
                    rival = v
            won = n >= self.k + rival
        if won:
            self._winner = candidate
            return candidate
        return None
