"""``maker serve-sim``: the simulated model behind the OpenAI, Anthropic and Ollama wire formats,
for testing clients and measuring the engine over real HTTP."""

from ._serve_sim import (
    DEFAULT_FAULTS,
    DEFAULT_LATE_S,
    DEFAULT_SLOW_S,
    FAULT_KINDS,
    SimServer,
    SimServerConfig,
    SimStats,
    create_app,
    serve_sim,
)

__all__ = [
    "DEFAULT_FAULTS",
    "DEFAULT_LATE_S",
    "DEFAULT_SLOW_S",
    "FAULT_KINDS",
    "SimServer",
    "SimServerConfig",
    "SimStats",
    "create_app",
    "serve_sim",
]
