"""The price table: lookups by provider and dated names, Eq 20, overrides and price files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maker import ConfigError
from maker.core._pricing import DEFAULT_PRICES, Price, PriceTable

COMMON = [
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-4o",
    "gpt-4o-mini",
    "o3-mini",
    "o4-mini",
    "claude-haiku-4-5",
    "claude-sonnet-4-5",
    "claude-opus-4-1",
]


@pytest.mark.parametrize("model", COMMON)
def test_the_defaults_price_the_common_models(model: str) -> None:
    price = PriceTable().lookup(model)
    assert price is not None
    assert 0 < price.input_per_mtok <= price.output_per_mtok


def test_the_paper_model_costs_its_list_price() -> None:
    # gpt-4.1-mini: $0.40 in, $1.60 out per million tokens.
    assert PriceTable().lookup("gpt-4.1-mini") == Price(0.40, 1.60)


@pytest.mark.parametrize(
    ("model", "listed"),
    [
        ("openai:gpt-4.1-mini", "gpt-4.1-mini"),
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("openai:gpt-4.1-2025-04-14", "gpt-4.1"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("anthropic:claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-haiku-4-5@20251001", "claude-haiku-4-5"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
    ],
)
def test_provider_prefixes_and_dated_names_find_the_longest_listed_name(
    model: str, listed: str
) -> None:
    table = PriceTable()
    assert table.lookup(model) == DEFAULT_PRICES[listed]
    assert table.known(model)


@pytest.mark.parametrize(
    "model",
    [
        "sim",
        "ollama:llama3.1:8b",
        "gpt-4.1-turbo",
        "gpt-4.1x",
        "claude",
        "openai:",
        "mystery:gpt-4o",
    ],
)
def test_unknown_models_cost_nothing_and_say_so(model: str) -> None:
    table = PriceTable()
    assert table.lookup(model) is None
    assert not table.known(model)
    assert table.cost(model, 1_000_000, 1_000_000) == 0.0


def test_a_dated_name_does_not_borrow_a_shorter_models_price() -> None:
    table = PriceTable({"base": Price(1.0, 2.0)}, defaults=False)
    assert table.known("base-20250101")
    assert not table.known("base-mini")
    assert not table.known("base-mini-20250101")


def test_cost_is_eq_20() -> None:
    table = PriceTable()
    # 538 output tokens and 500 input tokens per sample at gpt-4.1-mini prices.
    expected = (500 * 0.40 + 538 * 1.60) / 1e6
    assert table.cost("openai:gpt-4.1-mini", 500, 538) == pytest.approx(expected, rel=1e-12)
    assert table.cost("gpt-4.1-mini", 0, 0) == 0.0
    with pytest.raises(ConfigError, match="token counts"):
        table.cost("gpt-4.1-mini", -1, 0)


@given(
    n_in=st.integers(0, 10**9),
    n_out=st.integers(0, 10**9),
    c_in=st.floats(0, 100, allow_nan=False),
    c_out=st.floats(0, 100, allow_nan=False),
)
def test_cost_is_linear_in_tokens_and_prices(
    n_in: int, n_out: int, c_in: float, c_out: float
) -> None:
    price = Price(c_in, c_out)
    total = price.cost(n_in, n_out)
    assert math.isclose(
        total, price.cost(n_in, 0) + price.cost(0, n_out), rel_tol=1e-9, abs_tol=1e-12
    )
    assert math.isclose(total, (c_in * n_in + c_out * n_out) / 1e6, rel_tol=1e-9, abs_tol=1e-12)


def test_overrides_replace_and_add_prices() -> None:
    table = PriceTable({"gpt-4.1-mini": {"input": 1.0, "output": 2.0}, "local": Price(0.0, 0.0)})
    assert table.lookup("gpt-4.1-mini-2025-04-14") == Price(1.0, 2.0)
    assert table.known("ollama:local")
    assert table.cost("ollama:local", 10, 10) == 0.0
    assert table.lookup("gpt-4o") == DEFAULT_PRICES["gpt-4o"]
    bare = PriceTable({"x": Price(1, 1)}, defaults=False)
    assert bare.models() == ["x"]
    more = bare.with_overrides({"y": {"input": 2, "output": 3}})
    assert (more.models(), bare.models()) == (["x", "y"], ["x"])


def test_an_exact_provider_qualified_entry_wins() -> None:
    table = PriceTable({"openai:gpt-4o": Price(9.0, 9.0)})
    assert table.lookup("openai:gpt-4o") == Price(9.0, 9.0)
    assert table.lookup("gpt-4o") == DEFAULT_PRICES["gpt-4o"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"m": {"input": -1.0, "output": 1.0}}, "prices.m.input"),
        ({"m": {"input": 1.0, "output": math.inf}}, "prices.m.output"),
        ({"m": {"input": 1.0}}, "prices.m.output"),
        ({"m": {"input": 1.0, "output": 1.0, "cached": 0.1}}, "prices.m"),
        ({"m": 3.0}, "prices.m"),
        ({"m": {"input": "cheap", "output": 1.0}}, "prices.m.input"),
        ({"": {"input": 1.0, "output": 1.0}}, "prices"),
    ],
)
def test_bad_overrides_name_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        PriceTable(overrides)  # type: ignore[arg-type]
    assert info.value.field == field


def test_prices_load_from_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "prices.toml"
    toml.write_text(
        '["gpt-4.1-mini"]\ninput = 0.5\noutput = 2.0\n\n[mine]\ninput = 1\noutput = 1\n'
    )
    table = PriceTable.load(toml)
    assert table.lookup("gpt-4.1-mini") == Price(0.5, 2.0)
    assert table.lookup("mine") == Price(1.0, 1.0)
    assert table.known("claude-haiku-4-5")
    data = {"mine": {"input": 3.0, "output": 4.0}}
    as_json = tmp_path / "prices.json"
    as_json.write_text(json.dumps(data))
    assert PriceTable.load(as_json, defaults=False).to_json() == data
    # The table writes the format it reads.
    again = tmp_path / "again.json"
    again.write_text(json.dumps(table.to_json()))
    assert PriceTable.load(again, defaults=False).to_json() == table.to_json()


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("broken.toml", "[gpt\ninput = "),
        ("broken.json", "{not json"),
        ("list.json", "[1, 2]"),
        ("negative.json", '{"m": {"input": -1, "output": 1}}'),
        ("shape.toml", 'm = "free"\n'),
    ],
)
def test_a_bad_price_file_is_a_config_error_naming_it(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        PriceTable.load(path)
    assert info.value.field == "prices"
    assert str(path) in str(info.value)


def test_a_missing_price_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError) as info:
        PriceTable.load(path)
    assert str(path) in str(info.value)


def test_the_built_in_prices_are_a_dated_data_file_of_the_package() -> None:
    from datetime import date
    from importlib import resources

    from maker.core._pricing import PRICES_AS_OF, PRICES_FILE

    text = resources.files("maker.core").joinpath(PRICES_FILE).read_text("utf-8")
    assert isinstance(PRICES_AS_OF, date)
    assert f"as_of = {PRICES_AS_OF.isoformat()}" in text
    assert set(COMMON) <= set(DEFAULT_PRICES)
    assert DEFAULT_PRICES["gpt-4.1-mini"] == Price(0.40, 1.60)
    with pytest.raises(TypeError):
        DEFAULT_PRICES["gpt-4.1-mini"] = Price(0, 0)  # type: ignore[index]


def test_a_copy_of_the_built_in_file_edited_is_a_price_file(tmp_path: Path) -> None:
    from importlib import resources

    from maker.core._pricing import PRICES_FILE

    text = resources.files("maker.core").joinpath(PRICES_FILE).read_text("utf-8")
    edited = text.replace(
        '"gpt-4o" = { input = 2.50, output = 10.00 }', '"gpt-4o" = { input = 3.0, output = 12.0 }'
    )
    assert edited != text
    edited += '"my-local-model" = { input = 0.01, output = 0.02 }\n'
    path = tmp_path / "prices.toml"
    path.write_text(edited, encoding="utf-8")
    table = PriceTable.load(path, defaults=False)
    assert table.lookup("openai:gpt-4o") == Price(3.0, 12.0)
    assert table.lookup("ollama:my-local-model") == Price(0.01, 0.02)
    assert len(table) == len(DEFAULT_PRICES) + 1
    # A flat file naming a model "models" is still a flat file.
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"models": {"input": 1.0, "output": 2.0}}), encoding="utf-8")
    assert PriceTable.load(flat, defaults=False).lookup("models") == Price(1.0, 2.0)


def test_show_and_run_say_unknown_rather_than_free_when_no_model_has_a_price(
    tmp_path: Path,
) -> None:
    from ._cli import maker

    unpriced = maker(tmp_path, "run", "hanoi", "--disks", "2", "--log", "free.db")
    assert unpriced.returncode == 0, unpriced.stderr
    cost_row = [line for line in unpriced.stdout.splitlines() if line.startswith("cost")]
    assert cost_row == ["cost       unknown (no price for sim)"]
    shown = maker(tmp_path, "show", "free.db")
    assert "unknown (no price for sim)" in shown.stdout
    # Given a price, the same run costs what its tokens do, and both say so in USD.
    (tmp_path / "p.json").write_text(json.dumps({"sim": {"input": 1.0, "output": 2.0}}))
    priced = maker(
        tmp_path, "run", "hanoi", "--disks", "2", "--log", "paid.db", "--prices", "p.json", "--json"
    )
    assert priced.returncode == 0, priced.stderr
    result = json.loads(priced.stdout)
    want = (result["input_tokens"] * 1.0 + result["output_tokens"] * 2.0) / 1e6
    assert result["cost_usd"] == pytest.approx(want)
    shown = maker(tmp_path, "show", "paid.db")
    assert f"${want:.4f}" in shown.stdout
    assert "unknown" not in shown.stdout
