"""The OpenTelemetry SDK is an extra: without it the library traces into the API's providers and
the commands run, and whatever must export says, in one line, what to install.

Each check is a real subprocess whose ``opentelemetry.sdk`` imports fail as they do where the
package is not installed (a ``sitecustomize`` on its path puts a finder first that refuses them).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from maker.otel import SDK_MISSING

BLOCKER = """
import importlib.abc, sys

class _NoSdk(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry.sdk" or name.startswith("opentelemetry.sdk."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoSdk())
"""

_CLEARED = ("OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_SDK_DISABLED")


@pytest.fixture
def no_sdk(tmp_path: Path) -> dict[str, str]:
    """The environment of a child that cannot import the SDK."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER, encoding="utf-8")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _CLEARED and not k.startswith("OTEL_EXPORTER_OTLP")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return env


def child(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_the_blocker_really_hides_the_sdk(no_sdk: dict[str, str], tmp_path: Path) -> None:
    done = child(no_sdk, "-c", "import opentelemetry.sdk.trace", cwd=tmp_path)
    assert done.returncode != 0
    assert "No module named 'opentelemetry.sdk" in done.stderr


def test_the_library_traces_into_the_api_without_the_sdk(
    no_sdk: dict[str, str], tmp_path: Path
) -> None:
    script = textwrap.dedent(
        """
        import sys, anyio
        from opentelemetry import metrics, trace
        from maker import Engine, Policy, SimulatedModel
        from maker.otel import SDK_MISSING, TraceSink
        from maker.tasks import Hanoi

        async def main() -> None:
            sink = TraceSink(trace.get_tracer_provider(), metrics.get_meter_provider())
            async with Engine(log="run.db", client=SimulatedModel(preset="ideal")) as engine:
                result = await engine.run(Hanoi(3), policy=Policy(k=2), sinks=[sink])
            sink.close()
            print(result.status, sink.spans_ended)

        anyio.run(main)
        assert "opentelemetry.sdk" not in sys.modules
        for name in ("tracer_provider_for", "export_log", "DeterministicIdGenerator"):
            try:
                exec(f"from maker.otel import {name}")
            except ModuleNotFoundError as exc:
                assert str(exc) == SDK_MISSING, exc
            else:
                raise AssertionError(name + " imported without the SDK")
        print("refused")
        """
    )
    done = child(no_sdk, "-c", script, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    status, spans, refused = done.stdout.split()
    # 7 steps of 3 disks, each a step span with at least 2 samples, plus the run's span.
    assert (status, refused) == ("succeeded", "refused")
    assert int(spans) >= 1 + 7 * 3


def test_commands_run_without_the_sdk_and_exporting_says_what_to_install(
    no_sdk: dict[str, str], tmp_path: Path
) -> None:
    run = ("-m", "maker", "run", "hanoi", "--disks", "2", "--k", "1", "--no-progress")
    plain = child(no_sdk, *run, "--log", "plain.db", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    asked = {
        "--otel": child(no_sdk, *run, "--log", "otel.db", "--otel", "console", cwd=tmp_path),
        "OTEL_*": child(
            {**no_sdk, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},
            *run,
            "--log",
            "env.db",
            cwd=tmp_path,
        ),
        "export-otel": child(no_sdk, "-m", "maker", "export-otel", "plain.db", cwd=tmp_path),
        "resume": child(
            no_sdk, "-m", "maker", "resume", "plain.db", "--otel", "otlp", cwd=tmp_path
        ),
    }
    for how, done in asked.items():
        assert done.returncode != 0, how
        assert done.stderr.splitlines() == [f"maker: error: otel: {SDK_MISSING}"], (
            how,
            done.stderr,
        )
    # Refused before the run began: no log was started.
    assert not (tmp_path / "otel.db").exists()
    assert not (tmp_path / "env.db").exists()
