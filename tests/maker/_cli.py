"""The real CLI in a subprocess, and the checks every bad-input test makes of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

MAKER = [sys.executable, "-m", "maker"]


def maker(
    cwd: Path, *args: str, preexec: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    """``maker ARGS`` run in ``cwd``, its output captured (``preexec`` runs in the child)."""
    return subprocess.run(
        [*MAKER, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        preexec_fn=preexec,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The failure's single stderr line (checked: non-zero exit, no traceback)."""
    assert done.returncode != 0, done
    assert "Traceback" not in done.stderr
    assert "ExceptionGroup" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("maker: error: ")
    return lines[0]


def verified(cwd: Path, log: str) -> dict[str, int]:
    """Every run of the log and its event count, after ``maker verify`` passed."""
    done = maker(cwd, "verify", log, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"], report
    return {run["run_id"]: run["events"] for run in report["runs"]}
