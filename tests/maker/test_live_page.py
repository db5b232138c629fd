"""The live page of ``maker serve`` in a real headless Chromium: it follows a run on the
simulated model, held part way by an ordering point, to its end, and what it shows (its
figures, its convergence plot's data, the final report) is checked against counts made here
from the log. A finished run opens the same page, from the log.

Chromium and its driver are Debian's ``chromium`` and ``chromium-driver`` packages (``.ci/run``
installs them); the page is driven over WebDriver with Selenium. Where they are missing the
test skips saying so, but under CI (``CI`` set) it fails: there it must run. Screenshots of
each stage are saved in the test's temporary directory, to look at when it fails.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import pytest

from events import (
    AnyEvent,
    RedFlagged,
    SampleFailed,
    SampleReceived,
    SampleRequested,
    StateChanged,
    StepDecided,
    StepStarted,
    VoteCounted,
)
from maker import Engine, Policy, SampleRequest, SimConfig, SimulatedModel, serve
from maker.core import Completion
from maker.tasks import Hanoi

from ._fakes import read_events

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,2000",
)
HELD_AT = 20
"""The run's samples from this step on wait until the test lets them go."""
WAIT_S = 60.0
"""The longest the test waits for the page to show a state (a failure, not a timing check)."""

pytestmark = pytest.mark.anyio


def _browser_or_skip() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (the dev extra)")
    if not missing:
        return
    message = (
        f"the live page's browser test needs {', '.join(missing)}: "
        "apt-get install -y chromium chromium-driver (.ci/run does)"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _chromium(profile: Path, log: Path) -> WebDriver:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    # Both paths given: Selenium then looks nothing up and downloads nothing.
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(log))
    return webdriver.Chrome(service=service, options=options)


class Gated:
    """The simulated model, with an ordering point: a sample of step ``held_at`` or later waits
    until :meth:`release`."""

    def __init__(self, inner: SimulatedModel, held_at: int) -> None:
        self.inner = inner
        self.held_at = held_at
        self.released = anyio.Event()

    @property
    def model(self) -> str:
        return self.inner.model

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def release(self) -> None:
        self.released.set()

    async def complete(self, request: SampleRequest) -> Completion:
        if request.step >= self.held_at:
            await self.released.wait()
        return await self.inner.complete(request)


_SHOWN = """
const value = (id) => Number(document.getElementById(id).dataset.value);
const figure = document.getElementById("live-convergence");
const final = document.getElementById("final");
const error = document.getElementById("error");
return {
  seq: Number(document.body.dataset.seq),
  status: document.body.dataset.status,
  final: document.body.dataset.final || "",
  steps: value("steps"),
  samples: value("samples"),
  per_step: value("per-step"),
  red_flags: value("red-flags"),
  failures: value("failures"),
  tokens: value("spend"),
  votes: value("votes"),
  convergence: figure.dataset.json ? JSON.parse(figure.dataset.json) : null,
  final_summary: final.dataset.summary ? JSON.parse(final.dataset.summary) : null,
  final_plots: Array.from(document.querySelectorAll("#final-charts figure svg")).length,
  hardest_rows: document.querySelectorAll("#hardest tr").length,
  error: error.hidden ? "" : error.textContent,
};
"""


def _expected(events: Sequence[AnyEvent]) -> dict[str, Any]:
    """What the page should show after ``events``, counted plainly from them."""
    decided = [e for e in events if isinstance(e, StepDecided)]
    steps = [e.step + 1 for e in events if isinstance(e, StateChanged)]
    received = [e for e in events if isinstance(e, SampleReceived)]
    started = {e.step for e in events if isinstance(e, StepStarted)}
    needed = Counter(sum(e.votes.values()) for e in decided)
    undecided = [len(started)]
    for r in range(1, max(needed, default=0) + 1):
        undecided.append(undecided[-1] - needed[r])
    return {
        "steps": steps[-1] if steps else 0,
        "samples": sum(isinstance(e, SampleRequested) for e in events),
        "per_step": sum(e.samples for e in decided) / len(decided) if decided else 0,
        "red_flags": sum(isinstance(e, RedFlagged) for e in events),
        "failures": sum(isinstance(e, SampleFailed) for e in events),
        "tokens": sum(e.input_tokens + e.output_tokens for e in received),
        "votes": sum(isinstance(e, VoteCounted) for e in events),
        "undecided": undecided,
    }


