"""A task defined in a module outside the repository (written to a temp dir, found through
PYTHONPATH), from the CLI alone: it runs, shows, replays (``--verify`` and a re-vote),
calibrates and plans, resumes after kill -9, and is served over HTTP and MCP; a log or a
request that names a plugin imports it only when the user trusts it."""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from events import StepDecided
from replay import load_events

from ._plugin import write_counting

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "plugin-test-token-0123456789"
REFERENCE = "counting:Counting"

SPY = """import os
open(os.environ["SPY_MARKER"], "w").close()  # importing this module leaves a trace
from counting import Counting
"""
"""``spy.py``: the counting task, and a file created whenever the module is imported."""


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    """The directory holding ``counting.py`` and ``spy.py``, outside the repository."""
    where = write_counting(tmp_path / "plugins")
    (where / "spy.py").write_text(SPY, encoding="utf-8")
    return where


def _env(plugin: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MAKER_ALLOW_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(plugin)])
    env["PYTHONUNBUFFERED"] = "1"
    return {**env, **extra}


def maker(cwd: Path, plugin: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``maker ARGS`` in ``cwd``, the plugin directory on PYTHONPATH."""
    return subprocess.run(
        [sys.executable, "-m", "maker", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=_env(plugin, **env),
    )


def ok_json(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout)
    return out


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The failure's one stderr line: non-zero exit, no traceback."""
    assert done.returncode != 0, done
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("maker: error: ")
    return lines[0]


def winners(log: Path) -> list[str]:
    events = anyio.run(load_events, log)
    return [e.winner for e in events if isinstance(e, StepDecided)]


def test_a_plugin_runs_shows_replays_calibrates_and_plans(tmp_path: Path, plugin: Path) -> None:
    log = tmp_path / "log.db"
    given = ["--task", REFERENCE, "--params", '{"n": 25}', "--seed", "4"]
    run = ok_json(maker(tmp_path, plugin, "run", *given, "--log", str(log), "--json"))
    assert run["status"] == "succeeded"
    assert run["steps"] == 25
    assert (run["task"], run["task_params"]) == (REFERENCE, {"n": 25})
    shown = ok_json(maker(tmp_path, plugin, "show", str(log), "--json"))
    assert (shown["task"], shown["task_params"]) == (REFERENCE, {"n": 25})
    assert shown["status"] == "succeeded"
    # The log names the plugin, but a log may be anyone's: replaying it asks for trust first.
    line = one_line(maker(tmp_path, plugin, "replay", "--verify", str(log)))
    assert f"'{REFERENCE}'" in line
    assert "--allow-plugin counting" in line
    verified = maker(tmp_path, plugin, "replay", "--verify", str(log), "--allow-plugin", "counting")
    assert verified.returncode == 0, verified.stderr
    assert "reproduced exactly" in verified.stdout
    by_env = maker(tmp_path, plugin, "replay", "--verify", str(log), "--json",
                   MAKER_ALLOW_PLUGINS=REFERENCE)  # fmt: skip
    assert ok_json(by_env)["ok"] is True
    revoted = ok_json(
        maker(
            tmp_path, plugin, "replay", str(log), "--k", "2", "--json", "--allow-plugin", "counting"
        )
    )
    assert revoted["k"] == 2
    # Calibrate on the plugin's oracle with the simulated model, then plan from it.
    calibrated = ok_json(
        maker(tmp_path, plugin, "calibrate", "--task", REFERENCE, "--params", '{"n": 60}',
              "--model", "sim", "--samples", "40", "--log", str(tmp_path / "cal.db"), "--json")
    )  # fmt: skip
    assert (calibrated["task"], calibrated["task_params"]) == (REFERENCE, {"n": 60})
    (model,) = calibrated["models"]
    assert model["status"] == "succeeded"
    assert model["n"] == 40
    assert model["p"] > 0.9
    (tmp_path / "cal.json").write_text(json.dumps(calibrated))
    planned = ok_json(
        maker(
            tmp_path,
            plugin,
            "plan",
            "--task",
            REFERENCE,
            "--params",
            '{"n": 60}',
            "--from-calibration",
            "cal.json",
            "--target",
            "0.9",
            "--json",
        )
    )
    assert planned["steps"] == 60
    assert planned["recommended"] == "sim"


def test_a_log_of_an_untrusted_plugin_is_refused_before_it_is_imported(
    tmp_path: Path, plugin: Path
) -> None:
    marker = tmp_path / "imported"
    log = tmp_path / "log.db"
    done = maker(tmp_path, plugin, "run", "--task", "spy:Counting", "--params", '{"n": 5}',
                 "--log", str(log), "--json", SPY_MARKER=str(marker))  # fmt: skip
    assert ok_json(done)["status"] == "succeeded"
    assert marker.exists()  # named on the command line: the user's own
    marker.unlink()
    for command in (["replay", "--verify"], ["resume"], ["replay", "--k", "2"]):
        line = one_line(maker(tmp_path, plugin, *command, str(log), SPY_MARKER=str(marker)))
        assert "'spy:Counting'" in line
        assert "--allow-plugin spy" in line
        assert not marker.exists(), command
    # Trusting another plugin is not trusting this one.
    refused = maker(tmp_path, plugin, "replay", "--verify", str(log), "--allow-plugin",
                    "counting", SPY_MARKER=str(marker))  # fmt: skip
    one_line(refused)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--task", "nosuch_plugin:make"], "task plugin 'nosuch_plugin:make': no module named"),
        (["--task", "counting:Nope"], "module counting has no attribute 'Nope'"),
        (["--task", "counting:_ANSWER"], "_ANSWER is a Pattern, not a task factory"),
        (["--task", REFERENCE, "--params", '{"n": 0}'], "the factory raised ValueError: n must"),
        (["--task", REFERENCE, "--params", '{"m": 1}'], "m: not a parameter of task"),
        (["--task", REFERENCE, "--params", "[1]"], "--params: must be a JSON object"),
        (["--task", REFERENCE, "--params", "{"], "--params: not JSON"),
        (["--task", REFERENCE, "--disks", "3"], "--disks does not apply to --task"),
        (["hanoi", "--task", REFERENCE], "give TASK or --task, not both"),
        (["hanoi", "--params", "{}"], "--params goes with --task"),
        ([], "give a TASK"),
    ],
)
def test_a_missing_or_broken_plugin_is_one_line(
    tmp_path: Path, plugin: Path, args: list[str], expected: str
) -> None:
    line = one_line(maker(tmp_path, plugin, "run", *args, "--log", str(tmp_path / "l.db")))
    assert expected in line, line


