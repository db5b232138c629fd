"""serve-sim over real HTTP: its three wire formats, its faults, its statistics and its command.

Every server here is started by the test on 127.0.0.1 with an ephemeral port, and stopped by it.
Nothing sleeps to measure time: waits are for conditions the server's statistics report, under
a generous ``fail_after`` so that a hang fails instead of blocking.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import anyio
import pytest
from click.testing import CliRunner

from maker import ConfigError, SimConfig
from maker.apps.serve_sim._serve_sim import (
    DEFAULT_FAULTS,
    DEFAULT_SLOW_S,
    FAULT_KINDS,
    SimServer,
    SimServerConfig,
    SimStats,
    create_app,
    serve_sim,
    serve_sim_command,
)
from maker.tasks import Hanoi, optimal_moves

HANOI = Hanoi(3)
PROMPT = HANOI.prompt(HANOI.initial_state())
FIRST_MOVE = optimal_moves(3)[0]
FORMATS = ("openai", "anthropic", "ollama")
PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages", "ollama": "/api/chat"}
SECRET = "sk-test-SECRET-1234"


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    # The servers are local: a proxy from the environment must not stand in between.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)


def body_for(
    fmt: str,
    *,
    model: str = "gpt-4.1-mini",
    seed: int | None = None,
    max_tokens: int = 1000,
    temperature: float | None = None,
) -> dict[str, Any]:
    """A request for the first step of 3-disk Hanoi in one wire format."""
    if fmt == "anthropic":
        body: dict[str, Any] = {
            "model": model,
            "system": PROMPT.system,
            "messages": [{"role": "user", "content": PROMPT.user}],
            "max_tokens": max_tokens,
        }
        if temperature is not None:
            body["temperature"] = temperature
        return body
    messages = [
        {"role": "system", "content": PROMPT.system},
        {"role": "user", "content": PROMPT.user},
    ]
    if fmt == "openai":
        body = {"model": model, "messages": messages, "max_tokens": max_tokens}
        if seed is not None:
            body["seed"] = seed
        if temperature is not None:
            body["temperature"] = temperature
        return body
    options: dict[str, Any] = {"num_predict": max_tokens}
    if seed is not None:
        options["seed"] = seed
    if temperature is not None:
        options["temperature"] = temperature
    return {"model": model, "messages": messages, "stream": False, "options": options}


def seed_headers(fmt: str, seed: int | None) -> dict[str, str]:
    # Anthropic's body has no seed: the header carries it (any format accepts it).
    return {"x-maker-seed": str(seed)} if fmt == "anthropic" and seed is not None else {}


def text_of(fmt: str, data: dict[str, Any]) -> str:
    if fmt == "openai":
        return str(data["choices"][0]["message"]["content"])
    if fmt == "anthropic":
        return "".join(block["text"] for block in data["content"])
    return str(data["message"]["content"])


def tokens_of(fmt: str, data: dict[str, Any]) -> tuple[int, int]:
    if fmt == "openai":
        return data["usage"]["prompt_tokens"], data["usage"]["completion_tokens"]
    if fmt == "anthropic":
        return data["usage"]["input_tokens"], data["usage"]["output_tokens"]
    return data["prompt_eval_count"], data["eval_count"]


async def post(
    session: aiohttp.ClientSession,
    server: SimServer,
    fmt: str,
    body: dict[str, Any] | bytes,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    url = server.base_url + PATHS[fmt]
    if isinstance(body, bytes):
        request = session.post(url, data=body, headers=headers)
    else:
        request = session.post(url, json=body, headers=headers)
    async with request as response:
        return response.status, dict(response.headers), await response.read()


async def ask(
    session: aiohttp.ClientSession, server: SimServer, fmt: str, **kwargs: Any
) -> dict[str, Any]:
    """One successful request; returns the decoded body."""
    seed = kwargs.get("seed")
    status, _, raw = await post(
        session, server, fmt, body_for(fmt, **kwargs), seed_headers(fmt, seed)
    )
    assert status == 200, raw
    data: dict[str, Any] = json.loads(raw)
    return data


# --- configuration ---------------------------------------------------------------------------


def test_the_default_config_enables_every_fault_kind_but_late_and_no_fault() -> None:
    config = SimServerConfig()
    # Late answers are a delay, not a failure, and came later: only when named.
    assert config.faults == DEFAULT_FAULTS == tuple(k for k in FAULT_KINDS if k != "late")
    assert config.fault_rate == 0.0
    assert config.retry_after_s == 1.0
    assert config.slow_s == DEFAULT_SLOW_S == 150.0
    assert config.sim_config() == SimConfig()


def test_overrides_reach_the_simulated_model() -> None:
    config = SimServerConfig(sim="nano", p=0.5, latency_ms=20.0)
    sim = config.sim_config()
    assert (sim.p, sim.latency_ms, sim.overlong_rate) == (0.5, 20.0, 0.2)
    custom = SimConfig(p=0.9, rivals=3)
    assert SimServerConfig(sim=custom).sim_config() == custom


def test_an_unknown_fault_kind_names_the_field_and_lists_the_known_kinds() -> None:
    with pytest.raises(ConfigError) as info:
        SimServerConfig(fault_rate=0.5, faults=("rate_limit", "timeout"))
    assert info.value.field == "faults"
    assert "'timeout'" in str(info.value)
    for kind in FAULT_KINDS:
        assert kind in str(info.value)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"sim": "gpt-9"}, "sim"),
        ({"p": 1.5}, "p"),
        ({"latency_ms": -1.0}, "latency_ms"),
        ({"latency_ms": float("nan")}, "latency_ms"),
        ({"fault_rate": 1.01}, "fault_rate"),
        ({"fault_rate": -0.1}, "fault_rate"),
        ({"fault_rate": 0.2, "faults": ()}, "faults"),
        ({"faults": "rate_limit"}, "faults"),
        ({"retry_after_s": -1.0}, "retry_after_s"),
        ({"slow_s": 0.0}, "slow_s"),
        ({"seed": 1.5}, "seed"),
        ({"keep_requests": -1}, "keep_requests"),
    ],
)
def test_invalid_values_fail_at_construction_naming_the_field(
    changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        SimServerConfig(**changes)
    assert info.value.field == field


def test_repeated_fault_kinds_count_once() -> None:
    assert SimServerConfig(faults=("slow", "slow", "malformed")).faults == ("slow", "malformed")


# --- the three wire formats -------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", FORMATS)
async def test_each_format_answers_a_hanoi_step_in_its_own_shape(fmt: str) -> None:
    async with serve_sim(SimServerConfig(sim="ideal")) as server, aiohttp.ClientSession() as s:
        data = await ask(s, server, fmt, model="m-1", seed=7)
    assert HANOI.parse(text_of(fmt, data)).move == FIRST_MOVE
    n_in, n_out = tokens_of(fmt, data)
    assert n_in > 0
    assert 16 <= n_out <= 700
    assert data["model"] == "m-1"
    if fmt == "openai":
        assert data["object"] == "chat.completion"
        assert data["choices"][0]["finish_reason"] == "stop"
        assert data["choices"][0]["message"]["role"] == "assistant"
        assert data["usage"]["total_tokens"] == n_in + n_out
        assert isinstance(data["created"], int)
        assert data["id"]
    elif fmt == "anthropic":
        assert (data["type"], data["role"]) == ("message", "assistant")
        assert data["content"][0]["type"] == "text"
        assert data["stop_reason"] == "end_turn"
        assert data["stop_sequence"] is None
        assert data["id"]
    else:
        assert data["done"] is True
        assert data["done_reason"] == "stop"
        assert data["message"]["role"] == "assistant"
        assert data["created_at"].endswith("Z")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fmt", "reason"), [("openai", "length"), ("anthropic", "max_tokens"), ("ollama", "length")]
)
async def test_an_answer_cut_at_the_cap_carries_the_formats_truncation_reason(
    fmt: str, reason: str
) -> None:
    async with serve_sim(SimServerConfig(sim="ideal")) as server, aiohttp.ClientSession() as s:
        data = await ask(s, server, fmt, seed=3, max_tokens=10)
    if fmt == "openai":
        assert data["choices"][0]["finish_reason"] == reason
    elif fmt == "anthropic":
        assert data["stop_reason"] == reason
    else:
        assert data["done_reason"] == reason
    assert tokens_of(fmt, data)[1] == 10


@pytest.mark.anyio
async def test_the_same_seed_gives_the_same_answer_in_every_format() -> None:
    answers: dict[int, set[tuple[str, int, int]]] = {}
    async with serve_sim(SimServerConfig(sim="paper")) as server, aiohttp.ClientSession() as s:
        for seed in (1, 2, 3, 4):
            for fmt in FORMATS:
                data = await ask(s, server, fmt, seed=seed)
                answers.setdefault(seed, set()).add((text_of(fmt, data), *tokens_of(fmt, data)))
        seeds = [r.seed for r in server.stats.requests]
    assert all(len(found) == 1 for found in answers.values()), answers
    # The output token count is drawn from the seed: four seeds cannot all agree by chance.
    assert len({next(iter(found))[2] for found in answers.values()}) > 1
    assert seeds == [seed for seed in (1, 2, 3, 4) for _ in FORMATS]


@pytest.mark.anyio
async def test_requests_without_a_seed_draw_one_from_the_server_seed() -> None:
    async def seeds_of(server_seed: int) -> list[int | None]:
        config = SimServerConfig(sim="ideal", seed=server_seed)
        async with serve_sim(config) as server, aiohttp.ClientSession() as s:
            for fmt in FORMATS:
                await ask(s, server, fmt)
            return [r.seed for r in server.stats.requests]

    first, again, other = await seeds_of(5), await seeds_of(5), await seeds_of(6)
    assert first == again
    assert len(set(first)) == 3
    assert first != other


@pytest.mark.anyio
async def test_keys_are_accepted_ignored_and_never_recorded() -> None:
    headers = {"Authorization": f"Bearer {SECRET}", "x-api-key": SECRET}
    async with serve_sim(SimServerConfig(sim="ideal")) as server, aiohttp.ClientSession() as s:
        for fmt in FORMATS:
            status, _, _ = await post(s, server, fmt, body_for(fmt), headers)
            assert status == 200
        async with s.get(server.base_url + "/sim/stats") as response:
            text = await response.text()
    assert "SECRET" not in text
    assert "SECRET" not in repr(server.stats)


# --- rejected requests ------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("model", ["o1-mini", "reasoning-large"])
async def test_reasoning_models_reject_temperature_as_openai_does(model: str) -> None:
    async with serve_sim(SimServerConfig(sim="ideal")) as server, aiohttp.ClientSession() as s:
        status, _, raw = await post(
            s, server, "openai", body_for("openai", model=model, temperature=0)
        )
        assert status == 400
        assert json.loads(raw) == {
            "error": {
                "message": "Unsupported parameter: 'temperature' is not supported with this model.",
                "type": "invalid_request_error",
                "param": "temperature",
                "code": "unsupported_parameter",
            }
        }
        status, _, _ = await post(s, server, "openai", body_for("openai", model=model))
        assert status == 200
        plain = body_for("openai", model="gpt-4.1", temperature=0.1)
        status, _, _ = await post(s, server, "openai", plain)
        assert status == 200
        stats = server.stats
    assert [(r.status, r.temperature) for r in stats.requests] == [
        (400, 0.0),
        (200, None),
        (200, 0.1),
    ]


@pytest.mark.anyio
async def test_anthropic_versions_from_2026_10_21_reject_sampling_parameters() -> None:
    new = {"anthropic-version": "2026-10-21"}
    old = {"anthropic-version": "2023-06-01"}
    async with serve_sim(SimServerConfig(sim="ideal")) as server, aiohttp.ClientSession() as s:
        status, _, raw = await post(
            s, server, "anthropic", body_for("anthropic", temperature=1.0), new
        )
        assert status == 400
        error = json.loads(raw)
        assert error["type"] == "error"
        assert error["error"]["type"] == "invalid_request_error"
        assert "temperature" in error["error"]["message"]
        status, _, _ = await post(s, server, "anthropic", body_for("anthropic"), new)
        assert status == 200
        status, _, _ = await post(
            s, server, "anthropic", body_for("anthropic", temperature=0.0), old
        )
        assert status == 200
        reasoning = body_for("anthropic", model="reasoning-1", temperature=0.0)
        status, _, raw = await post(s, server, "anthropic", reasoning, old)
        assert status == 400
        assert "temperature" in json.loads(raw)["error"]["message"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fmt", "body"),
    [
        ("openai", b"{not json"),
        ("openai", {"messages": [{"role": "user", "content": "hi"}]}),
        ("openai", {"model": "m", "messages": []}),
        ("openai", {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}),
        ("anthropic", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        (
            "anthropic",
            {"model": "m", "max_tokens": 9, "messages": [{"role": "system", "content": "x"}]},
        ),
        ("ollama", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        ("ollama", {"model": "m", "stream": False, "messages": [{"role": "user", "content": 3}]}),
    ],
)
async def test_invalid_requests_get_a_400_in_the_providers_error_format(
    fmt: str, body: dict[str, Any] | bytes
) -> None:
    async with serve_sim(SimServerConfig(sim="ideal")) as server, aiohttp.ClientSession() as s:
        status, _, raw = await post(s, server, fmt, body)
    assert status == 400
    error = json.loads(raw)
    if fmt == "openai":
        assert error["error"]["type"] == "invalid_request_error"
        assert error["error"]["message"]
    elif fmt == "anthropic":
        assert error["type"] == "error"
        assert error["error"]["type"] == "invalid_request_error"
    else:
        assert isinstance(error["error"], str)


# --- model lookups ------------------------------------------------------------------------------


async def lookup(
    session: aiohttp.ClientSession,
    server: SimServer,
    fmt: str,
    body: dict[str, Any] | str,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """A model lookup as each provider's SDK sends it: ``body`` is the model name, or Ollama's
    whole body."""
    headers = dict(headers or {})
    if fmt == "ollama":
        payload = body if isinstance(body, dict) else {"model": body}
        request = session.post(server.base_url + "/api/show", json=payload, headers=headers)
    else:
        assert isinstance(body, str)
        if fmt == "anthropic":
            headers["anthropic-version"] = "2023-06-01"
        request = session.get(f"{server.base_url}/v1/models/{body}", headers=headers)
    async with request as response:
        return response.status, await response.read()


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", FORMATS)
async def test_model_lookups_know_every_name_and_answer_in_each_providers_shape(fmt: str) -> None:
    name = "org/any-model:7b"
    keys = {"Authorization": f"Bearer {SECRET}", "x-api-key": SECRET}
    async with serve_sim(SimServerConfig(sim="ideal")) as server, aiohttp.ClientSession() as s:
        status, raw = await lookup(s, server, fmt, name, keys)
        stats = server.stats
    assert status == 200, raw
    data = json.loads(raw)
    if fmt == "openai":
        assert data == {"id": name, "object": "model", "created": 0, "owned_by": "serve-sim"}
    elif fmt == "anthropic":
        assert (data["type"], data["id"], data["lifecycle"]) == ("model", name, "active")
        assert data["display_name"] == name
        assert data["created_at"].endswith("Z")
    else:
        assert set(data) >= {"modelfile", "template", "details", "model_info", "capabilities"}
    # A lookup is counted like any request, but draws no answer.
    [seen] = stats.requests
    assert (seen.format, seen.model, seen.status, seen.probe, seen.seed) == (
        fmt,
        name,
        200,
        True,
        None,
    )
    assert "SECRET" not in repr(stats)


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", FORMATS)
async def test_a_status_fault_answers_a_lookup_in_the_providers_error_format(fmt: str) -> None:
    config = SimServerConfig(sim="ideal", fault_rate=1.0, faults=("unavailable",))
    async with serve_sim(config) as server, aiohttp.ClientSession() as s:
        status, raw = await lookup(s, server, fmt, "m")
        stats = server.stats
    assert status == 503
    error = json.loads(raw)
    if fmt == "openai":
        assert set(error["error"]) == {"message", "type", "param", "code"}
    elif fmt == "anthropic":
        assert (error["type"], error["error"]["type"]) == ("error", "api_error")
    else:
        assert isinstance(error["error"], str)
    assert [(r.fault, r.status, r.probe) for r in stats.requests] == [("unavailable", 503, True)]


@pytest.mark.anyio
async def test_an_ollama_lookup_takes_the_older_name_field_and_needs_one() -> None:
    async with serve_sim(SimServerConfig(sim="ideal")) as server, aiohttp.ClientSession() as s:
        named = await lookup(s, server, "ollama", {"name": "llama3"})
        unnamed = await lookup(s, server, "ollama", {})
        stats = server.stats
    assert named[0] == 200
    assert unnamed[0] == 400
    assert isinstance(json.loads(unnamed[1])["error"], str)
    assert [(r.model, r.status) for r in stats.requests] == [("llama3", 200), ("", 400)]


# --- faults -------------------------------------------------------------------------------------

STATUS_FAULTS = {"rate_limit": 429, "server_error": 500, "unavailable": 503, "overloaded": 529}


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", sorted(STATUS_FAULTS))
async def test_status_faults_answer_with_the_providers_error_body(fmt: str, kind: str) -> None:
    config = SimServerConfig(sim="ideal", fault_rate=1.0, faults=(kind,), retry_after_s=2.5)
    async with serve_sim(config) as server, aiohttp.ClientSession() as s:
        status, headers, raw = await post(s, server, fmt, body_for(fmt))
        stats = server.stats
    assert status == STATUS_FAULTS[kind]
    assert (headers.get("Retry-After") == "2.5") == (kind == "rate_limit")
    error = json.loads(raw)
    if fmt == "openai":
        assert set(error["error"]) == {"message", "type", "param", "code"}
    elif fmt == "anthropic":
        assert error["type"] == "error"
        expected = {"rate_limit": "rate_limit_error", "overloaded": "overloaded_error"}
        assert error["error"]["type"] == expected.get(kind, "api_error")
    else:
        assert isinstance(error["error"], str)
    assert [(r.fault, r.status, r.format) for r in stats.requests] == [(kind, status, fmt)]


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", FORMATS)
async def test_a_malformed_fault_is_a_200_whose_body_is_not_json(fmt: str) -> None:
    config = SimServerConfig(sim="ideal", fault_rate=1.0, faults=("malformed",))
    async with serve_sim(config) as server, aiohttp.ClientSession() as s:
        status, headers, raw = await post(s, server, fmt, body_for(fmt))
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert raw
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", FORMATS)
async def test_a_disconnect_fault_closes_the_connection_without_a_response(fmt: str) -> None:
    config = SimServerConfig(sim="ideal", fault_rate=1.0, faults=("disconnect",))
    async with serve_sim(config) as server, aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await post(s, server, fmt, body_for(fmt))
        stats = server.stats
    assert [(r.fault, r.status) for r in stats.requests] == [("disconnect", None)]


@pytest.mark.anyio
async def test_faults_spread_over_the_enabled_kinds_reproducibly() -> None:
    config = SimServerConfig(
        sim="ideal", fault_rate=0.5, faults=("server_error", "unavailable"), seed=11
    )

    async def run() -> SimStats:
        async with serve_sim(config) as server, aiohttp.ClientSession() as s:
            for i in range(120):
                await post(s, server, FORMATS[i % 3], body_for(FORMATS[i % 3]))
            return server.stats

    first, again = await run(), await run()
    faults = first.faults()
    assert set(faults) == {"server_error", "unavailable"}
    # Binomial(120, 0.5): 4.5 standard errors are 25 requests either side of 60.
    assert 35 <= sum(faults.values()) <= 85
    assert 0.25 <= faults["server_error"] / sum(faults.values()) <= 0.75
    assert [r.fault for r in first.requests] == [r.fault for r in again.requests]
    statuses = {r.fault: r.status for r in first.requests}
    assert statuses == {None: 200, "server_error": 500, "unavailable": 503}


@pytest.mark.anyio
async def test_slow_requests_count_in_flight_and_end_when_their_clients_leave() -> None:
    config = SimServerConfig(sim="ideal", fault_rate=1.0, faults=("slow",), slow_s=30.0)
    async with serve_sim(config) as server, aiohttp.ClientSession() as s:

        async def one(fmt: str) -> None:
            await post(s, server, fmt, body_for(fmt))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for fmt in (*FORMATS, "openai"):
                    tg.start_soon(one, fmt)
                await server.wait_until(lambda st: st.in_flight == 4)
                tg.cancel_scope.cancel()
            # The clients closed their connections: the server's handlers end at once.
            await server.wait_until(lambda st: st.in_flight == 0)
        stats = server.stats
    assert stats.max_in_flight == 4
    assert [r.status for r in stats.requests] == [None] * 4
    assert all(r.finished is not None for r in stats.requests)


@pytest.mark.anyio
async def test_stopping_the_server_ends_a_slow_request_at_once() -> None:
    config = SimServerConfig(sim="ideal", fault_rate=1.0, faults=("slow",), slow_s=30.0)
    outcome: list[object] = []
    async with aiohttp.ClientSession() as s:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg, serve_sim(config) as server:

                async def one() -> None:
                    try:
                        outcome.append((await post(s, server, "openai", body_for("openai")))[0])
                    except aiohttp.ClientError as exc:
                        outcome.append(exc)

                tg.start_soon(one)
                await server.wait_until(lambda st: st.in_flight == 1)
            # Leaving serve_sim woke the sleeping handler; the task group waited for the client.
    assert outcome == [503] or isinstance(outcome[0], aiohttp.ClientError)


@pytest.mark.anyio
async def test_latency_is_slept_and_concurrent_requests_overlap() -> None:
    config = SimServerConfig(sim="ideal", latency_ms=200.0)
    async with serve_sim(config) as server, aiohttp.ClientSession() as s:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for fmt in FORMATS:
                    tg.start_soon(ask, s, server, fmt)
                await server.wait_until(lambda st: st.in_flight == 3)
        stats = server.stats
    assert stats.max_in_flight == 3
    assert stats.in_flight == 0
    assert [r.status for r in stats.requests] == [200, 200, 200]


# --- statistics -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_stats_are_served_as_json_and_reset_clears_them() -> None:
    config = SimServerConfig(sim="ideal", fault_rate=0.5, faults=("server_error",), seed=3)
    async with serve_sim(config) as server, aiohttp.ClientSession() as s:
        for fmt in FORMATS * 2:
            await post(s, server, fmt, body_for(fmt, model=f"{fmt}-model"))
        before = server.stats
        async with s.get(server.base_url + "/sim/stats") as response:
            served = await response.json()
        async with s.post(server.base_url + "/sim/reset") as response:
            assert response.status == 200
        after_reset = server.stats
        for fmt in FORMATS * 2:
            await post(s, server, fmt, body_for(fmt))
        replay = server.stats
    assert served["config"] == config.describe()
    del served["config"]
    assert served == before.to_json()
    assert served["total"] == 6
    assert [r["format"] for r in served["requests"]] == list(FORMATS * 2)
    assert [r["model"] for r in served["requests"]] == [f"{f}-model" for f in FORMATS * 2]
    assert served["faults"] == dict(before.faults())
    assert (after_reset.total, after_reset.in_flight, after_reset.max_in_flight) == (0, 0, 0)
    # A reset server draws the same faults as a fresh one.
    assert [r.fault for r in replay.requests] == [r.fault for r in before.requests]


@pytest.mark.anyio
async def test_only_the_latest_requests_are_kept_but_every_one_is_counted() -> None:
    config = SimServerConfig(sim="ideal", fault_rate=0.5, faults=("unavailable",), keep_requests=2)
    async with serve_sim(config) as server, aiohttp.ClientSession() as s:
        statuses = [(await post(s, server, "ollama", body_for("ollama")))[0] for _ in range(9)]
        stats = server.stats
    assert [r.index for r in stats.requests] == [7, 8]
    assert stats.total == 9
    assert stats.faults() == {"unavailable": statuses.count(503)}
    assert stats.statuses() == {200: statuses.count(200), 503: statuses.count(503)}
    assert 0 < statuses.count(503) < 9
    assert stats.to_json()["statuses"] == {
        str(code): n for code, n in sorted(stats.statuses().items())
    }


@pytest.mark.anyio
async def test_arrivals_are_stamped_by_the_injected_clock() -> None:
    ticks = iter(range(100, 200))

    def clock() -> float:
        return float(next(ticks))

    async with serve_sim(SimServerConfig(sim="ideal"), clock=clock) as server:
        async with aiohttp.ClientSession() as s:
            for fmt in FORMATS:
                await ask(s, server, fmt)
        stats = server.stats
    assert [(r.arrived, r.finished) for r in stats.requests] == [
        (100.0, 101.0),
        (102.0, 103.0),
        (104.0, 105.0),
    ]
    assert [r.index for r in stats.requests] == [0, 1, 2]


@pytest.mark.anyio
async def test_create_app_runs_under_any_aiohttp_runner() -> None:
    from aiohttp import web

    runner = web.AppRunner(create_app(SimServerConfig(sim="ideal")))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with aiohttp.ClientSession() as s:
            async with s.post(url + PATHS["ollama"], json=body_for("ollama")) as response:
                assert response.status == 200
            async with s.get(url + "/sim/stats") as response:
                assert (await response.json())["total"] == 1
    finally:
        await runner.cleanup()


# --- the command --------------------------------------------------------------------------------


def test_the_command_rejects_an_unknown_fault_kind_with_the_known_ones() -> None:
    result = CliRunner().invoke(serve_sim_command, ["--faults", "rate_limit,bogus"])
    assert result.exit_code == 2
    assert "--faults" in result.output
    assert "'bogus'" in result.output
    assert "disconnect" in result.output


def test_the_command_documents_its_options() -> None:
    result = CliRunner().invoke(serve_sim_command, ["--help"])
    assert result.exit_code == 0
    for option in (
        "--port",
        "--host",
        "--p",
        "--latency-ms",
        "--fault-rate",
        "--faults",
        "--retry-after",
        "--slow-s",
        "--seed",
        "--preset",
    ):
        assert option in result.output


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
def command_process() -> Iterator[subprocess.Popen[str]]:
    code = (
        "from maker.apps.serve_sim._serve_sim import serve_sim_command; "
        "serve_sim_command(['--port', '0', '--preset', 'ideal', '--fault-rate', '0'])"
    )
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_the_command_serves_until_interrupted(
    command_process: subprocess.Popen[str], stop: signal.Signals
) -> None:
    assert command_process.stderr is not None
    line = _read_line(command_process.stderr, timeout=20)
    assert line.startswith("maker serve-sim: listening on http://127.0.0.1:")
    base = line.split("listening on ", 1)[1].split(" ", 1)[0]
    assert f"OpenAI: {base}/v1" in line
    with urllib.request.urlopen(base + "/sim/stats", timeout=10) as response:
        assert json.loads(response.read())["total"] == 0
    command_process.send_signal(stop)
    assert command_process.wait(timeout=10) == 0
    assert command_process.stderr.read() == ""


def test_a_slow_fault_outlasts_the_default_timeout_of_a_call() -> None:
    """What the README promises: with the client's default timeout, a slow fault is a timeout
    (retried), not an answer that arrives late; the command's default is the config's."""
    from maker.engine import Limits

    timeout = Limits().timeout_s
    assert timeout is not None
    assert SimServerConfig().slow_s == DEFAULT_SLOW_S > timeout
    (slow,) = [p for p in serve_sim_command.params if p.name == "slow_s"]
    assert slow.default == DEFAULT_SLOW_S