def _check(shown: dict[str, Any], events: Sequence[AnyEvent]) -> None:
    """The page's figures are those of the log up to the last event the page folded."""
    upto = [e for e in events if e.seq <= shown["seq"]]
    assert upto[-1].seq == shown["seq"]
    expected = _expected(upto)
    for name in ("steps", "samples", "red_flags", "failures", "tokens", "votes"):
        assert shown[name] == expected[name], name
    assert shown["per_step"] == pytest.approx(expected["per_step"])
    assert shown["convergence"]["undecided"] == expected["undecided"]
    assert shown["error"] == ""


async def _until(driver: WebDriver, shot: Path, ready: Callable[[dict[str, Any]], bool]) -> Any:
    """Poll the page until ``ready`` holds of what it shows; a screenshot either way."""

    def poll() -> dict[str, Any]:
        deadline = time.monotonic() + WAIT_S
        while True:
            shown: dict[str, Any] = driver.execute_script(_SHOWN)
            if ready(shown) or time.monotonic() > deadline:
                driver.save_screenshot(str(shot))
                return shown
            time.sleep(0.05)

    shown = await anyio.to_thread.run_sync(poll)
    assert ready(shown), f"the page did not get there; it shows {json.dumps(shown)[:600]} ({shot})"
    return shown


async def test_the_live_page_follows_a_run_to_the_end_and_shows_what_the_log_holds(
    tmp_path: Path,
) -> None:
    _browser_or_skip()
    log = tmp_path / "live.db"
    model = Gated(
        SimulatedModel(SimConfig(p=0.97, latency_ms=2.0, malformed_rate=0.02, overlong_rate=0.02)),
        HELD_AT,
    )
    driver = await anyio.to_thread.run_sync(
        _chromium, tmp_path / "profile", tmp_path / "chromedriver.log"
    )
    try:
        async with Engine(log=log, client=model) as engine, serve(engine) as server:
            handle = engine.start(Hanoi(6), policy=Policy(k=3), seed=3)
            page = f"{server.base_url}/runs/{handle.run_id}/live"
            assert server.token
            await anyio.to_thread.run_sync(driver.get, f"{page}#token={server.token}")

            # Held at step 20: the page shows the run part way, as the log has it so far.
            mid = await _until(
                driver,
                tmp_path / "live-held.png",
                lambda shown: shown["steps"] >= HELD_AT and shown["status"] == "running",
            )
            await engine.log.flush()
            _check(mid, await read_events(log, handle.run_id))
            assert mid["steps"] == HELD_AT
            assert mid["final"] == ""
            # The token went from the address bar once the page had it.
            assert "token" not in await anyio.to_thread.run_sync(lambda: driver.current_url)

            model.release()
            result = await handle.result()
            assert result.ok
            end = await _until(driver, tmp_path / "live-end.png", lambda s: s["final"] == "shown")
            events = await read_events(log, handle.run_id)
            assert end["seq"] == events[-1].seq
            assert end["status"] == "succeeded"
            _check(end, events)
            assert end["steps"] == 63
            assert end["convergence"]["undecided"][-1] == 0
            assert end["convergence"]["predicted"] is not None
            # The final report: the server's summary and every plot of `maker report`.
            summary = end["final_summary"]
            assert (summary["steps"], summary["samples"], summary["votes"]) == (
                63,
                result.samples,
                sum(isinstance(e, VoteCounted) for e in events),
            )
            assert end["final_plots"] == 9
            assert end["hardest_rows"] == 11  # a header and the ten hardest steps

            # A finished run opens the same page, from the log alone.
            await anyio.to_thread.run_sync(driver.get, "about:blank")
            await anyio.to_thread.run_sync(driver.get, page)  # the tab kept the token
            again = await _until(
                driver, tmp_path / "live-finished.png", lambda s: s["final"] == "shown"
            )
            _check(again, events)
            assert again["final_summary"] == summary
    finally:
        await anyio.to_thread.run_sync(driver.quit)
