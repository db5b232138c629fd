"""The provider clients, driving the real SDKs against serve-sim (and a few stub servers).

Every server is started here on 127.0.0.1 with an ephemeral port and stopped by its test. No
test sleeps to measure time; the timeout tests only bound how long a timeout may take.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

from events import EventLog, SampleFailed, SampleReceived
from maker import (
    Client,
    ClientError,
    Completion,
    ConfigError,
    Engine,
    Policy,
    Probe,
    SampleRequest,
    SimConfig,
    SimulatedModel,
)
from maker.apps.serve_sim._serve_sim import FAULT_KINDS, SimServer, SimServerConfig, serve_sim
from maker.clients import (
    ERROR_KINDS,
    AnthropicClient,
    OllamaClient,
    OpenAIClient,
    Transport,
    classify_status,
    make_client,
    parse_retry_after,
)
from maker.tasks import Hanoi, optimal_moves

KEY = "sk-test-SECRET-1234"
HANOI = Hanoi(3)
PROMPT = HANOI.prompt(HANOI.initial_state())
FIRST_MOVE = optimal_moves(3)[0]
FORMATS = ("openai", "anthropic", "ollama")
AnyClient = OpenAIClient | AnthropicClient | OllamaClient


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The servers are local: no proxy may stand in between, and no real key or base URL may
    # leak in from the environment.
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "OPENAI_ADMIN_KEY",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "ANTHROPIC_BASE_URL",
    ):
        monkeypatch.delenv(name, raising=False)


def request(seed: int = 7, *, temperature: float = 0.1, max_tokens: int = 1000) -> SampleRequest:
    return SampleRequest(
        sample_id="0:0",
        step=0,
        model="whatever",
        system=PROMPT.system,
        user=PROMPT.user,
        temperature=temperature,
        max_tokens=max_tokens,
        seed=seed,
    )


def client_for(
    fmt: str,
    base_url: str,
    *,
    model: str | None = None,
    timeout: float = 10.0,
    transport: Transport | None = None,
) -> AnyClient:
    """A real client of ``fmt`` pointed at a server's root URL; ``transport`` for the SDKs'."""
    if fmt == "openai":
        return OpenAIClient(
            model or "gpt-4.1-mini",
            api_key=KEY,
            base_url=base_url + "/v1",
            timeout=timeout,
            transport=transport,
        )
    if fmt == "anthropic":
        return AnthropicClient(
            model or "claude-haiku-4-5",
            api_key=KEY,
            base_url=base_url,
            timeout=timeout,
            transport=transport,
        )
    return OllamaClient(model or "llama3.1:8b", base_url=base_url, timeout=timeout)


@asynccontextmanager
async def served(
    fmt: str, config: SimServerConfig, **kwargs: Any
) -> AsyncIterator[tuple[SimServer, AnyClient]]:
    async with serve_sim(config) as server, client_for(fmt, server.base_url, **kwargs) as client:
        yield server, client


@asynccontextmanager
async def stub(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """A one-handler HTTP server for the cases serve-sim does not simulate; yields its root."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def assert_no_key(*texts: object) -> None:
    for text in texts:
        assert "SECRET" not in str(text), text


# --- answers ----------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", FORMATS)
async def test_each_client_gets_a_correct_hanoi_answer_with_its_token_counts(fmt: str) -> None:
    async with served(fmt, SimServerConfig(sim="ideal")) as (server, client):
        completion = await client.complete(request(seed=42))
        stats = server.stats
    assert isinstance(client, Client)
    assert HANOI.parse(completion.text).move == FIRST_MOVE
    assert completion.finish_reason == ("end_turn" if fmt == "anthropic" else "stop")
    assert completion.input_tokens == (len(PROMPT.system) + len(PROMPT.user)) // 4
    assert 16 <= completion.output_tokens <= 700
    assert completion.model == client.model
    assert client.model.startswith(f"{fmt}:")
    # Anthropic's API version rejects temperature, so none is sent there by default.
    assert completion.temperature_sent == (None if fmt == "anthropic" else 0.1)
    [seen] = stats.requests
    assert (seen.format, seen.model, seen.status, seen.seed) == (fmt, client.name, 200, 42)
    assert seen.temperature == completion.temperature_sent


