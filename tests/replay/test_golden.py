"""Golden logs: logs written by schema version 1 must still decode, verify and replay.

The files in golden/ are committed and never rewritten for a released version. To add the logs
of a new schema version, run ``python -m tests.replay.test_golden vN`` and commit the new files
beside the old ones; a log added to a version later (a new field's golden log) is written alone
by ``python -m tests.replay.test_golden vN NAME`` (see ``_EXTRAS``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest

from events import (
    SCHEMA_VERSION,
    EventLog,
    RedFlagged,
    RunResumed,
    RunStarted,
    SampleCancelled,
    SampleFailed,
    SampleHedged,
    SampleReceived,
    StepAbandoned,
    StepDecided,
    StepStarted,
    VoteCounted,
)
from maker import (
    ClientError,
    Completion,
    Engine,
    Hedge,
    Limits,
    Policy,
    RedFlag,
    SampleRequest,
    Scheduler,
    SimConfig,
    SimulatedModel,
)
from maker.tasks import Arithmetic, Hanoi, HanoiAnswer
from replay import load_events, resume_run, summarize, verify_log, verify_run

GOLDEN = Path(__file__).parent / "golden"
NOISY = SimConfig(p=0.8, malformed_rate=0.08, overlong_rate=0.08, hard_fraction=0.05)


class Flaky:
    """The simulated model behind a flaky transport: every third sample fails twice first."""

    def __init__(self) -> None:
        self.inner = SimulatedModel(NOISY)
        self.attempts: dict[str, int] = {}

    @property
    def model(self) -> str:
        return self.inner.model

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    async def complete(self, request: SampleRequest) -> Completion:
        n = self.attempts[request.sample_id] = self.attempts.get(request.sample_id, 0) + 1
        if int(request.sample_id.split(":")[1]) % 3 == 2 and n <= 2:
            raise ClientError("injected", kind="server_error", retryable=True, retry_after=0.001)
        return await self.inner.complete(request)


async def _write(version: str) -> None:
    GOLDEN.mkdir(exist_ok=True)
    fast = Scheduler(Limits(backoff_base_s=0.001, backoff_cap_s=0.002))
    hanoi = GOLDEN / f"{version}-hanoi.db"
    async with Engine(log=hanoi, client=SimulatedModel(NOISY), scheduler=fast) as engine:
        await engine.run(
            Hanoi(3), policy=Policy(k=2, speculative=1), seed=11, run_id="golden-hanoi"
        )
    arithmetic = GOLDEN / f"{version}-arithmetic.db"
    async with Engine(log=arithmetic, client=Flaky(), scheduler=fast) as engine:
        await engine.run(
            Arithmetic(steps=6, digits=4, seed=3), policy=Policy(k=2), seed=5, run_id="golden-arith"
        )
    resumed = GOLDEN / f"{version}-resumed.db"
    async with Engine(log=resumed, client=SimulatedModel(NOISY), scheduler=fast) as engine:
        with anyio.CancelScope() as scope:
            decided = 0

            def cancel_at_three(event: object) -> None:
                nonlocal decided
                decided += isinstance(event, StepDecided)
                if decided == 3:
                    scope.cancel()

            await engine.run(
                Hanoi(3), policy=Policy(k=2), seed=12, run_id="golden-resumed",
                sinks=[cancel_at_three],
            )  # fmt: skip
    await resume_run(resumed)
    paths = [hanoi, arithmetic, resumed]
    if version != "v1":
        # Long enough for the compact layout to train its zstd dictionary (1,024 strings).
        long = GOLDEN / f"{version}-long.db"
        async with Engine(log=long, client=SimulatedModel(NOISY), scheduler=fast) as engine:
            await engine.run(Hanoi(9), policy=Policy(k=2), seed=13, run_id="golden-long")
        paths.append(long)
    if version not in ("v1", "v2"):
        # Pipelined: steps interleave, leaders change and speculative starts are abandoned.
        pipelined = GOLDEN / f"{version}-pipelined.db"
        async with Engine(log=pipelined, client=SimulatedModel(NOISY), scheduler=fast) as engine:
            await engine.run(
                Hanoi(3), policy=Policy(k=2, pipeline=3), seed=14, run_id="golden-pipelined"
            )
        paths.append(pipelined)
        # Hedged: a model with latency and stragglers, whose head step's stragglers get hedges.
        late = dataclasses.replace(NOISY, latency_ms=2.0, straggler_rate=0.2, straggler_s=0.1)
        hedged = GOLDEN / f"{version}-hedged.db"
        async with Engine(log=hedged, client=SimulatedModel(late), scheduler=fast) as engine:
            await engine.run(
                Hanoi(3),
                policy=Policy(k=2, pipeline=2, hedge=Hedge(min_s=0.005, warmup=3, share=0.5)),
                seed=15,
                run_id="golden-hedged",
            )
        paths.append(hedged)
    await _record(version, paths, {})


async def _provider_log(version: str) -> Path:
    """A run through the official OpenAI SDK against serve-sim: its answers carry the provider's
    response ids (added to schema version 3 after its first golden logs, as ``provider``)."""
    from maker.apps.serve_sim._serve_sim import SimServerConfig, serve_sim
    from maker.clients import close_client, make_client

    path = GOLDEN / f"{version}-provider.db"
    fast = Scheduler(Limits(backoff_base_s=0.001, backoff_cap_s=0.002))
    config = SimServerConfig(
        p=0.9, fault_rate=0.2, faults=("rate_limit", "server_error", "malformed"),
        retry_after_s=0.0, seed=17,
    )  # fmt: skip
    async with serve_sim(config) as server:
        client = make_client(
            "openai:sim-model", base_url=server.base_url + "/v1", api_key="golden", timeout=5.0
        )
        try:
            async with Engine(log=path, client=client, scheduler=fast) as engine:
                await engine.run(Hanoi(3), policy=Policy(k=2), seed=16, run_id="golden-provider")
        finally:
            await close_client(client)
    return path


async def _matched_log(version: str) -> Path:
    """A run under a matcher, on answers written in several forms: its policy records the
    matcher, and its votes and decisions the answers beside their keys (added to schema
    version 3 after its first golden logs, as ``matched``)."""
    path = GOLDEN / f"{version}-matched.db"
    fast = Scheduler(Limits(backoff_base_s=0.001, backoff_cap_s=0.002))
    async with Engine(log=path, client=SimulatedModel(NOISY), scheduler=fast) as engine:
        await engine.run(
            Arithmetic(steps=6, digits=4, seed=3, free_form=True),
            policy=Policy(k=2, matcher="text+number"),
            seed=18,
            run_id="golden-matched",
        )
    return path


_EXTRAS = {"provider": _provider_log, "matched": _matched_log}
"""Logs added to a version's golden set after it was first written, each by its own command
(``python -m tests.replay.test_golden vN NAME``), which leaves the set's other files alone."""


