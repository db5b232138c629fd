"""The CLI end to end: the acceptance runs, the export, and one-line errors."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from events import RunFinished
from maker.apps.cli._cli import main
from maker.tasks import optimal_moves
from replay import load_events


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    else:  # pragma: no cover - main always exits
        code = 0
    out = capsys.readouterr()
    return code, out.out, out.err


def export(capsys: pytest.CaptureFixture[str], log: Path, *extra: str) -> list[dict[str, Any]]:
    code, out, err = cli(capsys, "export", str(log), "--format", "jsonl", *extra)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_ten_disks_at_p99_target_999_succeeds_and_the_export_proves_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, seed: int
) -> None:
    log = tmp_path / "run.db"
    code, out, err = cli(
        capsys, "run", "hanoi", "--disks", "10", "--p", "0.99", "--target", "0.999",
        "--seed", str(seed), "--log", str(log), "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["status"] == "succeeded"
    assert result["steps"] == 1023
    k = result["k"]
    assert k == 4  # Eq 14 at p = 0.99, t = 0.999, s = 1023
    for key in ("run_id", "samples", "red_flags", "wall_s"):
        assert key in result

    events = export(capsys, log)
    assert [e["seq"] for e in events] == list(range(len(events)))
    decided = [e for e in events if e["type"] == "step_decided"]
    moves = [tuple(json.loads(d["winner"])["move"]) for d in decided]
    assert moves == optimal_moves(10)

    # Each step's votes: the winner reaches a lead of k exactly at its decision, no one earlier.
    votes_by_step: dict[int, list[dict[str, Any]]] = {}
    for e in events:
        if e["type"] == "vote_counted":
            votes_by_step.setdefault(e["step"], []).append(e)
    for d in decided:
        votes = votes_by_step[d["step"]]
        for i, vote in enumerate(votes):
            tally = vote["tally"]
            for candidate, n in tally.items():
                rival = max((v for c, v in tally.items() if c != candidate), default=0)
                lead = n - rival
                if i < len(votes) - 1:
                    assert lead < k, (d["step"], i, tally)
                elif candidate == d["winner"]:
                    assert lead == k
        assert votes[-1]["candidate"] == d["winner"]
        assert votes[-1]["tally"] == d["votes"]


def test_a_model_below_one_half_fails_the_run_with_a_reason_and_a_nonzero_exit(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log = tmp_path / "bad.db"
    code, out, _ = cli(
        capsys, "run", "hanoi", "--disks", "6", "--p", "0.3", "--seed", "1", "--log", str(log),
        "--json", "--max-samples", "30",
    )  # fmt: skip
    assert code == 1
    result = json.loads(out)
    assert result["status"] == "failed"
    assert result["reason"]
    assert result["max_samples_in_step"] <= 30
    finished = export(capsys, log)[-1]
    assert finished["type"] == "run_finished"
    assert finished["status"] == "failed"


def test_arithmetic_runs_the_same_way(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    log = tmp_path / "arith.db"
    code, out, err = cli(
        capsys, "run", "arithmetic", "--steps", "40", "--digits", "5", "--p", "0.95", "--k", "3",
        "--seed", "4", "--log", str(log), "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert (result["status"], result["steps"], result["k"]) == ("succeeded", 40, 3)
    assert result["task_params"] == {"steps": 40, "digits": 5, "seed": 0}


def test_pipeline_and_hedge_flags_make_the_runs_policy(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log = tmp_path / "run.db"
    # The writer is beside the point here, and a thread starts faster than a process.
    flags = ["--log-writer", "thread", "--pipeline", "2", "--hedge", "0.9", "--hedge-min-s", "0.5"]
    code, out, err = cli(
        capsys, "run", "hanoi", "--disks", "3", "--log", str(log), *flags, "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    for counter in ("cancelled_samples", "misspeculated_samples", "misspeculated_steps"):
        assert result[counter] >= 0
    assert 0 <= result["hedged_samples"] <= result["samples"]
    policy = export(capsys, log)[0]["policy"]
    assert policy["pipeline"] == 2
    assert (policy["hedge"]["quantile"], policy["hedge"]["min_s"]) == (0.9, 0.5)
    off = tmp_path / "off.db"
    plain = [*flags[:2], "--pipeline", "0"]
    code, _, err = cli(capsys, "run", "hanoi", "--disks", "3", "--log", str(off), *plain)
    assert code == 0, err
    # Off is recorded as runs before pipelining and hedging were.
    assert "pipeline" not in export(capsys, off)[0]["policy"]


def test_run_pipelines_and_hedges_by_default_where_its_model_waits(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from maker.apps._options import AUTO_HEDGE_QUANTILE, AUTO_PIPELINE

    waits, at_once = tmp_path / "waits.db", tmp_path / "at-once.db"
    common = ["run", "hanoi", "--disks", "3", "--log-writer", "thread", "--json"]
    code, _, err = cli(capsys, *common, "--latency-ms", "1", "--log", str(waits))
    assert code == 0, err
    policy = export(capsys, waits)[0]["policy"]
    assert policy["pipeline"] == AUTO_PIPELINE
    assert policy["hedge"]["quantile"] == AUTO_HEDGE_QUANTILE
    # Zero latency: the model answers at once, and the run votes one step at a time.
    code, _, err = cli(capsys, *common, "--log", str(at_once))
    assert code == 0, err
    policy = export(capsys, at_once)[0]["policy"]
    assert "pipeline" not in policy
    assert "hedge" not in policy
    # Asked for, it is on whatever the model.
    code, _, err = cli(capsys, *common, "--pipeline", "3", "--log", str(tmp_path / "asked.db"))
    assert code == 0, err
    assert export(capsys, tmp_path / "asked.db")[0]["policy"]["pipeline"] == 3


def test_show_summarises_a_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    log = tmp_path / "show.db"
    code, out, _ = cli(capsys, "run", "hanoi", "--disks", "4", "--log", str(log), "--json")
    assert code == 0
    ran = json.loads(out)
    code, out, _ = cli(capsys, "show", str(log), "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["run_id"] == ran["run_id"]
    assert (shown["status"], shown["steps"], shown["samples"]) == ("succeeded", 15, ran["samples"])
    assert shown["red_flags"] == ran["red_flags"]
    assert shown["samples_per_step_max"] == ran["max_samples_in_step"]
    code, out, _ = cli(capsys, "show", str(log))
    assert code == 0
    assert ran["run_id"] in out
    assert "succeeded" in out


def test_export_needs_run_when_the_log_holds_several(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log = tmp_path / "two.db"
    ids = []
    for seed in ("1", "2"):
        code, out, _ = cli(
            capsys, "run", "hanoi", "--disks", "3", "--seed", seed, "--log", str(log), "--json"
        )
        assert code == 0
        ids.append(json.loads(out)["run_id"])
    code, _, err = cli(capsys, "export", str(log))
    assert code != 0
    assert "2 runs" in err
    assert len(err.strip().splitlines()) == 1
    events = export(capsys, log, "--run", ids[1][:10])
    assert {e["run_id"] for e in events} == {ids[1]}
    assert events[0]["type"] == "run_started"
    assert events[-1]["type"] == "run_finished"


def test_kmin_prints_k_alone_or_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "kmin", "--p", "0.9978", "--target", "0.95", "--steps", "1048575")
    assert (code, out) == (0, "3\n")
    code, out, _ = cli(
        capsys, "kmin", "--p", "0.99", "--target", "0.999", "--steps", "1023", "--json"
    )
    data = json.loads(out)
    assert data["k_min"] == 4
    assert data["p_run"] >= 0.999


def _not_a_log(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("hello\n" * 100)
    return path


def _other_sqlite(tmp_path: Path) -> Path:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
    return path


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["show", "{tmp}/missing.db"], "no such file"),
        (["show", "{text}"], "not a maker event log"),
        (["export", "{other}"], "not a maker event log"),
        (["show", "{log}", "--run", "nope"], "no run 'nope'"),
        (["kmin", "--p", "0.4", "--target", "0.9", "--steps", "10"], "greater than 0.5"),
        (["kmin", "--p", "0.9", "--target", "1.5", "--steps", "10"], "target"),
        (["run", "hanoi", "--disks", "0", "--log", "{tmp}/x.db"], "--disks"),
        (["run", "hanoi", "--digits", "3", "--log", "{tmp}/x.db"], "does not apply"),
        (["run", "chess", "--log", "{tmp}/x.db"], "chess"),
        (["run", "hanoi", "--log", "{tmp}/x.db", "--k", "2", "--target", "0.9"], "not both"),
        (["run", "hanoi", "--log", "{tmp}/x.db", "--model", "gpt-9"], "unknown model"),
        (["run", "hanoi", "--log", "{tmp}/x.db", "--frobnicate"], "frobnicate"),
        (["run", "hanoi", "--log", "{tmp}/x.db", "--pipeline", "-1"], "--pipeline"),
        (["run", "hanoi", "--log", "{tmp}/x.db", "--hedge", "1.5"], "--hedge"),
        (["run", "hanoi", "--log", "{tmp}/x.db", "--hedge", "nan"], "--hedge: must be 0 (off)"),
        (["run", "hanoi", "--log", "{tmp}/x.db", "--hedge-min-s", "1"], "needs --hedge"),
        (["show"], "FILE"),
    ],
)
def test_bad_input_is_one_line_and_a_nonzero_exit(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], needle: str
) -> None:
    log = tmp_path / "ok.db"
    assert cli(capsys, "run", "hanoi", "--disks", "2", "--log", str(log), "--json")[0] == 0
    subs = {
        "tmp": str(tmp_path),
        "text": str(_not_a_log(tmp_path)),
        "other": str(_other_sqlite(tmp_path)),
        "log": str(log),
    }
    code, out, err = cli(capsys, *[a.format(**subs) for a in args])
    assert code != 0
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("maker: error: ")
    assert needle in lines[0]
    assert not (tmp_path / "missing.db").exists()


def test_the_installed_command_prints_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "maker", "show", str(_not_a_log(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("maker: error: ")


def test_ctrl_c_stops_cleanly_and_prints_the_resume_command(tmp_path: Path) -> None:
    log = tmp_path / "int.db"
    proc = subprocess.Popen(
        # Simulated latency, not CPU, keeps the run going while the test waits to interrupt it,
        # however loaded the machine: 1,023 steps one at a time take over 5 s.
        [sys.executable, "-m", "maker", "run", "hanoi", "--disks", "10", "--latency-ms", "5",
         "--pipeline", "0", "--hedge", "0", "--log", str(log), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        while proc.poll() is None and _events_in(log) < 2000:
            time.sleep(0.005)  # polling the file, not measuring time
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("maker: interrupted; the log is consistent; continue with: ")
    command = lines[0].split("continue with: ")[1].split()
    assert command[:3] == ["maker", "resume", str(log)]
    run_id = command[4]
    last = anyio.run(load_events, log, run_id)[-1]
    assert isinstance(last, RunFinished)
    assert last.status == "cancelled"
    resumed = subprocess.run(
        [sys.executable, "-m", "maker", *command[1:], "--json", "--no-progress"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    assert (result["status"], result["steps"], result["resumed"]) == ("succeeded", 1023, True)


def _events_in(log: Path) -> int:
    if not log.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{log}?mode=ro", uri=True) as conn:
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_resuming_a_finished_run_reports_it_and_exits_zero_even_if_it_failed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log = tmp_path / "failed.db"
    code, out, _ = cli(
        capsys, "run", "hanoi", "--disks", "4", "--p", "0.3", "--max-samples", "20",
        "--log", str(log), "--json",
    )  # fmt: skip
    assert code == 1
    before = log.read_bytes()
    code, out, err = cli(capsys, "resume", str(log), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert (result["status"], result["resumed"]) == ("failed", False)
    assert log.read_bytes() == before
    # The table says the simulated model's cost is unknown, as run and show do, not $0.0000.
    code, out, err = cli(capsys, "resume", str(log))
    assert code == 0, err
    [cost] = [line for line in out.splitlines() if line.startswith("cost")]
    assert cost.split(None, 1)[1] == "unknown (no price for sim)"


def test_replay_verify_verify_and_revote_from_the_command_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log = tmp_path / "r.db"
    assert cli(capsys, "run", "hanoi", "--disks", "5", "--p", "0.9", "--log", str(log))[0] == 0
    code, out, _ = cli(capsys, "replay", str(log), "--verify", "--json")
    assert code == 0
    verified = json.loads(out)
    assert verified["ok"] is True
    assert verified["checked"] == verified["recorded"] > 100
    code, out, _ = cli(capsys, "verify", str(log))
    assert code == 0
    assert "ok" in out
    code, out, _ = cli(capsys, "replay", str(log), "--k", "1", "--json")
    assert code == 0
    revote = json.loads(out)
    assert revote["samples_saved"] > 0

    # Edit one stored event: verify names it, and replay and resume refuse the log in one line.
    with sqlite3.connect(log) as conn:
        conn.execute("DROP TRIGGER events_append_only_update")
        # A forged timestamp: invisible to replay, caught by the chain.
        conn.execute("UPDATE events SET ts = ts + 1.0 WHERE seq = 7")
    code, out, _ = cli(capsys, "verify", str(log))
    assert code == 1
    assert "seq 7" in out
    for args in (["replay", str(log), "--verify"], ["resume", str(log)]):
        code, out, err = cli(capsys, *args)
        assert code == 1
        assert len(err.strip().splitlines()) == 1
        assert "seq 7" in err
    code, _, err = cli(capsys, "replay", str(log))
    assert code == 2
    assert "--verify" in err


def test_otel_live_json_and_export_from_the_log_give_the_same_spans(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log, live, exported = tmp_path / "t.db", tmp_path / "live.jsonl", tmp_path / "export.jsonl"
    code, _, err = cli(
        capsys, "run", "hanoi", "--disks", "4", "--log", str(log), "--otel", f"json:{live}",
        "--json",
    )  # fmt: skip
    assert code == 0, err
    code, _, err = cli(
        capsys, "export-otel", str(log), "--exporter", "json", "--out", str(exported)
    )
    assert code == 0, err

    def spans(path: Path) -> dict[str, tuple[str, str]]:
        out = {}
        for line in path.read_text().splitlines():
            for resource in json.loads(line)["resourceSpans"]:
                for scope in resource["scopeSpans"]:
                    for span in scope["spans"]:
                        out[span["spanId"]] = (span["name"], span.get("parentSpanId", ""))
        return out

    live_spans, exported_spans = spans(live), spans(exported)
    assert live_spans == exported_spans
    assert len(live_spans) > 15  # a run span, 15 step spans and their sample spans
    code, _, err = cli(capsys, "run", "hanoi", "--log", str(log), "--otel", "carrier-pigeon")
    assert code == 2
    assert "unknown exporter" in err


@pytest.mark.parametrize("pipelined", [False, True], ids=["one-at-a-time", "pipelined"])
def test_progress_counts_steps_samples_and_red_flags_of_a_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pipelined: bool
) -> None:
    # The bar's figures come from the events alone: feed a recorded run to a fresh sink and
    # compare with what the run reported (a pipelined run's abandoned starts drew samples too).
    from maker.apps.cli._cli import _ProgressSink

    log = tmp_path / "log.db"
    args = ["run", "hanoi", "--disks", "5", "--p", "0.85", "--k", "2", "--json", "--log", str(log)]
    if pipelined:
        args += ["--pipeline", "3"]
    code, out, err = cli(capsys, *args)
    # At p = 0.85 and k = 2 a pipelined run (other sample ids, other draws) may decide a wrong
    # move and fail its budget: the bar counts the same either way.
    assert code in ((0, 1) if pipelined else (0,)), err
    result = json.loads(out)
    assert result["red_flags"] > 0
    sink = _ProgressSink(None, 2, enabled=False)
    for event in anyio.run(load_events, log):
        sink(event)
    assert (sink.steps, sink.samples, sink.red_flags) == (
        result["steps"],
        result["samples"],
        result["red_flags"],
    )
    if pipelined:
        assert result["misspeculated_samples"] > 0


def test_show_tells_a_pipelined_run_by_its_decided_starts_and_counts_the_rest(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from ..replay import _pipelined as P

    log = P.write_log(tmp_path / "pipelined.db")
    code, out, err = cli(capsys, "show", str(log), "--json", "--steps", "4")
    assert code == 0, err
    shown = json.loads(out)
    assert (shown["steps"], shown["samples"]) == (P.STEPS, P.SAMPLES)
    assert shown["misspeculated_samples"] == P.MISSPECULATED_SAMPLES
    assert shown["misspeculated_steps"] == P.MISSPECULATED_STEPS
    assert shown["hedged_samples"] == P.HEDGED_SAMPLES
    assert shown["cancelled_by_reason"] == dict(P.CANCELLED)
    per_step = [P.DECIDED[n]["samples"] for n in range(P.STEPS)]
    assert shown["samples_per_step_mean"] == sum(per_step) / P.STEPS
    assert shown["samples_per_step_max"] == max(per_step)
    hardest = {h["step"]: h for h in shown["hardest_steps"]}
    for n, want in P.DECIDED.items():
        assert (hardest[n]["samples"], hardest[n]["votes"], hardest[n]["branch"]) == (
            want["samples"],
            want["votes"],
            want["branch"],
        )
    code, out, _ = cli(capsys, "show", str(log))
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "4 samples of 2 abandoned starts" in rows["misspeculated"]
    assert "2 samples" in rows["hedged"]
    assert "5 (3 decided, 2 misspeculated)" in rows["cancelled"]


def test_show_steps_lists_the_starts_abandoned_before_each_deciding_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from events import StepAbandoned

    from ..replay import _pipelined as P

    abandoned: dict[int, list[int]] = {}
    for event in P.pipelined_events():
        if isinstance(event, StepAbandoned):
            abandoned.setdefault(event.step, []).append(event.samples)
    assert abandoned, "the hand-built run abandons starts"
    log = P.write_log(tmp_path / "pipelined.db")
    code, out, err = cli(capsys, "show", str(log), "--steps", str(P.STEPS))
    assert code == 0, err
    lines = out.splitlines()
    at = lines.index("steps that needed the most samples")
    assert lines[at + 1].split() == [
        "step", "samples", "red", "flags", "failures", "votes", "abandoned", "starts",
    ]  # fmt: skip
    listed: dict[int, str] = {}
    for line in lines[at + 2 :]:
        first, rest = line.split(maxsplit=1)
        listed[int(first)] = rest
    assert sorted(listed) == list(range(P.STEPS))
    for n, rest in listed.items():
        if n in abandoned:
            samples = sum(abandoned[n])
            assert rest.endswith(f"{len(abandoned[n])} ({samples} samples)"), rest
        else:
            assert rest.endswith("-"), rest
    # A run that speculated nothing keeps the table as it was.
    from ..events._factory import run_events

    plain = P.write_log(tmp_path / "plain.db", run_events("plain", 6))
    code, out, _ = cli(capsys, "show", str(plain), "--steps", "2")
    assert code == 0
    assert "steps that needed the most samples" in out
    assert "abandoned" not in out


def test_show_of_a_run_that_neither_speculated_nor_hedged_prints_no_such_rows(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from ..events._factory import run_events
    from ..replay._pipelined import write_log

    log = write_log(tmp_path / "plain.db", run_events("plain", 6))
    code, out, _ = cli(capsys, "show", str(log))
    assert code == 0
    assert "misspeculated" not in out
    assert "hedged" not in out
    assert "cancelled" not in out
    code, out, _ = cli(capsys, "show", str(log), "--json")
    shown = json.loads(out)
    assert (shown["steps"], shown["samples"]) == (6, 18)
    assert shown["misspeculated_samples"] == shown["misspeculated_steps"] == 0
    assert shown["hedged_samples"] == 0


@pytest.mark.parametrize(
    ("words", "cword", "want"),
    [
        ("maker re", 1, {"replay", "report", "resume"}),
        ("maker run hanoi --di", 3, {"--disks", "--digits"}),
        ("maker export-otel x.db --exporter ", 4, {"console", "otlp", "json"}),
        ("maker replay x.db --v", 3, {"--verify"}),
    ],
)
def test_shell_completion_offers_commands_options_and_choices(
    words: str, cword: int, want: set[str]
) -> None:
    # As the README's startup lines ask for it: click's completion protocol, in a real process.
    done = subprocess.run(
        [sys.executable, "-m", "maker"],
        env={
            **os.environ,
            "_MAKER_COMPLETE": "bash_complete",
            "COMP_WORDS": words,
            "COMP_CWORD": str(cword),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    offered = {line.split(",", 1)[1] for line in done.stdout.splitlines() if "," in line}
    assert want <= offered, offered
    if not words.endswith(" "):
        assert all(word.startswith(words.split()[-1]) for word in offered), offered


@pytest.mark.parametrize(
    ("shell", "marker"),
    [("bash", "complete -o"), ("zsh", "compdef"), ("fish", "complete --no-files")],
)
def test_the_completion_scripts_of_the_readme_are_printed(shell: str, marker: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "maker"],
        env={**os.environ, "_MAKER_COMPLETE": f"{shell}_source"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert marker in done.stdout
    assert "_MAKER_COMPLETE" in done.stdout