@pytest.mark.anyio
async def test_the_same_seed_gives_the_same_completion_through_every_client() -> None:
    results: dict[str, list[tuple[str, int, int]]] = {}
    async with serve_sim(SimServerConfig(sim="paper")) as server:
        for fmt in FORMATS:
            async with client_for(fmt, server.base_url) as client:
                results[fmt] = []
                for seed in (1, 2, 3):
                    c = await client.complete(request(seed=seed))
                    results[fmt].append((c.text, c.input_tokens, c.output_tokens))
    assert results["openai"] == results["anthropic"] == results["ollama"]
    assert len({tokens for _, _, tokens in results["openai"]}) > 1


@pytest.mark.anyio
@pytest.mark.parametrize(("fmt", "reason"), [("openai", "length"), ("anthropic", "max_tokens")])
async def test_an_answer_cut_at_the_cap_reports_the_providers_reason(fmt: str, reason: str) -> None:
    async with served(fmt, SimServerConfig(sim="ideal")) as (_, client):
        completion = await client.complete(request(max_tokens=12))
    assert (completion.finish_reason, completion.output_tokens) == (reason, 12)


# --- faults -----------------------------------------------------------------------------------

EXPECTED = {
    "rate_limit": ("rate_limited", 2.5),
    "server_error": ("server_error", None),
    "unavailable": ("unavailable", None),
    "overloaded": ("overloaded", None),
    "malformed": ("bad_response", None),
    "disconnect": ("connection", None),
}


def test_every_fault_kind_but_slow_and_late_has_an_expected_mapping() -> None:
    # slow ends in the client's timeout; late is an answer (tests/maker/test_stragglers.py).
    assert set(EXPECTED) | {"slow", "late"} == set(FAULT_KINDS)
    assert {kind for kind, _ in EXPECTED.values()} | {"timeout"} <= set(ERROR_KINDS)


# Each SDK under both of its transports: aiohttp (the default) and its own httpx pool.
TRANSPORT_CASES = [
    pytest.param(fmt, transport, id=f"{fmt}-{transport}" if transport else fmt)
    for fmt in FORMATS
    for transport in (("aiohttp", "httpx") if fmt != "ollama" else (None,))
]


