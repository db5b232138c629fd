"""The README's examples run as written, and its command list matches the CLI."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_opens_with_exactly_the_two_commands() -> None:
    first = _blocks("sh")[0]
    commands = [line.split("#")[0].strip() for line in first.strip().splitlines()]
    assert commands == ["make demo", "make test"]


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_examples_run(
    index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "example.py"
    script.write_text(_blocks("python")[index])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert out.startswith("succeeded"), out
    if "Collatz" in _blocks("python")[index]:
        assert out.split()[1] == "111"  # 27 reaches 1 after 111 Collatz steps


def test_every_cli_command_in_the_readme_exists() -> None:
    from maker.apps.cli._cli import app

    used = {m for block in _blocks("sh") for m in re.findall(r"^maker (\w[\w-]*)", block, re.M)}
    assert used
    assert used <= set(app.commands)
