"""The wheel as users install it: licence, metadata, typing markers, the CLI's entry point.

Built from this tree by the project's own build backend (hatchling, in the dev extra), offline.
"""

from __future__ import annotations

import email.parser
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (built,) = out.glob("maker-*.whl")
    return zipfile.ZipFile(built)


def _metadata(wheel: zipfile.ZipFile) -> email.message.Message:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return email.parser.Parser().parsestr(wheel.read(name).decode())


def test_the_wheel_carries_the_licence_and_its_spdx_expression(wheel: zipfile.ZipFile) -> None:
    (licence,) = [n for n in wheel.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
    assert wheel.read(licence) == (ROOT / "LICENSE").read_bytes()
    metadata = _metadata(wheel)
    assert metadata["License-Expression"] == "MIT"
    assert metadata["License-File"] == "LICENSE"


def test_the_metadata_says_what_the_package_is(wheel: zipfile.ZipFile) -> None:
    metadata = _metadata(wheel)
    classifiers = metadata.get_all("Classifier") or []
    assert "Typing :: Typed" in classifiers
    assert "Framework :: AnyIO" in classifiers
    assert metadata["Requires-Python"] == ">=3.11"
    assert metadata["Keywords"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = set(metadata.get_all("Provides-Extra") or [])
    assert extras == set(project["optional-dependencies"])
    # `all` is every user-facing extra together (the dev tools apart), but the embedding
    # matcher's: a model and torch, about 1.5 GB installed, are for those who ask for them.
    optional = project["optional-dependencies"]
    apart = ("all", "dev", "embedding")
    wanted = {dep for name, deps in optional.items() if name not in apart for dep in deps}
    assert set(optional["all"]) == wanted
    assert not set(optional["embedding"]) & (set(optional["all"]) | set(optional["dev"]))


def test_the_library_needs_the_opentelemetry_api_and_the_sdk_is_an_extra(
    wheel: zipfile.ZipFile,
) -> None:
    requires = _metadata(wheel).get_all("Requires-Dist") or []
    plain = {r.split(">=")[0].split(";")[0].strip() for r in requires if "extra ==" not in r}
    assert "opentelemetry-api" in plain
    assert "opentelemetry-sdk" not in plain
    sdk = {r.replace('"', "'").split("extra == ")[1] for r in requires if "opentelemetry-sdk" in r}
    assert sdk == {"'otel'", "'otlp'", "'all'", "'dev'"}


def test_every_package_is_typed_and_the_cli_is_an_entry_point(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for package in ("maker", "events", "replay"):
        assert f"{package}/py.typed" in names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "maker = maker.apps.cli:main" in wheel.read(entry_points).decode()
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)


def test_the_wheel_carries_the_dated_price_table(wheel: zipfile.ZipFile) -> None:
    from maker.core._pricing import PRICES_AS_OF

    packed = wheel.read("maker/core/prices.toml").decode()
    assert packed == (ROOT / "maker" / "core" / "prices.toml").read_text(encoding="utf-8")
    assert f"as_of = {PRICES_AS_OF.isoformat()}" in packed


def test_the_wheel_carries_the_live_page(wheel: zipfile.ZipFile) -> None:
    # `maker serve` serves these from the installed package: no build step, nothing fetched.
    static = ROOT / "maker" / "apps" / "service" / "static"
    for name in ("live.html", "live.js", "live.css"):
        assert wheel.read(f"maker/apps/service/static/{name}") == (static / name).read_bytes()
