"""What samples cost: a price table in USD per million tokens, and the paper's Eq 20.

The cost of one sample is ``c_in * n_in + c_out * n_out`` (Eq 20), with ``c`` the prices per
token and ``n`` the tokens the provider reported. Models the table does not know cost 0.0, and
:meth:`PriceTable.known` says so, so that a report can say "unknown" rather than "free".

>>> table = PriceTable()
>>> round(table.cost("openai:gpt-4.1-mini-2025-04-14", 1_000_000, 500_000), 2)
1.2
>>> table.known("sim"), table.cost("sim", 1000, 1000)
(False, 0.0)
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from importlib import resources
from os import PathLike
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from ._errors import ConfigError

_PROVIDERS = ("openai", "anthropic", "ollama", "sim")

# A model name that extends a table entry with a date or release tag: "-2025-04-14",
# "-20250929", "@20250929" (Vertex), "-latest", "-preview". Only such suffixes match: a bare
# prefix match would price "gpt-4o-mini" as "gpt-4o" if the table lacked the mini.
_DATED_SUFFIX = re.compile(r"(?:[-@](?:\d{4}-\d{2}-\d{2}|\d{8}|latest|preview))+")


@dataclass(frozen=True)
class Price:
    """List prices of one model, in USD per million input and output tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def __post_init__(self) -> None:
        for name in ("input_per_mtok", "output_per_mtok"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ConfigError(name, f"must be a number >= 0, got {value!r}")

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """USD for these token counts (Eq 20).

        >>> Price(0.4, 1.6).cost(1000, 500)
        0.0012
        """
        if input_tokens < 0 or output_tokens < 0:
            raise ConfigError(
                "tokens", f"token counts must be >= 0, got {input_tokens}, {output_tokens}"
            )
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6


class PriceTable:
    """Prices by model name, the defaults overridden by ``overrides``.

    A model is looked up as given (``"openai:gpt-4.1"``), then without its provider prefix
    (``"gpt-4.1"``); a dated name (``"gpt-4.1-mini-2025-04-14"``) takes the price of its longest
    listed prefix. ``overrides`` maps names to :class:`Price` or ``{"input": x, "output": y}``.

    >>> table = PriceTable({"my-model": {"input": 1.0, "output": 2.0}})
    >>> table.cost("ollama:my-model", 2_000_000, 1_000_000)
    4.0
    """

    def __init__(
        self,
        overrides: Mapping[str, Price | Mapping[str, Any]] | None = None,
        *,
        defaults: bool = True,
    ) -> None:
        prices: dict[str, Price] = dict(DEFAULT_PRICES) if defaults else {}
        for model, price in (overrides or {}).items():
            prices[_check_name(model)] = _as_price(model, price)
        self._prices = prices
        self._cache: dict[str, Price | None] = {}  # lookups repeat for every sample

    @classmethod
    def load(cls, path: str | PathLike[str], *, defaults: bool = True) -> PriceTable:
        """The defaults overridden by a TOML or JSON file of ``{"model": {"input": x,
        "output": y}}`` (USD per million tokens). A bad file raises ConfigError naming it.
        """
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError("prices", f"cannot read {file}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(
                "prices", f"{file} is not UTF-8 text (byte {exc.start}: {exc.reason})"
            ) from exc
        try:
            if file.suffix.lower() == ".toml":
                data: object = tomllib.loads(text)
            else:
                data = json.loads(text)
        except (tomllib.TOMLDecodeError, ValueError) as exc:
            raise ConfigError("prices", f"{file} is not valid {_format(file)}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError("prices", f"{file}: expected a table of models, got {data!r}")
        data = _models_of(data)
        try:
            return cls(data, defaults=defaults)
        except ConfigError as exc:
            raise ConfigError("prices", f"{file}: {exc}") from exc

    def with_overrides(self, overrides: Mapping[str, Price | Mapping[str, Any]]) -> PriceTable:
        """A copy with some prices added or replaced."""
        table = PriceTable(defaults=False)
        table._prices = dict(self._prices)
        for model, price in overrides.items():
            table._prices[_check_name(model)] = _as_price(model, price)
        return table

    def lookup(self, model: str) -> Price | None:
        """The price of ``model`` ("provider:name" or a bare name), or None if unknown.

        >>> PriceTable().lookup("anthropic:claude-sonnet-4-5-20250929")
        Price(input_per_mtok=3.0, output_per_mtok=15.0)
        """
        try:
            return self._cache[model]
        except KeyError:
            pass
        found = self._cache[model] = self._lookup(model)
        return found

    def _lookup(self, model: str) -> Price | None:
        candidates = [model]
        provider, sep, name = model.partition(":")
        if sep and provider in _PROVIDERS and name:
            candidates.append(name)
        for candidate in candidates:
            exact = self._prices.get(candidate)
            if exact is not None:
                return exact
        for candidate in candidates:
            best: str | None = None
            for listed in self._prices:
                if (
                    candidate.startswith(listed)
                    and _DATED_SUFFIX.fullmatch(candidate[len(listed) :])
                    and (best is None or len(listed) > len(best))
                ):
                    best = listed
            if best is not None:
                return self._prices[best]
        return None

    def known(self, model: str) -> bool:
        """Whether the table has a price for ``model``."""
        return self.lookup(model) is not None

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float:
        """USD for one sample of ``model`` (Eq 20); 0.0 when the model is unknown."""
        price = self.lookup(model)
        return 0.0 if price is None else price.cost(input_tokens, output_tokens)

    def to_json(self) -> dict[str, dict[str, float]]:
        """The table in the file format :meth:`load` reads."""
        return {
            model: {"input": price.input_per_mtok, "output": price.output_per_mtok}
            for model, price in sorted(self._prices.items())
        }

    def models(self) -> list[str]:
        """The names the table lists, sorted."""
        return sorted(self._prices)

    def __len__(self) -> int:
        return len(self._prices)

    def __repr__(self) -> str:
        return f"PriceTable({len(self._prices)} models)"


def _models_of(data: dict[str, Any]) -> dict[str, Any]:
    """The models of a price file: the file itself, or its ``[models]`` table when it is laid
    out as the built-in ``prices.toml`` is (with ``as_of`` beside it), so that a copy of that
    file, edited, serves as a price file."""
    models = data.get("models")
    layout = set(data) <= {"models", "as_of"}
    if layout and isinstance(models, dict) and all(isinstance(v, dict) for v in models.values()):
        return models
    return data


def _format(file: Path) -> str:
    return "TOML" if file.suffix.lower() == ".toml" else "JSON"


def _check_name(model: object) -> str:
    if not isinstance(model, str) or not model:
        raise ConfigError("prices", f"a model name must be a non-empty string, got {model!r}")
    return model


def _as_price(model: str, value: object) -> Price:
    if isinstance(value, Price):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"prices.{model}", f'expected {{"input": x, "output": y}}, got {value!r}')
    extra = set(value) - {"input", "output"}
    if extra:
        raise ConfigError(f"prices.{model}", f"unknown keys {sorted(extra)}; use input, output")
    for key in ("input", "output"):
        if key not in value:
            raise ConfigError(f"prices.{model}.{key}", "missing (USD per million tokens)")
    try:
        return Price(value["input"], value["output"])
    except ConfigError as exc:
        field = "input" if exc.field == "input_per_mtok" else "output"
        raise ConfigError(f"prices.{model}.{field}", str(exc).split(": ", 1)[-1]) from exc


PRICES_FILE: Final = "prices.toml"
"""The built-in price table: a data file of this package, with the date of its prices."""


def _builtin() -> tuple[date, Mapping[str, Price]]:
    data = tomllib.loads(resources.files(__package__).joinpath(PRICES_FILE).read_text("utf-8"))
    as_of = data["as_of"]
    assert isinstance(as_of, date), "prices.toml: as_of must be a date"
    return as_of, MappingProxyType(
        {name: _as_price(name, price) for name, price in data["models"].items()}
    )


PRICES_AS_OF, DEFAULT_PRICES = _builtin()
"""The built-in list prices (``prices.toml``) and the day they were read off the providers'
pages: prices change, so a figure computed from them says so."""