@pytest.mark.anyio
@pytest.mark.parametrize(("fmt", "transport"), TRANSPORT_CASES)
@pytest.mark.parametrize("fault", sorted(EXPECTED))
async def test_each_injected_fault_becomes_its_retryable_client_error(
    fmt: str, transport: Transport | None, fault: str
) -> None:
    config = SimServerConfig(sim="ideal", fault_rate=1.0, faults=(fault,), retry_after_s=2.5)
    async with served(fmt, config, transport=transport) as (server, client):
        with pytest.raises(ClientError) as info:
            await client.complete(request())
        stats = server.stats
    kind, retry_after = EXPECTED[fault]
    error = info.value
    assert (error.kind, error.retryable, error.retry_after) == (kind, True, retry_after)
    if fmt != "ollama" or fault in ("malformed", "disconnect"):
        # A foreign exception, mapped at the boundary with "raise ... from". (The Ollama client
        # reads HTTP statuses itself: there is no foreign exception to chain.)
        assert error.__cause__ is not None
    assert str(error).startswith(f"{fmt}: ")
    assert_no_key(error, repr(error))
    assert [r.fault for r in stats.requests] == [fault]


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", FORMATS)
async def test_a_slow_answer_times_out_quickly_and_the_server_sees_the_client_leave(
    fmt: str,
) -> None:
    config = SimServerConfig(sim="ideal", fault_rate=1.0, faults=("slow",), slow_s=30.0)
    async with served(fmt, config, timeout=0.3) as (server, client):
        with anyio.fail_after(3), pytest.raises(ClientError) as info:
            await client.complete(request())
        with anyio.fail_after(3):
            stats = await server.wait_until(lambda s: s.in_flight == 0)
    assert (info.value.kind, info.value.retryable) == ("timeout", True)
    assert "0.3 s" in str(info.value)
    assert [(r.fault, r.status) for r in stats.requests] == [("slow", None)]


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", FORMATS)
async def test_a_refused_connection_is_a_retryable_connection_error(fmt: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port any more.
    async with client_for(fmt, f"http://127.0.0.1:{port}", timeout=5.0) as client:
        with anyio.fail_after(5), pytest.raises(ClientError) as info:
            await client.complete(request())
    assert (info.value.kind, info.value.retryable) == ("connection", True)
    assert_no_key(info.value)


def wrong_base_url(fmt: str, server: SimServer) -> AnyClient:
    """A client of ``fmt`` whose base URL reaches serve-sim but none of its routes."""
    # The OpenAI SDK wants ".../v1": the bare root misses every route.
    base = server.base_url + ("/nowhere" if fmt != "openai" else "")
    if fmt == "openai":
        return OpenAIClient("gpt-4.1", api_key=KEY, base_url=base)
    return client_for(fmt, base)


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", FORMATS)
async def test_a_wrong_path_is_a_bad_request_that_is_not_retried(fmt: str) -> None:
    async with serve_sim(SimServerConfig(sim="ideal")) as server:
        client = wrong_base_url(fmt, server)
        async with client:
            with pytest.raises(ClientError) as info:
                await client.complete(request())
    assert (info.value.kind, info.value.retryable, info.value.retry_after) == (
        "bad_request",
        False,
        None,
    )
    assert "404" in str(info.value)


# --- temperature and max_tokens ---------------------------------------------------------------


@pytest.mark.anyio
async def test_openai_drops_a_rejected_temperature_once_and_remembers() -> None:
    async with served("openai", SimServerConfig(sim="ideal"), model="o1-mini") as (server, client):
        first = await client.complete(request(temperature=0.0))
        second = await client.complete(request(temperature=0.1))
        stats = server.stats
    assert HANOI.parse(first.text).move == FIRST_MOVE
    assert (first.temperature_sent, second.temperature_sent) == (None, None)
    # One rejected request, then the same without temperature; the second call goes straight.
    assert [(r.status, r.temperature) for r in stats.requests] == [
        (400, 0.0),
        (200, None),
        (200, None),
    ]


@pytest.mark.anyio
async def test_anthropic_sends_temperature_only_when_asked_and_drops_it_when_rejected() -> None:
    async with serve_sim(SimServerConfig(sim="ideal")) as server:
        async with AnthropicClient(
            "claude-x", api_key=KEY, base_url=server.base_url, send_temperature=True
        ) as client:
            first = await client.complete(request(temperature=0.0))
            second = await client.complete(request(temperature=0.1))
        stats = server.stats
    assert (first.temperature_sent, second.temperature_sent) == (None, None)
    # serve-sim, like the API version the SDK speaks, rejects any temperature.
    assert [(r.status, r.temperature) for r in stats.requests] == [
        (400, 0.0),
        (200, None),
        (200, None),
    ]


@pytest.mark.anyio
async def test_openai_switches_to_max_completion_tokens_when_max_tokens_is_rejected() -> None:
    bodies: list[dict[str, Any]] = []

    async def handler(http: web.Request) -> web.StreamResponse:
        body = await http.json()
        bodies.append(body)
        if "max_tokens" in body:
            error = {
                "message": "Unsupported parameter: 'max_tokens' is not supported with this "
                "model. Use 'max_completion_tokens' instead.",
                "type": "invalid_request_error",
                "param": "max_tokens",
                "code": "unsupported_parameter",
            }
            return web.json_response({"error": error}, status=400)
        return web.json_response(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "gpt-5-2025-08-07",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hello"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            }
        )

    async with (
        stub(handler) as base,
        OpenAIClient("gpt-5", api_key=KEY, base_url=base + "/v1") as client,
    ):
        first = await client.complete(request(max_tokens=800))
        await client.complete(request(max_tokens=800))
    assert first == Completion(
        text="hello",
        finish_reason="stop",
        input_tokens=3,
        output_tokens=1,
        model="openai:gpt-5-2025-08-07",
        temperature_sent=0.1,
        response_id="x",  # the id the server sent
    )
    assert [("max_tokens" in b, b.get("max_completion_tokens")) for b in bodies] == [
        (True, None),
        (False, 800),
        (False, 800),
    ]


# --- keys ---------------------------------------------------------------------------------------


async def _echo_credentials(http: web.Request) -> web.StreamResponse:
    # The worst server: its error message repeats the credentials it was sent.
    seen = f"{http.headers.get('Authorization')} {http.headers.get('x-api-key')}"
    if http.path.endswith("/messages"):
        body: dict[str, Any] = {
            "type": "error",
            "error": {"type": "authentication_error", "message": f"invalid key {seen}"},
        }
    else:
        body = {"error": {"message": f"Incorrect API key provided: {seen}", "type": "x"}}
    return web.json_response(body, status=401)


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", ["openai", "anthropic"])
async def test_a_key_never_appears_in_describe_repr_or_errors(fmt: str) -> None:
    async with stub(_echo_credentials) as base, client_for(fmt, base) as client:
        with pytest.raises(ClientError) as info:
            await client.complete(request())
        described = client.describe()
    assert (info.value.kind, info.value.retryable) == ("auth", False)
    assert "401" in str(info.value)
    assert_no_key(info.value, repr(client), json.dumps(described))
    assert set(described) == {"provider", "model", "base_url", "timeout", "transport"}
    assert described["transport"] == "aiohttp"
    assert described["provider"] == fmt
    assert described["base_url"].startswith(base)


@pytest.mark.anyio
async def test_the_key_may_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    async with (
        serve_sim(SimServerConfig(sim="ideal")) as server,
        OpenAIClient("gpt-4.1", base_url=server.base_url + "/v1") as openai_client,
        AnthropicClient("claude-haiku-4-5", base_url=server.base_url) as anthropic_client,
    ):
        for client in (openai_client, anthropic_client):
            completion = await client.complete(request())
            assert HANOI.parse(completion.text).move == FIRST_MOVE
            assert_no_key(repr(client), client.describe())


@pytest.mark.parametrize(
    ("cls", "variable"), [(OpenAIClient, "OPENAI_API_KEY"), (AnthropicClient, "ANTHROPIC_API_KEY")]
)
def test_a_missing_key_is_a_config_error_that_names_the_variable(
    cls: type[OpenAIClient] | type[AnthropicClient], variable: str
) -> None:
    with pytest.raises(ConfigError) as info:
        cls("some-model")
    assert info.value.field == "api_key"
    assert variable in str(info.value)
    with pytest.raises(ConfigError):
        cls("some-model", api_key="")


# --- construction and specs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: OpenAIClient("", api_key=KEY), "model"),
        (lambda: AnthropicClient("  ", api_key=KEY), "model"),
        (lambda: OllamaClient(""), "model"),
        (lambda: OpenAIClient("m", api_key=KEY, timeout=0), "timeout"),
        (lambda: OllamaClient("m", timeout=-1.0), "timeout"),
    ],
)
def test_invalid_arguments_fail_at_construction(make: Callable[[], object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        make()
    assert info.value.field == field


@pytest.mark.anyio
async def test_make_client_builds_each_provider() -> None:
    sim = make_client("sim", sim=SimConfig(p=0.5))
    assert isinstance(sim, SimulatedModel)
    assert sim.config.p == 0.5
    built = [
        make_client("openai:gpt-4.1-mini", api_key=KEY, base_url="http://127.0.0.1:9/v1"),
        make_client("anthropic:claude-sonnet-4-5", api_key=KEY, timeout=5.0),
        make_client("ollama:llama3.1:8b", base_url="http://127.0.0.1:9"),
    ]
    assert [c.model for c in built] == [
        "openai:gpt-4.1-mini",
        "anthropic:claude-sonnet-4-5",
        "ollama:llama3.1:8b",
    ]
    assert [type(c) for c in built] == [OpenAIClient, AnthropicClient, OllamaClient]
    assert built[1].describe()["timeout"] == 5.0
    for client in built:
        assert isinstance(client, AnyClient)
        await client.aclose()


@pytest.mark.parametrize(
    ("spec", "kwargs", "field"),
    [
        ("gemini:pro", {}, "model"),
        ("gpt-4.1", {}, "model"),
        ("", {}, "model"),
        ("openai:", {"api_key": KEY}, "model"),
        ("ollama: ", {}, "model"),
        ("sim", {"base_url": "http://x"}, "base_url"),
        ("sim", {"api_key": KEY}, "api_key"),
        ("ollama:llama3", {"api_key": KEY}, "api_key"),
        ("openai:gpt-4.1", {"api_key": KEY, "sim": SimConfig()}, "sim"),
        ("openai:gpt-4.1", {}, "api_key"),
    ],
)
def test_make_client_rejects_bad_specs_naming_the_field(
    spec: str, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        make_client(spec, **kwargs)
    assert info.value.field == field
    assert_no_key(info.value)


@pytest.mark.parametrize(
    ("spec", "module", "extra"),
    [
        ("openai:gpt-4.1", "openai", "openai"),
        ("anthropic:claude-haiku-4-5", "anthropic", "anthropic"),
        ("ollama:llama3", "aiohttp", "ollama"),
    ],
)
def test_a_missing_sdk_is_a_one_line_config_error_with_the_install_hint(
    monkeypatch: pytest.MonkeyPatch, spec: str, module: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes "import module" fail
    with pytest.raises(ConfigError) as info:
        make_client(spec, api_key=None if extra == "ollama" else KEY)
    assert info.value.field == "model"
    assert f"pip install 'maker[{extra}]'" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.anyio
async def test_the_ollama_client_reopens_its_session_after_aclose() -> None:
    async with serve_sim(SimServerConfig(sim="ideal")) as server:
        client = OllamaClient("llama3", base_url=server.base_url)
        await client.aclose()  # nothing opened yet: a no-op
        first = await client.complete(request())
        await client.aclose()
        second = await client.complete(request())
        await client.aclose()
        await client.aclose()
    assert first == second


class _UserClient:
    """A client of a user's own, as the :class:`maker.Client` protocol allows: no ``aclose``."""

    model = "mine"

    def describe(self) -> dict[str, Any]:
        return {}

    async def complete(self, request: SampleRequest) -> Completion:
        return Completion(
            text="", finish_reason="stop", input_tokens=0, output_tokens=0, model="mine"
        )


class _SlowToClose(_UserClient):
    """A user's client whose ``aclose`` awaits, to see whether a cancellation cuts it short."""

    def __init__(self) -> None:
        self.closed = False

    async def aclose(self) -> None:
        await anyio.sleep(0.01)
        self.closed = True


@pytest.mark.anyio
async def test_close_client_closes_what_has_aclose_and_tolerates_what_has_not() -> None:
    from maker.clients import close_client

    plain = _UserClient()
    assert isinstance(plain, Client)
    await close_client(plain)  # nothing to close: no error
    await close_client(SimulatedModel())
    slow = _SlowToClose()
    with anyio.CancelScope() as scope:
        scope.cancel()  # a server shutting down: the close must still run to its end
        await close_client(slow)
    assert slow.closed
    async with serve_sim(SimServerConfig(sim="ideal")) as server:
        client = OllamaClient("llama3", base_url=server.base_url)
        await client.complete(request())
        await close_client(client)
        await close_client(client)  # closing twice is allowed


# --- probes -------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", FORMATS)
async def test_each_client_probes_its_model_without_a_generation(fmt: str) -> None:
    async with served(fmt, SimServerConfig(sim="ideal")) as (server, client):
        await client.probe()
        stats = server.stats
    assert isinstance(client, Probe)
    # One model lookup, and no answer drawn: a probe costs no tokens.
    [seen] = stats.requests
    assert (seen.format, seen.model, seen.status, seen.probe, seen.seed) == (
        fmt,
        client.name,
        200,
        True,
        None,
    )


@pytest.mark.anyio
async def test_the_simulated_model_is_always_reachable() -> None:
    model = make_client("sim")
    assert isinstance(model, SimulatedModel)
    assert isinstance(model, Probe)
    await model.probe()


def test_a_client_of_your_own_need_not_probe() -> None:
    class Bare:
        model = "bare"

        def describe(self) -> dict[str, Any]:
            return {}

        async def complete(self, request: SampleRequest) -> Completion:
            raise NotImplementedError

    assert isinstance(Bare(), Client)
    assert not isinstance(Bare(), Probe)


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", FORMATS)
async def test_a_probe_of_a_closed_port_is_a_retryable_connection_error(fmt: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port any more.
    async with client_for(fmt, f"http://127.0.0.1:{port}", timeout=5.0) as client:
        with anyio.fail_after(5), pytest.raises(ClientError) as info:
            await client.probe()
    assert (info.value.kind, info.value.retryable) == ("connection", True)
    assert str(info.value).startswith(f"{fmt}: ")
    assert_no_key(info.value, repr(info.value))


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", ["openai", "anthropic"])
async def test_a_refused_key_fails_a_probe_as_auth_and_the_key_stays_hidden(fmt: str) -> None:
    # serve-sim accepts any key: this stub refuses every one, and echoes it back.
    async with stub(_echo_credentials) as base, client_for(fmt, base) as client:
        with pytest.raises(ClientError) as info:
            await client.probe()
    assert (info.value.kind, info.value.retryable, info.value.retry_after) == ("auth", False, None)
    assert "401" in str(info.value)
    assert info.value.__cause__ is not None
    assert_no_key(info.value, repr(info.value), repr(client))


UNKNOWN_MODEL = {
    "openai": {
        "error": {
            "message": "The model 'nope' does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_found",
        }
    },
    "anthropic": {"type": "error", "error": {"type": "not_found_error", "message": "model: nope"}},
    "ollama": {"error": "model 'nope' not found"},
}


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", FORMATS)
async def test_a_model_the_server_does_not_know_fails_a_probe_saying_so(fmt: str) -> None:
    paths: list[str] = []

    async def handler(http: web.Request) -> web.StreamResponse:
        paths.append(http.path)
        return web.json_response(UNKNOWN_MODEL[fmt], status=404)

    async with stub(handler) as base, client_for(fmt, base, model="nope") as client:
        with pytest.raises(ClientError) as info:
            await client.probe()
    error = info.value
    assert (error.kind, error.retryable, error.retry_after) == ("bad_request", False, None)
    assert str(error).startswith(f"{fmt}: model 'nope' not found (HTTP 404): ")
    assert_no_key(error, repr(error))
    # The provider said what was missing: no second request to find out.
    assert paths == [{"ollama": "/api/show"}.get(fmt, "/v1/models/nope")]


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", FORMATS)
async def test_a_wrong_base_url_fails_a_probe_without_blaming_the_model(fmt: str) -> None:
    async with serve_sim(SimServerConfig(sim="ideal")) as server:
        client = wrong_base_url(fmt, server)
        async with client:
            with pytest.raises(ClientError) as info:
                await client.probe()
    assert (info.value.kind, info.value.retryable) == ("bad_request", False)
    assert "404" in str(info.value)
    assert f"model {client.name!r}" not in str(info.value)


@pytest.mark.anyio
async def test_a_compatible_server_without_model_lookup_is_probed_through_its_list() -> None:
    paths: list[str] = []

    async def handler(http: web.Request) -> web.StreamResponse:
        # vLLM and llama.cpp's server list their models but cannot look one up.
        paths.append(http.path)
        if http.path == "/v1/models":
            entry = {"id": "served", "object": "model", "created": 0, "owned_by": "vllm"}
            return web.json_response({"object": "list", "data": [entry]})
        return web.json_response({"detail": "Not Found"}, status=404)

    async with stub(handler) as base:
        async with OpenAIClient("served", api_key=KEY, base_url=base + "/v1") as client:
            await client.probe()
        async with OpenAIClient("other", api_key=KEY, base_url=base + "/v1") as client:
            with pytest.raises(ClientError) as info:
                await client.probe()
    assert (info.value.kind, info.value.retryable) == ("bad_request", False)
    assert str(info.value) == (
        "openai: model 'other' not found (HTTP 404): not among the 1 models the server lists"
    )
    assert paths == ["/v1/models/served", "/v1/models", "/v1/models/other", "/v1/models"]


@pytest.mark.anyio
@pytest.mark.parametrize(("fmt", "transport"), TRANSPORT_CASES)
@pytest.mark.parametrize("fault", sorted(EXPECTED))
async def test_an_injected_fault_fails_a_probe_as_it_fails_a_generation(
    fmt: str, transport: Transport | None, fault: str
) -> None:
    config = SimServerConfig(sim="ideal", fault_rate=1.0, faults=(fault,), retry_after_s=2.5)
    async with served(fmt, config, transport=transport) as (server, client):
        with pytest.raises(ClientError) as info:
            await client.probe()
        stats = server.stats
    error = info.value
    kind, retry_after = EXPECTED[fault]
    assert (error.kind, error.retryable, error.retry_after) == (kind, True, retry_after)
    assert_no_key(error, repr(error))
    # aiohttp sends an idempotent request (the probe's GET) once more when the server closes
    # the connection without answering (RFC 9112, 9.3.1); a generation is a POST, sent once.
    sent = 2 if fault == "disconnect" and transport == "aiohttp" else 1
    assert [(r.fault, r.probe) for r in stats.requests] == [(fault, True)] * sent


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", FORMATS)
async def test_a_slow_probe_times_out_at_the_clients_timeout(fmt: str) -> None:
    config = SimServerConfig(sim="ideal", fault_rate=1.0, faults=("slow",), slow_s=30.0)
    async with served(fmt, config, timeout=0.3) as (server, client):
        with anyio.fail_after(3), pytest.raises(ClientError) as info:
            await client.probe()
        with anyio.fail_after(3):
            stats = await server.wait_until(lambda s: s.in_flight == 0)
    assert (info.value.kind, info.value.retryable) == ("timeout", True)
    assert "0.3 s" in str(info.value)
    assert [(r.fault, r.status, r.probe) for r in stats.requests] == [("slow", None, True)]


# --- the mapping tables -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (400, "bad_request", False),
        (401, "auth", False),
        (403, "auth", False),
        (404, "bad_request", False),
        (408, "timeout", True),
        (409, "bad_request", False),
        (422, "bad_request", False),
        (429, "rate_limited", True),
        (500, "server_error", True),
        (502, "server_error", True),
        (503, "unavailable", True),
        (504, "server_error", True),
        (529, "overloaded", True),
        (599, "server_error", True),
        (302, "bad_response", True),
    ],
)
def test_http_statuses_map_to_kinds(status: int, kind: str, retryable: bool) -> None:
    assert classify_status(status) == (kind, retryable)


def test_retry_after_reads_milliseconds_seconds_and_dates() -> None:
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert (
        parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0)
        == 10.0
    )
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after": "-1"}) is None
    assert parse_retry_after(None) is None


@pytest.mark.anyio
async def test_x_should_retry_overrides_the_status_rule() -> None:
    async def handler(http: web.Request) -> web.StreamResponse:
        del http
        headers = {"x-should-retry": "true", "retry-after": "4"}
        return web.json_response({"error": "model is loading"}, status=400, headers=headers)

    async with stub(handler) as base, OllamaClient("llama3", base_url=base) as client:
        with pytest.raises(ClientError) as info:
            await client.complete(request())
    assert (info.value.kind, info.value.retryable, info.value.retry_after) == (
        "bad_request",
        True,
        4.0,
    )
    assert "model is loading" in str(info.value)


# --- through the engine ------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", FORMATS)
async def test_the_engine_runs_hanoi_through_each_client_despite_faults(
    fmt: str, tmp_path: Path
) -> None:
    config = SimServerConfig(
        sim="ideal",
        fault_rate=0.2,
        faults=("rate_limit", "server_error", "unavailable", "overloaded", "malformed"),
        retry_after_s=0.0,
        seed=4,
    )
    log_path = tmp_path / "run.db"
    async with served(fmt, config) as (server, client):
        async with Engine(log=log_path, client=client) as engine:
            result = await engine.run(Hanoi(3), policy=Policy(k=1, max_attempts=10), seed=1)
        stats = server.stats
    assert result.ok, result.reason
    async with EventLog(log_path, mode="r") as log:
        events = [e async for e in log.read(result.run_id)]
    failed = [e for e in events if isinstance(e, SampleFailed)]
    received = [e for e in events if isinstance(e, SampleReceived)]
    # Every fault the server injected is one recorded failure; every answer one received sample.
    assert len(failed) == sum(stats.faults().values()) > 0
    assert len(received) == stats.statuses()[200] - stats.faults()["malformed"]
    assert {e.model for e in received} == {client.model}
    assert_no_key(*events)
