"""The MCP server's configuration: models, their limits, prices and the log.

It comes from three places, the later overriding the earlier: a TOML file (``--config FILE``
or ``MAKER_MCP_CONFIG``), the environment (``MAKER_MCP_LOG``, ``MAKER_MCP_MODELS``), and the
command line. A file looks like this::

    log = "runs/mcp.db"

    [[models]]
    spec = "sim"
    preset = "paper"
    latency_ms = 20

    [[models]]
    spec = "openai:gpt-4.1-mini"
    api_key_env = "OPENAI_API_KEY"   # the name of the variable; never the key itself
    concurrency = 16
    rpm = 500

    [prices."openai:gpt-4.1-mini"]
    input = 0.4
    output = 1.6

The first model is the default of every tool. Tools may use the configured models only.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from events import is_database_url, redact_url

from ...clients._sim import PRESETS, sim_config
from ...core._client import Client
from ...core._errors import ConfigError
from ...core._pricing import PriceTable
from ...engine._scheduler import Limits

DEFAULT_LOG = "maker-mcp.db"
"""Where the server's event log goes when nothing names one."""

_SIM_ONLY = ("preset", "p", "latency_ms")


class ModelConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One model the server may call, with its scheduler limits.

    ``spec`` is ``sim``, ``openai:NAME``, ``anthropic:NAME`` or ``ollama:NAME``. ``api_key_env``
    names the environment variable that holds the key (the provider's usual variable when
    unset); the key itself is never configured, recorded or reported. ``preset``, ``p`` and
    ``latency_ms`` tune the simulated model only.
    """

    spec: str
    base_url: str | None = None
    api_key_env: str | None = None
    preset: str | None = None
    p: float | None = None
    latency_ms: float | None = None
    concurrency: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    timeout: float = 120.0

    def limits(self) -> Limits:
        """The scheduler limits of this model."""
        return Limits(
            concurrency=self.concurrency, rpm=self.rpm, tpm=self.tpm, timeout_s=self.timeout
        )

    def validate(self, where: str) -> None:
        """Raise :class:`ConfigError` naming ``where`` and the field for a bad value."""
        if self.spec != "sim":
            for name in _SIM_ONLY:
                if getattr(self, name) is not None:
                    raise ConfigError(
                        f"{where}.{name}",
                        f"applies only to the simulated model (sim), not {self.spec}",
                    )
        if self.preset is not None and self.preset not in PRESETS:
            known = ", ".join(sorted(PRESETS))
            raise ConfigError(f"{where}.preset", f"unknown preset {self.preset!r}; known: {known}")
        if self.p is not None and not (math.isfinite(self.p) and 0.0 <= self.p <= 1.0):
            raise ConfigError(f"{where}.p", f"must be between 0 and 1, got {self.p}")
        if self.latency_ms is not None and not (
            math.isfinite(self.latency_ms) and self.latency_ms >= 0
        ):
            raise ConfigError(f"{where}.latency_ms", f"must be >= 0, got {self.latency_ms}")
        for name in ("concurrency", "rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{where}.{name}", f"must be at least 1, got {value}")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ConfigError(f"{where}.timeout", f"must be positive, got {self.timeout}")
        if self.api_key_env is not None and not self.api_key_env.strip():
            raise ConfigError(f"{where}.api_key_env", "must name an environment variable")

    def client(self) -> Client:
        """A live client for this model (keys from the environment)."""
        from ...clients import make_client

        if self.spec == "sim":
            config = sim_config(self.preset, p=self.p, latency_ms=self.latency_ms)
            return make_client("sim", sim=config)
        api_key = None
        if self.api_key_env is not None:
            api_key = os.environ.get(self.api_key_env)
            if not api_key:
                raise ConfigError(
                    "api_key_env", f"{self.spec}: the variable {self.api_key_env} is not set"
                )
        return make_client(self.spec, base_url=self.base_url, api_key=api_key, timeout=self.timeout)

    def report(self) -> dict[str, Any]:
        """The configuration as ``health`` reports it: no key, only whether one is set."""
        out: dict[str, Any] = {"spec": self.spec}
        if self.spec == "sim":
            out["preset"] = self.preset or "paper"
            for name in ("p", "latency_ms"):
                if getattr(self, name) is not None:
                    out[name] = getattr(self, name)
        else:
            out["base_url"] = self.base_url
            out["api_key_env"] = self.api_key_env or _default_key_env(self.spec)
            if out["api_key_env"] is not None:
                out["api_key_set"] = bool(os.environ.get(out["api_key_env"]))
        out["limits"] = {
            "concurrency": self.concurrency,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "timeout_s": self.timeout,
        }
        return out


def _default_key_env(spec: str) -> str | None:
    from ...clients._common import KEY_VARIABLES

    return KEY_VARIABLES.get(spec.partition(":")[0])


class _File(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    log: str | None = None
    models: list[ModelConfig] | None = None
    prices: dict[str, dict[str, float]] | None = None


@dataclass(frozen=True, kw_only=True)
class McpConfig:
    """The whole configuration, validated: build it with :func:`load_mcp_config`.

    ``sources`` says where each part came from (``"default"``, ``"file"``, ``"env"`` or
    ``"cli"``), which ``health`` reports.
    """

    log: Path | str
    """A SQLite file's path, or a PostgreSQL database's URL (a ``str``)."""
    models: tuple[ModelConfig, ...]
    prices: Mapping[str, Mapping[str, float]]
    config_file: Path | None
    sources: Mapping[str, str]

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("models", "configure at least one model")
        seen: set[str] = set()
        for index, model in enumerate(self.models):
            model.validate(f"models[{index}]")
            if model.spec in seen:
                raise ConfigError(f"models[{index}].spec", f"{model.spec} is configured twice")
            seen.add(model.spec)

    @property
    def shown(self) -> str:
        """The log as messages name it: a URL without its password."""
        return redact_url(str(self.log))

    @property
    def default_model(self) -> str:
        """The spec tools use when they name no model: the first configured."""
        return self.models[0].spec

    def model(self, spec: str) -> ModelConfig:
        """The configuration of ``spec``; ConfigError for a model the server does not offer."""
        for model in self.models:
            if model.spec == spec:
                return model
        offered = ", ".join(m.spec for m in self.models)
        raise ConfigError(
            "model", f"{spec!r} is not configured on this server; it offers {offered}"
        )

    def price_table(self) -> PriceTable:
        """The default prices with the configured overrides."""
        return PriceTable(self.prices)

    def report(self) -> dict[str, Any]:
        """What ``health`` says of the configuration."""
        return {
            "log": self.shown,
            "config_file": str(self.config_file) if self.config_file else None,
            "default_model": self.default_model,
            "models": [m.report() for m in self.models],
            "prices": {name: dict(price) for name, price in self.prices.items()},
            "sources": dict(self.sources),
        }


def read_config_file(path: Path) -> _File:
    """Parse a TOML configuration; ConfigError naming the file and the field."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from exc
    try:
        return msgspec.convert(data, _File)
    except msgspec.ValidationError as exc:
        raise ConfigError("config", f"{path}: {exc}") from exc


