"""The simulated model: a statistically faithful stand-in for a language model, offline.

It reads the prompt like a model would (through the task's :class:`~maker.core.Simulator`),
and answers in the same text format a real model produces. Its statistics follow the paper's
measurements of gpt-4.1-mini (see :data:`PRESETS`):

- among responses that are not red-flagged, an answer is correct with probability ``p``;
- a share of responses is malformed, and a share is overlong (past 750 output tokens); overlong
  responses are wrong far more often (the paper: about 10% against about 0.1% below 700 tokens);
- a small share of states is "hard": there ``p`` is lower and every error agrees on one rival,
  which makes the correlated errors independent sampling would not;
- wrong answers are drawn from a few plausible rivals per state, fixed per state, so wrong votes
  can pile up on one candidate as they do with a real model.

Everything is determined by the request's ``seed`` (which the engine derives from the run's seed
and the sample id) and the model's ``salt``. Temperature is recorded but does not change the
distribution. The text is compact: the reported output token counts follow the measured
distribution, but the text is not padded to that length.
"""

from __future__ import annotations

import _random
import dataclasses
import hashlib
import math
import random
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import msgspec

from ..core._client import Completion, SampleRequest
from ..core._errors import ConfigError
from ..core._simulator import AnySimulator, randbelow
from ..core._task import Task

_READING_CACHE = 256

_reseed = _random.Random.seed
"""Seeds an existing generator as ``random.Random(seed)`` seeds a new one (for an int seed), at
two thirds of the cost of constructing one: each sample draws from a generator of its own."""
_TWOPI = 2.0 * math.pi


class _Generators(threading.local):
    """One reusable generator per thread, reseeded for every response."""

    def __init__(self) -> None:
        self.rng = random.Random()


class _Reading:
    """A prompt read once: its simulator, state, hardness and right answer; rivals on demand."""

    __slots__ = (
        "_rivals",
        "hard",
        "input_tokens",
        "key",
        "oracle",
        "p_correct",
        "rivals_count",
        "salt",
        "sim",
        "state",
    )

    def __init__(
        self, sim: AnySimulator, state: Any, config: SimConfig, p: tuple[float, float], tokens: int
    ) -> None:
        self.sim = sim
        self.state = state
        self.input_tokens = tokens
        self.key = sim.state_key(state)
        self.salt = config.salt
        self.hard = _unit(f"hard:{config.salt}:{self.key}") < config.hard_fraction
        self.p_correct = p[1] if self.hard else p[0]
        self.rivals_count = 1 if self.hard else config.rivals
        self.oracle = sim.oracle(state)
        self._rivals: tuple[Any, ...] | None = None

    @property
    def rivals(self) -> tuple[Any, ...]:
        # Rivals are fixed per state, so that wrong votes can agree, as real errors often do.
        # They are built on first need: most states never get a wrong answer.
        if self._rivals is None:
            rng = random.Random(_seed64(f"rivals:{self.salt}:{self.key}"))
            self._rivals = tuple(self.sim.wrong_answers(self.state, rng, self.rivals_count))
        return self._rivals


def _seed64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _unit(text: str) -> float:
    """A number in [0, 1) fixed by ``text``."""
    return _seed64(text) / 2.0**64