async def _write_extra(version: str, name: str) -> None:
    path = await _EXTRAS[name](version)
    expected_path = GOLDEN / f"{version}-expected.json"
    await _record(version, [path], json.loads(expected_path.read_text()))


async def _record(version: str, paths: list[Path], expected: dict[str, Any]) -> None:
    for path in paths:
        events = await load_events(path)
        summary = summarize(events)
        expected[path.name] = {
            "events": len(events),
            "status": summary.status,
            "steps": summary.steps,
            "samples": summary.samples,
            "winners": [e.winner for e in events if isinstance(e, StepDecided)],
        }
        with closing(sqlite3.connect(path)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        _export(path, _export_path(path))
    (GOLDEN / f"{version}-expected.json").write_text(json.dumps(expected, indent=1) + "\n")


def _export_path(log: Path) -> Path:
    # The long log's export is megabytes: only its digest is kept.
    return log.with_suffix(".export.sha256" if "long" in log.name else ".export.jsonl")


def _export(log: Path, out: Path) -> None:
    """``maker export`` of a log's one run, as a user would call it."""
    lines = subprocess.run(
        [sys.executable, "-m", "maker", "export", str(log)],
        check=True, capture_output=True, timeout=120,
    ).stdout  # fmt: skip
    if out.suffix == ".sha256":
        lines = hashlib.sha256(lines).hexdigest().encode() + b"\n"
    out.write_bytes(lines)
    for extra in ("-wal", "-shm", "-lock"):  # a reader's files and the run lock, empty once closed
        Path(f"{log}{extra}").unlink(missing_ok=True)


def _versions() -> list[str]:
    return sorted(p.name.split("-")[0] for p in GOLDEN.glob("v*-expected.json"))


def _cases() -> list[tuple[str, str]]:
    return [
        (version, name)
        for version in _versions()
        for name in json.loads((GOLDEN / f"{version}-expected.json").read_text())
    ]


def test_there_is_a_golden_set_for_the_current_schema_version() -> None:
    assert f"v{SCHEMA_VERSION}" in _versions()


@pytest.mark.parametrize(("version", "name"), _cases())
@pytest.mark.anyio
async def test_golden_logs_decode_verify_and_replay(
    tmp_path: Path, version: str, name: str
) -> None:
    expected = json.loads((GOLDEN / f"{version}-expected.json").read_text())[name]
    path = _copy(name, tmp_path)
    report = verify_log(path)
    assert all(run.ok for run in report.runs), report
    async with EventLog(path, mode="r") as log:
        (info,) = await log.runs()
        events = [e async for e in log.read(info.run_id)]
    summary = summarize(events)
    assert len(events) == expected["events"]
    assert (summary.status, summary.steps, summary.samples) == (
        expected["status"], expected["steps"], expected["samples"],
    )  # fmt: skip
    assert [e.winner for e in events if isinstance(e, StepDecided)] == expected["winners"]
    result = await verify_run(path, task=_task_for(name))
    assert result.ok, result.divergence
    assert result.checked > 0


def _task_for(name: str) -> Any:
    if "matched" in name:
        return Arithmetic(steps=6, digits=4, seed=3, free_form=True)
    if "arithmetic" in name:
        return Arithmetic(steps=6, digits=4, seed=3)
    return Hanoi(9) if "long" in name else Hanoi(3)


@pytest.mark.parametrize(("version", "name"), _cases())
def test_golden_logs_export_the_json_lines_recorded_with_them(
    tmp_path: Path, version: str, name: str
) -> None:
    """Decoding never changes: the v1 exports were made by the code before version 2 existed,
    and each later version's by the code that wrote its logs."""
    recorded = _export_path(GOLDEN / name)
    out = tmp_path / recorded.name
    _export(_copy(name, tmp_path), out)
    assert out.read_text().splitlines() == recorded.read_text().splitlines()


def test_the_long_golden_log_compresses_its_texts_with_a_trained_dictionary(
    tmp_path: Path,
) -> None:
    path = _copy(f"v{SCHEMA_VERSION}-long.db", tmp_path)
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM dictionaries").fetchone()[0] == 1
        kinds = Counter(data[0] >> 2 & 3 for (data,) in conn.execute("SELECT data FROM blobs"))
    assert kinds[2] > 100  # zstd with the dictionary (see events._compact's blob kinds)


def _copy(name: str, tmp_path: Path) -> Path:
    path = tmp_path / name
    shutil.copyfile(GOLDEN / name, path)  # never open the committed file itself
    return path


@pytest.mark.anyio
async def test_golden_logs_hold_what_they_are_meant_to_exercise(tmp_path: Path) -> None:
    hanoi = await load_events(_copy(f"v{SCHEMA_VERSION}-hanoi.db", tmp_path))
    assert any(isinstance(e, SampleCancelled) for e in hanoi)
    assert any(isinstance(e, RedFlagged) for e in hanoi)
    arithmetic = await load_events(_copy(f"v{SCHEMA_VERSION}-arithmetic.db", tmp_path))
    assert any(isinstance(e, SampleFailed) for e in arithmetic)
    resumed = await load_events(_copy(f"v{SCHEMA_VERSION}-resumed.db", tmp_path))
    assert any(isinstance(e, RunResumed) for e in resumed)
    assert any(isinstance(e, SampleCancelled) and e.reason == "run_cancelled" for e in resumed)
    provider = await load_events(_copy(f"v{SCHEMA_VERSION}-provider.db", tmp_path))
    answers = [e for e in provider if isinstance(e, SampleReceived)]
    assert answers
    assert all(str(e.response_id).startswith("chatcmpl-sim") for e in answers)
    assert any(isinstance(e, SampleFailed) for e in provider)
    matched = await load_events(_copy(f"v{SCHEMA_VERSION}-matched.db", tmp_path))
    started = matched[0]
    assert isinstance(started, RunStarted)
    assert started.policy["matcher"] == "text+number"
    assert any(isinstance(e, VoteCounted) and type(e.answer) is str for e in matched)
    assert any(isinstance(e, StepDecided) and type(e.answer) is str for e in matched)


@pytest.mark.anyio
async def test_golden_logs_of_pipelined_and_hedged_runs_hold_them(tmp_path: Path) -> None:
    names = {name for _, name in _cases()}
    pipelined_names = sorted(n for n in names if "pipelined" in n)
    assert f"v{SCHEMA_VERSION}-pipelined.db" in pipelined_names
    for name in pipelined_names:
        events = await load_events(_copy(name, tmp_path))
        assert any(isinstance(e, StepStarted) and e.speculative for e in events)
        assert any(isinstance(e, StepAbandoned) for e in events)
        assert any(isinstance(e, SampleCancelled) and e.reason == "misspeculated" for e in events)
    for name in sorted(n for n in names if "hedged" in n):
        events = await load_events(_copy(name, tmp_path))
        assert any(isinstance(e, SampleHedged) for e in events)


@pytest.mark.anyio
async def test_a_changed_parser_fails_on_a_golden_log_at_the_right_seq(tmp_path: Path) -> None:
    path = _copy(f"v{SCHEMA_VERSION}-hanoi.db", tmp_path)
    events = await load_events(path)

    class Picky(Hanoi):
        """Rejects any answer that moves disk 2."""

        def parse(self, text: str) -> HanoiAnswer:
            answer = super().parse(text)
            if answer.move[0] == 2:
                raise RedFlag("malformed", "disk 2 refused")
            return answer

    def moves_disk_two(text: str) -> bool:
        try:
            return Hanoi(3).parse(text).move[0] == 2
        except RedFlag:
            return False

    first = next(e for e in events if isinstance(e, SampleReceived) and moves_disk_two(e.text))
    result = await verify_run(path, task=Picky(3))
    assert not result.ok
    assert result.divergence is not None
    assert result.divergence.seq == first.seq + 1


if __name__ == "__main__":
    _version = sys.argv[1] if len(sys.argv) > 1 else f"v{SCHEMA_VERSION}"
    if len(sys.argv) > 2:
        anyio.run(_write_extra, _version, sys.argv[2])
    else:
        anyio.run(_write, _version)