def test_a_plugin_in_the_working_directory_is_found(tmp_path: Path, plugin: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "maker", "run", "--task", REFERENCE, "--log", "l.db", "--json"],
        cwd=plugin,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**_env(plugin), "PYTHONPATH": str(ROOT)},
    )
    assert ok_json(done)["steps"] == 5


# -- kill -9 and resume --------------------------------------------------------------------------


def _count(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as conn:
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    except sqlite3.Error:
        return 0  # the schema is not there yet


STEPS = 1500
RUN = ["--task", REFERENCE, "--params", json.dumps({"n": STEPS}), "--seed", "3",
       "--no-progress", "--log-writer", "thread"]  # fmt: skip


@pytest.mark.slow  # two runs of 1500 steps, one of them killed and resumed: about 20 s
def test_a_plugin_run_killed_at_random_resumes_to_the_same_decisions(
    tmp_path: Path, plugin: Path
) -> None:
    reference = tmp_path / "ref.db"
    done = maker(tmp_path, plugin, "run", *RUN, "--log", str(reference), "--json")
    assert ok_json(done)["steps"] == STEPS
    expected = winners(reference)
    total = _count(reference)
    killed = tmp_path / "kill.db"
    # Anywhere but the last tenth: the file is polled, and a kill drawn for the last few
    # commits could land after the run has closed its log.
    after = random.Random().randint(1, total * 9 // 10)
    proc = subprocess.Popen(
        [sys.executable, "-m", "maker", "run", *RUN, "--log", str(killed)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(plugin),
    )
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if _count(killed) >= after:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.002)  # polling the file, not measuring time
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before {after} events"
    line = one_line(maker(tmp_path, plugin, "resume", str(killed)))
    assert "--allow-plugin counting" in line
    resumed = ok_json(
        maker(tmp_path, plugin, "resume", str(killed), "--json", "--allow-plugin", "counting")
    )
    assert resumed["status"] == "succeeded", resumed
    assert resumed["resumed"] is True
    assert winners(killed) == expected
    verified = maker(tmp_path, plugin, "replay", "--verify", str(killed), "--allow-plugin",
                     "counting", "--json")  # fmt: skip
    assert ok_json(verified)["ok"] is True


# -- maker serve -----------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path, plugin: Path) -> Iterator[str]:
    """``maker serve`` on an ephemeral port, trusting the counting plugin; its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "maker", "serve", "--log", str(tmp_path / "serve.db"),
         "--port", "0", "--allow-plugin", "counting"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(plugin, MAKER_TOKEN=TOKEN, SPY_MARKER=str(tmp_path / "imported")),
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "listening on " in line, line
        yield line.split("listening on ", 1)[1].split()[0]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def _http(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, headers, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_plugin_is_served_over_http(tmp_path: Path, served: str) -> None:
    status, answer = _http(f"{served}/runs", {"task": REFERENCE, "params": {"n": 12}, "k": 2})
    assert status == 201, answer
    state: dict[str, Any] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, state = _http(served + answer["state"])
        if state.get("status") not in ("running", "queued"):
            break
        time.sleep(0.05)  # polling the run's state
    assert state["status"] == "succeeded", state
    assert (state["task"], state["task_params"], state["steps"]) == (REFERENCE, {"n": 12}, 12)
    # A request may not make the service import a module of its choosing.
    for task in ("spy:Counting", "os:getcwd"):
        status, refused = _http(f"{served}/runs", {"task": task, "params": {}})
        assert status == 403, refused
        assert "--allow-plugin" in refused["error"]
    assert not (tmp_path / "imported").exists()
    status, broken = _http(f"{served}/runs", {"task": "counting:Nope"})
    assert status == 400
    assert broken["error"] == "task plugin 'counting:Nope': module counting has no attribute 'Nope'"


# -- maker mcp -------------------------------------------------------------------------------


def test_a_plugin_is_run_verified_and_shown_over_mcp(tmp_path: Path, plugin: Path) -> None:
    pytest.importorskip("mcp")
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client

    marker = tmp_path / "imported"
    env = _env(plugin, SPY_MARKER=str(marker))
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "maker", "mcp", "--log", "mcp.db", "--allow-plugin", "counting"],
        env={name: env[name] for name in ("PYTHONPATH", "PYTHONUNBUFFERED", "SPY_MARKER")},
        cwd=str(tmp_path),
    )

    async def go() -> list[Any]:
        with (tmp_path / "stderr.txt").open("w") as errlog:
            async with Client(stdio_client(params, errlog=errlog)) as client:
                run = {"task": REFERENCE, "params": {"n": 9}, "k": 2, "wait": True}
                ran = await client.call_tool("run", run)
                assert not ran.is_error, ran.content
                assert isinstance(ran.structured_content, dict)
                run_id = ran.structured_content["run_id"]
                return [
                    ran.structured_content,
                    await client.call_tool("run_status", {"run_id": run_id}),
                    await client.call_tool("replay_verify", {"run_id": run_id}),
                    await client.call_tool("run", {"task": "spy:Counting"}),
                ]

    ran, status, verified, refused = anyio.run(go)
    assert ran["status"] == "succeeded"
    assert (ran["task"], ran["task_params"], ran["steps"]) == (REFERENCE, {"n": 9}, 9)
    assert status.structured_content["status"] == "succeeded"
    assert verified.structured_content["ok"] is True, verified.structured_content
    assert refused.is_error
    assert "--allow-plugin spy" in refused.content[0].text
    assert not marker.exists()


# -- the README's example ----------------------------------------------------------------------


def test_the_readmes_own_task_example_runs_as_written(tmp_path: Path) -> None:
    """The module of "Your own tasks" saved as mytasks.py, and its command lines run in that
    directory (the servers' lines are started by the tests above, not here)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Your own tasks\n", 1)[1].split("\n### ", 1)[0]
    module = re.findall(r"```py\n(.*?)```", section, flags=re.S)[0]
    (tmp_path / "mytasks.py").write_text(module, encoding="utf-8")
    commands = re.findall(r"```sh\n(.*?)```", section, flags=re.S)[0]
    ran = []
    for line in commands.strip().splitlines():
        words = shlex.split(line, comments=True)
        assert words[0] == "maker", line
        if words[1] in ("serve", "mcp"):
            continue
        done = subprocess.run(
            [sys.executable, "-m", *words],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env={**_env(tmp_path), "PYTHONPATH": str(ROOT)},  # found in the working directory
        )
        assert done.returncode == 0, (line, done.stderr)
        ran.append(words[1])
        if words[1] == "show":
            assert 'mytasks:Collatz {"start": 27}' in done.stdout
        if words[1] == "replay" and "--verify" in words:
            assert "reproduced exactly" in done.stdout
    assert ran == ["run", "show", "replay", "replay", "resume", "calibrate", "plan"]