SampleKind = Literal["normal", "overlong", "malformed", "unknown"]


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    """Statistics of the simulated model. Validated on construction.

    - ``p``: probability that a valid (not red-flagged) answer is correct, averaged over states;
    - ``rivals``: how many distinct wrong answers a normal state has;
    - ``hard_fraction`` / ``hard_p``: share of hard states and their ``p`` (one rival there);
    - ``malformed_rate`` / ``overlong_rate``: shares of malformed and overlong responses;
    - ``overlong_error``: error rate of overlong responses;
    - ``output_tokens_mean`` / ``output_tokens_sd``: normal responses' output tokens;
    - ``latency_ms`` / ``latency_sigma``: median and log-normal spread of latency (0: none);
    - ``salt``: varies which states are hard and what their rivals are;
    - ``straggler_rate`` / ``straggler_s``: probability that a call straggles, and how late a
      straggler answers, in seconds: its latency is ``straggler_s`` instead of the log-normal
      draw, and its answer is the one it would have given on time. Whether a call straggles
      is fixed by its seed, like its latency, so a re-run or a replay draws the same. A model
      with stragglers waits (it is not :attr:`~SimulatedModel.in_process`), even without
      latency, so the scheduler's timeout applies to its calls.
    """

    p: float = 0.9978
    rivals: int = 2
    # Hard states are this model's guess at correlated errors (the paper measured none per
    # state). They are set so that the paper's own choice holds for the preset: at k = 3 a
    # 1,048,575-step run succeeds with probability about 0.96 (k_min = 3 at t = 0.95, as in the
    # paper's table), while still adding collisions of agreeing wrong votes.
    hard_fraction: float = 0.0002
    hard_p: float = 0.95
    malformed_rate: float = 0.002
    overlong_rate: float = 0.002
    overlong_error: float = 0.10
    output_tokens_mean: float = 538.0
    output_tokens_sd: float = 60.0
    latency_ms: float = 0.0
    latency_sigma: float = 0.5
    salt: int = 0
    straggler_rate: float = 0.0
    straggler_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("p", "hard_p", "hard_fraction", "malformed_rate", "overlong_rate"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
                raise ConfigError(name, f"must be between 0 and 1, got {value}")
        if not 0.0 <= self.overlong_error <= 1.0:
            raise ConfigError(
                "overlong_error", f"must be between 0 and 1, got {self.overlong_error}"
            )
        if self.malformed_rate + self.overlong_rate >= 1.0:
            raise ConfigError("malformed_rate", "malformed_rate + overlong_rate must be below 1")
        if self.rivals < 1:
            raise ConfigError("rivals", f"must be at least 1, got {self.rivals}")
        if not (self.output_tokens_mean > 0 and self.output_tokens_sd >= 0):
            raise ConfigError("output_tokens_mean", "token mean must be positive and sd >= 0")
        if not (math.isfinite(self.latency_ms) and self.latency_ms >= 0):
            raise ConfigError("latency_ms", f"must be >= 0, got {self.latency_ms}")
        if not (math.isfinite(self.latency_sigma) and self.latency_sigma >= 0):
            raise ConfigError("latency_sigma", f"must be >= 0, got {self.latency_sigma}")
        rate = self.straggler_rate
        if not (_number(rate) and 0.0 <= rate <= 1.0):
            raise ConfigError("straggler_rate", f"must be between 0 and 1, got {rate!r}")
        if not (_number(self.straggler_s) and self.straggler_s > 0):
            raise ConfigError("straggler_s", f"must be a number > 0, got {self.straggler_s!r}")

    @property
    def p_normal(self) -> float:
        """``p`` of the normal states, so that the average over states is ``p``."""
        hard_p = min(self.hard_p, self.p)
        if self.hard_fraction >= 1.0:
            return hard_p
        value = (self.p - self.hard_fraction * hard_p) / (1.0 - self.hard_fraction)
        return min(1.0, max(0.0, value))

    @property
    def p_hard(self) -> float:
        """``p`` of the hard states (never above ``p``)."""
        return min(self.hard_p, self.p)

    def replace(self, **changes: Any) -> SimConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict[str, Any]:
        """The configuration as JSON, for ``run_started``: every field, but those added after
        logs were recorded (see :data:`_LATER_FIELDS`) only when they differ from their default.
        """
        out: dict[str, Any] = msgspec.to_builtins(self)
        for name, default in _LATER_FIELDS.items():
            if out.get(name) == default:
                del out[name]
        return out


_LATER_FIELDS: dict[str, Any] = {
    f.name: f.default
    for f in dataclasses.fields(SimConfig)
    if f.name in ("straggler_rate", "straggler_s")
}
"""Fields :meth:`SimConfig.describe` leaves out at their defaults: a run recorded before they
existed describes its model without them, and resuming it checks that the model rebuilt from the
log describes itself as recorded."""


PRESETS: dict[str, SimConfig] = {
    # gpt-4.1-mini at temperature 0.1 as the paper measured it: 0.22% errors, 538 output tokens.
    "paper": SimConfig(),
    # o3-mini: 0.18% errors, 535 output tokens.
    "o3-mini": SimConfig(p=0.9982, output_tokens_mean=535.0),
    # gpt-4.1-nano: 35.7% errors; its long answers (842 tokens on average) are flagged more often.
    "nano": SimConfig(p=0.6429, output_tokens_mean=620.0, overlong_rate=0.2),
    # A model that never errs and never rambles: for tests of the machinery itself.
    "ideal": SimConfig(p=1.0, hard_fraction=0.0, malformed_rate=0.0, overlong_rate=0.0),
}
"""Named configurations, after the paper's Fig. 6b."""


def _preset(name: str) -> SimConfig:
    config = PRESETS.get(name)
    if config is None:
        known = ", ".join(sorted(PRESETS))
        raise ConfigError("preset", f"unknown preset {name!r}; known: {known}")
    return config


def sim_config(
    base: SimConfig | str | None = None,
    *,
    p: float | None = None,
    latency_ms: float | None = None,
) -> SimConfig:
    """The simulated model's configuration from the options a user gives: ``base`` (a preset
    name, ``"paper"`` when None, or a config) with ``p`` and ``latency_ms`` overriding it where
    given. What the CLI, the service, serve-sim and the MCP server build their models from.

    >>> sim_config("ideal", latency_ms=5).latency_ms, sim_config().p == PRESETS["paper"].p
    (5.0, True)
    """
    config = base if isinstance(base, SimConfig) else _preset(base or "paper")
    changes: dict[str, float] = {}
    if p is not None:
        changes["p"] = float(p)
    if latency_ms is not None:
        changes["latency_ms"] = float(latency_ms)
    return config.replace(**changes) if changes else config


class SimResponse(msgspec.Struct, frozen=True, kw_only=True):
    """One simulated response, with what the simulator knows about it (for tests)."""

    completion: Completion
    latency_s: float
    kind: SampleKind
    correct: bool | None
    hard: bool


class SimulatedModel:
    """The in-process simulated model: a :class:`~maker.Client` that needs no network or key.

    >>> import anyio
    >>> from maker import SampleRequest
    >>> from maker.tasks import Hanoi
    >>> task = Hanoi(3)
    >>> prompt = task.prompt(task.initial_state())
    >>> model = SimulatedModel(preset="ideal")
    >>> request = SampleRequest(sample_id="0:0", step=0, model="sim", system=prompt.system,
    ...     user=prompt.user, temperature=0.0, max_tokens=1000, seed=7)
    >>> completion = anyio.run(model.complete, request)
    >>> task.parse(completion.text).move
    (1, 0, 2)
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        preset: str | None = None,
        simulators: Sequence[AnySimulator] | None = None,
        name: str = "sim",
    ) -> None:
        if config is not None and preset is not None:
            raise ConfigError("preset", "give a config or a preset, not both")
        if preset is not None:
            config = _preset(preset)
        self._config = config if config is not None else PRESETS["paper"]
        self.preset = preset
        if simulators is None:
            from ..tasks import BUILTIN_SIMULATORS

            simulators = BUILTIN_SIMULATORS
        self._simulators = tuple(simulators)
        self._name = name
        self._readings: OrderedDict[tuple[str, str], _Reading] = OrderedDict()
        # The prompt read last, by identity: a step's samples share their prompt's objects.
        self._last: tuple[str, str, _Reading | None] | None = None
        self._generators = _Generators()
        # The config is frozen: what every response needs of it is taken out once.
        cfg = self._config
        self._p = (cfg.p_normal, cfg.p_hard)
        self._malformed = cfg.malformed_rate
        self._flagged = cfg.malformed_rate + cfg.overlong_rate
        self._tokens_mean = cfg.output_tokens_mean
        self._tokens_sd = cfg.output_tokens_sd
        self._straggler_rate = cfg.straggler_rate

    @property
    def in_process(self) -> bool:
        """Whether it answers at once, without waiting: then the scheduler arms no timeout
        for its calls (one would cost more than the call). With simulated latency it waits
        like a real model, and the scheduler's timeout applies as to any client; so it does
        with stragglers, which answer late by definition."""
        return self._config.latency_ms == 0 and self._config.straggler_rate == 0

    @property
    def config(self) -> SimConfig:
        """The statistics this model follows (fixed at construction)."""
        return self._config

    @property
    def model(self) -> str:
        """The model name recorded in events."""
        return self._name

    def describe(self) -> dict[str, Any]:
        """The configuration, recorded in ``run_started``."""
        out = self.config.describe()
        if self.preset is not None:
            out["preset"] = self.preset
        return out

    def add_simulator(self, simulator: AnySimulator) -> None:
        """Answer the prompts ``simulator`` reads too, after the ones this model knew: how a
        task of one's own that offers :meth:`maker.Task.simulator` runs offline. The engine
        adds the simulator of every task it runs on this model.

        Simulators are parameter-free, so one of each class is enough: adding another of a
        class already here changes nothing. A prompt no simulator read was never cached, so
        none is answered differently for having been seen before.
        """
        if any(type(known) is type(simulator) for known in self._simulators):
            return
        self._simulators = (*self._simulators, simulator)

    async def complete(self, request: SampleRequest) -> Completion:
        """Answer one request, after the simulated latency."""
        completion = self._draw(
            request.system, request.user, request.max_tokens, request.seed, request.temperature
        )[0]
        latency = self._latency(request.seed)
        if latency > 0:
            await anyio.sleep(latency)
        return completion

    def complete_now(self, request: SampleRequest) -> Completion | None:
        """The answer :meth:`complete` gives, at once; None when the model has latency or the
        request straggles."""
        if self._config.latency_ms > 0:
            return None
        if self._straggler_rate > 0 and self._straggles(request.seed):
            return None
        return self._draw(
            request.system, request.user, request.max_tokens, request.seed, request.temperature
        )[0]

    async def probe(self) -> None:
        """Check that the model is reachable (see :class:`maker.Probe`): it always is."""

    async def aclose(self) -> None:
        """Release what the model holds: nothing, it is in-process. There for symmetry with the
        provider clients, so that code written for them closes this one the same way."""

    def respond(
        self,
        system: str,
        user: str,
        *,
        max_tokens: int,
        seed: int,
        model: str | None = None,
    ) -> SimResponse:
        """The response to one prompt, as a pure function of the prompt, ``seed`` and config."""
        completion, kind, correct, hard = self._draw(system, user, max_tokens, seed, None)
        return SimResponse(
            completion=completion,
            latency_s=self._latency(seed),
            kind=kind,
            correct=correct,
            hard=hard,
        )

    def _draw(
        self, system: str, user: str, max_tokens: int, seed: int, temperature: float | None
    ) -> tuple[Completion, SampleKind, bool | None, bool]:
        """The completion, its kind, whether it is correct and whether its state is hard.

        Every number is drawn from one generator seeded with ``seed``, in a fixed order; the
        inlined draws are those ``random.Random`` makes (its ``choice``, ``randrange`` and
        ``gauss``), so the responses are the ones a fresh ``random.Random(seed)`` gives.
        """
        # ``temperature`` is only recorded as sent: it changes nothing in the answer.
        if type(seed) is int:
            rng = self._generators.rng
            _reseed(rng, seed)
            # What random.Random.seed resets beside the C state (a simulator may draw a gauss).
            rng.gauss_next = None  # type: ignore[attr-defined]
        else:
            rng = random.Random(seed)
        last = self._last
        if last is not None and last[0] is system and last[1] is user:
            found = last[2]
        else:
            found = self._read(system, user)
            self._last = (system, user, found)
        if found is None:
            text = "I could not identify the task in this prompt."
            input_tokens = max(1, (len(system) + len(user)) // 4)
            completion = self._completion(text, input_tokens, 12, max_tokens, temperature)
            return completion, "unknown", None, False
        sim = found.sim
        kind: SampleKind
        correct: bool | None = None
        draw = rng.random()
        if draw < self._malformed:
            kind, text = "malformed", sim.render_malformed(found.state, rng)
        else:
            overlong = draw < self._flagged
            p_correct = 1.0 - self._config.overlong_error if overlong else found.p_correct
            correct = rng.random() < p_correct
            answer = found.oracle if correct else None
            if answer is None:
                correct = False
                rivals = found.rivals
                if rivals:
                    answer = rivals[randbelow(rng, len(rivals))]
            if answer is None:
                kind, text, correct = "malformed", sim.render_malformed(found.state, rng), None
            else:
                kind = "overlong" if overlong else "normal"
                text = sim.render(answer, rng)
        if kind == "overlong":
            tokens = 760 + randbelow(rng, 641)  # rng.randint(760, 1400)
        else:
            # rng.gauss(mean, sd) on a generator that has not drawn a gauss yet.
            random_ = rng.random
            x2pi = random_() * _TWOPI
            g2rad = math.sqrt(-2.0 * math.log(1.0 - random_()))
            value = self._tokens_mean + math.cos(x2pi) * g2rad * self._tokens_sd
            # Normal responses stay below the overlong band by definition.
            tokens = int(min(700.0, max(16.0, value)))
        completion = self._completion(text, found.input_tokens, tokens, max_tokens, temperature)
        return completion, kind, correct, found.hard

    def _read(self, system: str, user: str) -> _Reading | None:
        # Every sample of a step sees the same prompt: read it, and draw the state's fixed
        # properties, once per prompt.
        key = (system, user)
        cached = self._readings.get(key)
        if cached is not None:
            self._readings.move_to_end(key)
            return cached
        reading = self._read_uncached(system, user)
        if reading is not None:
            self._readings[key] = reading
            if len(self._readings) > _READING_CACHE:
                self._readings.popitem(last=False)
        return reading

    def _read_uncached(self, system: str, user: str) -> _Reading | None:
        for sim in self._simulators:
            state = sim.read_prompt(system, user)
            if state is not None:
                tokens = max(1, (len(system) + len(user)) // 4)
                return _Reading(sim, state, self.config, self._p, tokens)
        return None

    def _straggles(self, seed: int) -> bool:
        """Whether the request with this seed straggles: its own stream, like the latency's, so
        that turning stragglers on changes no answer and no other request's latency."""
        return random.Random(f"straggler:{seed}").random() < self._straggler_rate

    def _latency(self, seed: int) -> float:
        cfg = self.config
        if self._straggler_rate > 0 and self._straggles(seed):
            return cfg.straggler_s
        if cfg.latency_ms <= 0:
            return 0.0
        # A separate stream, so that turning latency on does not change any answer.
        z = random.Random(f"latency:{seed}").gauss(0.0, 1.0)
        return cfg.latency_ms / 1000.0 * math.exp(cfg.latency_sigma * z)

    def _completion(
        self,
        text: str,
        input_tokens: int,
        output_tokens: int,
        max_tokens: int,
        temperature: float | None,
    ) -> Completion:
        finish_reason = "stop"
        if output_tokens > max_tokens:
            # Cut off at the cap, as a real API does: the answer lines are lost.
            text, finish_reason, output_tokens = text[: len(text) // 3], "length", max_tokens
        return Completion(
            text=text,
            finish_reason=finish_reason,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            model=self._name,
            temperature_sent=temperature,
        )


def offer_simulator(client: object, task: Task[Any, Any]) -> None:
    """Give ``client``, when it is a :class:`SimulatedModel`, the simulator ``task`` offers
    (:meth:`maker.Task.simulator`), if any: what the engine does for every run it starts, so
    that a task of one's own runs on the simulated model as a built-in one does."""
    if isinstance(client, SimulatedModel):
        simulator = task.simulator()
        if simulator is not None:
            client.add_simulator(simulator)