def load_mcp_config(
    *,
    config_file: Path | None = None,
    log: str | None = None,
    log_source: str = "cli",
    models: Sequence[str] = (),
    models_source: str = "cli",
    base_url: str | None = None,
    concurrency: int | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    timeout: float | None = None,
) -> McpConfig:
    """Merge the file, the environment and the command line into one :class:`McpConfig`.

    ``log`` and ``models`` replace the file's; a model named on the command line that the file
    also configures keeps the file's settings. ``base_url`` applies to the command line's
    models; ``concurrency``, ``rpm``, ``tpm`` and ``timeout`` to every model.

    >>> config = load_mcp_config(models=["sim"], rpm=60)
    >>> config.default_model, config.models[0].rpm
    ('sim', 60)
    """
    file = read_config_file(config_file) if config_file is not None else _File()
    sources: dict[str, str] = {}
    by_spec = {m.spec: m for m in file.models or ()}
    if models:
        if base_url is not None and len(models) > 1:
            raise ConfigError("base_url", "give one --model with --base-url")
        chosen = []
        for spec in models:
            entry = by_spec.get(spec, ModelConfig(spec=spec))
            if base_url is not None:
                entry = msgspec.structs.replace(entry, base_url=base_url)
            chosen.append(entry)
        sources["models"] = models_source
    elif file.models:
        if base_url is not None:
            raise ConfigError("base_url", "applies to --model; set base_url in the file's models")
        chosen = list(file.models)
        sources["models"] = "file"
    else:
        if base_url is not None:
            raise ConfigError("base_url", "give the --model it applies to")
        chosen = [ModelConfig(spec="sim")]
        sources["models"] = "default"
    overrides = {
        name: value
        for name, value in (
            ("concurrency", concurrency),
            ("rpm", rpm),
            ("tpm", tpm),
            ("timeout", timeout),
        )
        if value is not None
    }
    if overrides:
        chosen = [msgspec.structs.replace(m, **overrides) for m in chosen]
        sources["limits"] = "cli"
    if log is not None:
        log_path, sources["log"] = log, log_source
    elif file.log is not None:
        log_path, sources["log"] = file.log, "file"
    else:
        log_path, sources["log"] = DEFAULT_LOG, "default"
    path: Path | str
    if is_database_url(log_path):
        path = str(log_path)
    else:
        path = Path(log_path).expanduser()
        if config_file is not None and not path.is_absolute() and sources["log"] == "file":
            # A path in the file is read relative to the file, as one would expect of a config.
            path = config_file.parent / path
    prices = file.prices or {}
    if prices:
        PriceTable(prices)  # validates now, naming the model, rather than at the first call
        sources["prices"] = "file"
    return McpConfig(
        log=path,
        models=tuple(chosen),
        prices=prices,
        config_file=config_file,
        sources=sources,
    )
