"""Stragglers offline: the simulated model's ``straggler_rate`` and serve-sim's ``late`` fault.

A straggler answers what it would have answered on time, only late. In the simulated model
whether a call straggles is fixed by its seed, like its latency; in serve-sim a ``late`` fault is
drawn like any other fault. Delays are measured with the model's own figures and the server's
clock (its statistics), not with sleeps of the test.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from events import RunStarted, SampleReceived
from maker import ConfigError, Engine, Policy, SampleRequest, SimConfig, SimulatedModel
from maker.apps.serve_sim._serve_sim import (
    DEFAULT_FAULTS,
    DEFAULT_LATE_S,
    FAULT_KINDS,
    SimServerConfig,
    serve_sim,
)
from maker.clients import OpenAIClient
from maker.engine import Limits
from maker.tasks import Hanoi, optimal_moves
from replay import client_for, load_events, verify_run

from ._cli import MAKER, maker, one_error_line

HANOI = Hanoi(4)
PROMPT = HANOI.prompt(HANOI.initial_state())
FIRST_MOVE = optimal_moves(4)[0]
Z = 4.5
"""Standard errors of tolerance of the rate checks (as in test_sim.py): a correct model fails
one with probability below 1e-5 for a fresh seed, and every draw here is seeded."""


def request(seed: int, max_tokens: int = 1000) -> SampleRequest:
    return SampleRequest(
        sample_id=f"0:{seed}",
        step=0,
        model="sim",
        system=PROMPT.system,
        user=PROMPT.user,
        temperature=0.1,
        max_tokens=max_tokens,
        seed=seed,
    )


def respond(model: SimulatedModel, seed: int) -> Any:
    return model.respond(PROMPT.system, PROMPT.user, max_tokens=1000, seed=seed)


# --- the simulated model -------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.02, 0.3])
def test_the_straggler_rate_is_honoured_over_many_seeds(rate: float) -> None:
    # 20,000 seeds: the share of stragglers is binomial, SE = sqrt(rate (1 - rate) / n): 0.00099
    # at 2% (tolerance +-0.0045) and 0.0032 at 30% (+-0.015). A rate ignored (0), its complement
    # or a rate applied twice (rate**2) lands many tolerances away.
    n = 20_000
    model = SimulatedModel(SimConfig(latency_ms=20.0, straggler_rate=rate, straggler_s=30.0))
    hits = sum(respond(model, seed).latency_s == 30.0 for seed in range(n))
    se = math.sqrt(rate * (1.0 - rate) / n)
    assert abs(hits / n - rate) <= Z * se, (hits / n, rate, Z * se)


def test_a_straggler_answers_what_it_would_have_only_after_straggler_s() -> None:
    config = SimConfig(p=0.7, malformed_rate=0.1, overlong_rate=0.1, latency_ms=20.0)
    on_time = SimulatedModel(config)
    straggling = SimulatedModel(config.replace(straggler_rate=0.25, straggler_s=7.5))
    late = 0
    for seed in range(2000):
        a, b = respond(on_time, seed), respond(straggling, seed)
        # The answer, its kind and its tokens are those of the same request on time.
        assert b.completion == a.completion
        assert (b.kind, b.correct, b.hard) == (a.kind, a.correct, a.hard)
        if b.latency_s == 7.5:
            late += 1
        else:
            assert b.latency_s == a.latency_s  # the others keep their own latency
    assert 400 <= late <= 600  # about a quarter (SE 19, the band is +-5 SE)


def test_straggling_is_a_function_of_the_seed_alone() -> None:
    config = SimConfig(latency_ms=1.0, straggler_rate=0.1, straggler_s=2.0)
    first = [respond(SimulatedModel(config), seed).latency_s == 2.0 for seed in range(3000)]
    again = [respond(SimulatedModel(config), seed).latency_s == 2.0 for seed in range(3000)]
    assert first == again
    # Another prompt, another salt: the same seeds straggle (the draw is the request's own).
    other = SimulatedModel(config.replace(salt=9))
    prompt = Hanoi(6).prompt(Hanoi(6).initial_state())
    elsewhere = [
        other.respond(prompt.system, prompt.user, max_tokens=1000, seed=seed).latency_s == 2.0
        for seed in range(3000)
    ]
    assert elsewhere == first
    assert 200 <= sum(first) <= 400


def test_stragglers_never_answer_at_once() -> None:
    # Without latency, only the stragglers wait: complete_now answers the others at once, and
    # the model is not in-process (the scheduler's timeout applies to its calls).
    model = SimulatedModel(SimConfig(straggler_rate=0.3, straggler_s=5.0))
    assert not model.in_process
    assert SimulatedModel(SimConfig()).in_process
    waited = 0
    for seed in range(300):
        answer = model.complete_now(request(seed))
        response = respond(model, seed)
        if response.latency_s == 5.0:
            assert answer is None
            waited += 1
        else:
            assert response.latency_s == 0.0
            assert answer is not None
            assert answer.text == response.completion.text
    assert 50 <= waited <= 130


@pytest.mark.anyio
async def test_complete_waits_straggler_s_for_a_straggler() -> None:
    model = SimulatedModel(SimConfig(p=1.0, straggler_rate=1.0, straggler_s=0.2))
    began = anyio.current_time()
    with anyio.fail_after(10):
        completion = await model.complete(request(3))
    assert anyio.current_time() - began >= 0.2
    assert HANOI.parse(completion.text).move == FIRST_MOVE
    assert completion.text == respond(SimulatedModel(SimConfig(p=1.0)), 3).completion.text


def test_stragglers_are_described_only_when_on() -> None:
    assert "straggler_rate" not in SimConfig().describe()
    assert "straggler_s" not in SimConfig(latency_ms=3.0).describe()
    described = SimConfig(straggler_rate=0.02, straggler_s=4.0).describe()
    assert (described["straggler_rate"], described["straggler_s"]) == (0.02, 4.0)
    assert json.loads(json.dumps(described)) == described


@pytest.mark.anyio
async def test_a_run_with_stragglers_records_them_and_replays(tmp_path: Path) -> None:
    config = SimConfig(p=0.9, latency_ms=1.0, straggler_rate=0.2, straggler_s=0.05)
    log = tmp_path / "run.db"
    async with Engine(log=log, client=SimulatedModel(config)) as engine:
        result = await engine.run(HANOI, policy=Policy(k=2), seed=5)
    assert result.ok, result.reason
    events = await load_events(log)
    started = next(e for e in events if isinstance(e, RunStarted))
    assert started.model_params["straggler_rate"] == 0.2
    # The model rebuilt from the log is the one the run used (resume and replay rely on it).
    rebuilt = client_for(started)
    assert isinstance(rebuilt, SimulatedModel)
    assert rebuilt.config == config
    # Stragglers happened and were waited for (answered within the default 120 s timeout).
    received = [e for e in events if isinstance(e, SampleReceived)]
    assert any(e.latency_s >= 0.05 for e in received)
    verified = await verify_run(log)
    assert verified.ok, verified.divergence


# --- serve-sim's late fault -------------------------------------------------------------------


def test_late_is_a_fault_kind_but_not_a_default_one() -> None:
    assert "late" in FAULT_KINDS
    assert FAULT_KINDS[-1] == "late"  # appended: the draws over the other kinds are unchanged
    assert "late" not in DEFAULT_FAULTS
    assert SimServerConfig().faults == DEFAULT_FAULTS
    assert SimServerConfig().late_s == DEFAULT_LATE_S == 30.0
    # Below the default timeout of a call: by default a late answer is a straggler.
    timeout = Limits().timeout_s
    assert timeout is not None
    assert timeout > DEFAULT_LATE_S
    assert SimServerConfig(fault_rate=0.1, faults=("late",)).faults == ("late",)


@pytest.mark.parametrize("value", [0.0, -1.0, math.inf, math.nan, "1"])
def test_a_bad_late_s_is_one_config_error_naming_the_field(value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        SimServerConfig(late_s=value)
    assert info.value.field == "late_s"
    assert str(info.value).startswith("late_s: ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"straggler_rate": 1.01}, "straggler_rate"), ({"straggler_s": -2.0}, "straggler_s")],
)
def test_a_bad_straggler_value_is_one_config_error_naming_the_field(
    changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        SimConfig(**changes)
    assert str(info.value).startswith(f"{field}: ")
    assert "\n" not in str(info.value)


@pytest.mark.anyio
async def test_late_faults_answer_correctly_after_late_s_instead_of_their_latency() -> None:
    # The model's latency is 5 s without spread; a late answer comes after late_s (0.2 s)
    # instead, and is the answer the model gives that seed.
    sim = SimConfig(p=0.8, latency_ms=5000.0, latency_sigma=0.0)
    config = SimServerConfig(sim=sim, fault_rate=1.0, faults=("late",), late_s=0.2, seed=3)
    async with serve_sim(config) as server:
        async with OpenAIClient(
            "gpt-4.1-mini", api_key="sk-test", base_url=server.base_url + "/v1", timeout=10.0
        ) as client:
            with anyio.fail_after(20):
                completions = []
                async with anyio.create_task_group() as tg:

                    async def one(seed: int) -> None:
                        completions.append((seed, await client.complete(request(seed))))

                    for seed in range(6):
                        tg.start_soon(one, seed)
        stats = server.stats
    assert stats.faults() == {"late": 6}
    assert stats.statuses() == {200: 6}
    model = SimulatedModel(sim)
    for seed, completion in completions:
        assert completion.text == respond(model, seed).completion.text
    for record in stats.requests:
        assert record.fault == "late"
        assert record.status == 200
        assert record.finished is not None
        took = record.finished - record.arrived
        assert 0.2 <= took < 5.0, took


@pytest.mark.anyio
async def test_late_faults_come_at_their_rate_among_the_others() -> None:
    config = SimServerConfig(
        sim="ideal", fault_rate=0.5, faults=("late", "server_error"), late_s=0.05, seed=11
    )
    async with serve_sim(config) as server:
        async with OpenAIClient(
            "gpt-4.1-mini", api_key="sk-test", base_url=server.base_url + "/v1", timeout=10.0
        ) as client:
            answered = 0
            with anyio.fail_after(60):
                for seed in range(40):
                    try:
                        completion = await client.complete(request(seed))
                    except Exception:  # the server_error faults
                        continue
                    answered += 1
                    assert HANOI.parse(completion.text).move == FIRST_MOVE
        stats = server.stats
    faults = stats.faults()
    assert set(faults) == {"late", "server_error"}
    assert stats.statuses()[200] == answered == 40 - faults["server_error"]
    for record in stats.requests:
        assert record.finished is not None
        if record.fault == "late":
            assert record.finished - record.arrived >= 0.05


# --- the command ----------------------------------------------------------------------------


def test_the_command_rejects_a_bad_late_s_in_one_line(tmp_path: Path) -> None:
    line = one_error_line(maker(tmp_path, "serve-sim", "--port", "0", "--late-s", "0"))
    assert "--late-s" in line


def test_the_command_names_late_among_the_fault_kinds(tmp_path: Path) -> None:
    done = maker(tmp_path, "serve-sim", "--help")
    assert done.returncode == 0, done.stderr
    assert "--late-s" in done.stdout
    assert "late" in done.stdout.split("--faults", 1)[1]


def _read_line(stream: Any, timeout: float) -> str:
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    try:
        if not selector.select(timeout):
            raise AssertionError(f"no line within {timeout} s")
        return str(stream.readline())
    finally:
        selector.close()


@pytest.fixture
def late_server() -> Iterator[str]:
    """``maker serve-sim`` with every request late by 0.2 s, on an ephemeral port: its root."""
    args = ["serve-sim", "--port", "0", "--preset", "ideal", "--fault-rate", "1"]
    args += ["--faults", "late", "--late-s", "0.2", "--latency-ms", "4000"]
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    proc = subprocess.Popen([*MAKER, *args], stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        line = _read_line(proc.stderr, timeout=30)
        assert line.startswith("maker serve-sim: listening on http://127.0.0.1:"), line
        yield line.split("listening on ", 1)[1].split(" ", 1)[0]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()


def test_the_late_s_flag_works_end_to_end(late_server: str) -> None:
    body = {
        "model": "gpt-4.1-mini",
        "messages": [
            {"role": "system", "content": PROMPT.system},
            {"role": "user", "content": PROMPT.user},
        ],
        "max_tokens": 1000,
        "seed": 4,
    }
    post = urllib.request.Request(
        late_server + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(post, timeout=20) as response:
        answer = json.loads(response.read())
    text = answer["choices"][0]["message"]["content"]
    assert HANOI.parse(text).move == FIRST_MOVE
    with urllib.request.urlopen(late_server + "/sim/stats", timeout=10) as response:
        stats = json.loads(response.read())
    assert stats["config"]["late_s"] == 0.2
    assert stats["config"]["faults"] == ["late"]
    assert stats["faults"] == {"late": 1}
    (record,) = stats["requests"]
    assert record["status"] == 200
    # Late by late_s, instead of the 4 s latency the model would otherwise take.
    assert 0.2 <= record["finished"] - record["arrived"] < 4.0
