"""The paper's run end to end: 20-disk Hanoi, then every reading command on its log.

Runs Towers of Hanoi (20 disks by default: 1,048,575 steps) on the simulated model with the
paper's statistics, k = 3 and the full log, in a child process (`benchmarks._million_run`, which
is `maker run hanoi --preset paper` plus a sink that reads RSS at milestone steps). Then times
`maker verify`, `maker replay --verify` and `maker report` on the log, each in its own process,
and measures raw SQLite on the same rows.

    python -m benchmarks.million [--disks 20] [--k 3] [--seed 0] [--log PATH] [--keep]
                                 [--skip-replay] [--skip-report] [--json]

It prints:
- the wall time of each of the four commands, and the peak RSS of each (``ru_maxrss`` of the
  child, from ``os.wait4``; for the run, whose log writer is a process of its own, the sum of
  the two processes' peaks); for the run also its RSS at milestone steps and at the end;
- bytes per sample: the log's size (main file plus WAL, after a checkpoint) per
  ``sample_received``; the run's events per second;
- raw SQLite on the same rows: the layout of every table, index and trigger copied from the log's
  own ``sqlite_master`` (so it follows whatever schema version the log has) into a fresh file with
  the log's pragmas (WAL, synchronous=NORMAL), then every row of every table copied in, read in
  chunks and inserted in transactions of 4096 rows; only the inserts and commits are timed. The
  ratio compares the same rows on both sides: all rows of all tables of the final file, per second
  of the engine's run (from its first event to its final flush) against per second of raw inserts.
  The engine did more for those rows (events, hashing, head upserts per batch, the voting itself):
  the ratio is what all of that costs against SQLite alone, not an apples-to-apples insert test.

Nothing is asserted about time: it is a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from benchmarks._sqlite import BATCH, raw_inserts

MILESTONES = (1_000, 10_000, 100_000, 1_000_000)
"""Steps at which the run's RSS is read, besides a quarter, a half and three quarters of it."""


class Finished:
    """A child process that ran to its end: its exit code, wall time and peak RSS."""

    def __init__(self, returncode: int, wall_s: float, maxrss_kb: int, output: str) -> None:
        self.returncode = returncode
        self.wall_s = wall_s
        self.maxrss_kb = maxrss_kb
        self.output = output


def _maker(*args: str) -> list[str]:
    return [sys.executable, "-m", "maker", *args]


def _wait(proc: subprocess.Popen[str], began: float) -> tuple[int, float, int]:
    # os.wait4 reaps the child and gives its own rusage: the peak RSS of that process alone.
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, wall, int(usage.ru_maxrss)  # KiB on Linux


def _timed(command: list[str], out: IO[str]) -> Finished:
    """Run a reading command with its output in a file (never a pipe that could fill)."""
    out.seek(0)
    out.truncate()
    began = time.perf_counter()
    proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True)
    code, wall, rss = _wait(proc, began)
    out.seek(0)
    return Finished(code, wall, rss, out.read())


def _run(log: str, args: argparse.Namespace) -> tuple[Finished, list[dict[str, Any]], Any]:
    steps = 2**args.disks - 1
    marks = {m for m in MILESTONES if m < steps} | {steps // 4, steps // 2, 3 * steps // 4}
    command = [sys.executable, "-m", "benchmarks._million_run", log, "--disks", str(args.disks),
               "--k", str(args.k), "--seed", str(args.seed),
               "--milestones", ",".join(str(m) for m in sorted(marks) if m > 0)]  # fmt: skip
    began = time.perf_counter()
    # A handful of short lines, read as they come: the pipe cannot fill.
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    milestones: list[dict[str, Any]] = []
    result: Any = None
    for line in proc.stdout:
        record = json.loads(line)
        if record.get("result"):
            result = record
        else:
            milestones.append(record)
            if not args.json:
                print(
                    f"  step {record['milestone']:>9,}: {record['elapsed_s']:8.1f} s,"
                    f" RSS {record['rss_kb'] / 1024:7.1f} MiB, {record['commits']:,} commits,"
                    f" {record['pending']:,} events not yet committed",
                    flush=True,
                )
    proc.stdout.close()
    code, wall, rss = _wait(proc, began)
    return Finished(code, wall, rss, ""), milestones, result


def _log_bytes(path: str) -> int:
    """The log's size after a checkpoint: the main file plus whatever WAL is left."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(os.path.getsize(path + tail) for tail in ("", "-wal") if os.path.exists(path + tail))


def _mib(kb: int) -> float:
    return round(kb / 1024, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disks", type=int, default=20)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log", help="where to write the log (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the log and the report")
    parser.add_argument("--skip-replay", action="store_true", help="skip `maker replay --verify`")
    parser.add_argument("--skip-report", action="store_true", help="skip `maker report`")
    parser.add_argument("--skip-raw", action="store_true", help="skip the raw SQLite inserts")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    if args.log is not None and os.path.exists(args.log):
        parser.error(f"{args.log} exists: give a new --log path")
    tmp = tempfile.mkdtemp(prefix="million-")
    log = args.log or os.path.join(tmp, "million.db")
    figures: dict[str, Any] = {"disks": args.disks, "k": args.k, "seed": args.seed, "log": log}
    try:
        if not args.json:
            steps = 2**args.disks - 1
            print(f"{args.disks}-disk Hanoi ({steps:,} steps), paper preset, k={args.k}")
        run, milestones, result = _run(log, args)
        if run.returncode != 0 or result is None:
            sys.exit(f"the run failed with exit code {run.returncode}")
        events = int(result["appended"])
        samples = int(result["events_by_type"].get("sample_received", 0))
        size = _log_bytes(log)
        figures |= {
            "status": result["status"],
            "steps": result["steps"],
            "samples": result["samples"],
            "events": events,
            "batches": result["batches"],
            "run_wall_s": round(run.wall_s, 3),
            "engine_wall_s": result["engine_wall_s"],
            "events_per_s": round(events / result["engine_wall_s"], 1),
            "steps_per_s": round(result["steps"] / result["engine_wall_s"], 1),
            # The run is two processes with the writer in its own: the peak is the sum of
            # their peaks (an upper bound of their peak together), each also given alone.
            "run_peak_rss_mib": _mib(max(run.maxrss_kb, int(result["hwm_kb"]))),
            "run_engine_peak_rss_mib": _mib(run.maxrss_kb),
            "run_writer_peak_rss_mib": _mib(int(result["writer_hwm_kb"])),
            "run_end_rss_mib": _mib(result["rss_kb"]),
            "rss_mib_at_step": {m["milestone"]: _mib(m["rss_kb"]) for m in milestones},
            "pending_at_step": {m["milestone"]: m["pending"] for m in milestones},
            "log_bytes": size,
            "bytes_per_sample": round(size / samples, 1) if samples else None,
        }
        with tempfile.TemporaryFile("w+") as out:
            readers = [("verify", _maker("verify", log))]
            if not args.skip_replay:
                readers.append(("replay_verify", _maker("replay", log, "--verify")))
            if not args.skip_report:
                readers.append(("report", _maker("report", log, "--out", os.path.join(tmp, "r"))))
            for name, command in readers:
                done = _timed(command, out)
                if done.returncode != 0:
                    sys.exit(f"{' '.join(command[2:])} exited {done.returncode}:\n{done.output}")
                figures[f"{name}_wall_s"] = round(done.wall_s, 3)
                figures[f"{name}_peak_rss_mib"] = _mib(done.maxrss_kb)
        if not args.skip_raw:
            event_rows, all_rows, raw_s = raw_inserts(log, os.path.join(tmp, "raw.db"))
            engine_rows_per_s = all_rows / result["engine_wall_s"]
            figures |= {
                "rows_events_table": event_rows,
                "rows_all_tables": all_rows,
                "raw_insert_s": round(raw_s, 3),
                "raw_rows_per_s": round(all_rows / raw_s, 1),
                "engine_rows_per_s": round(engine_rows_per_s, 1),
                "engine_vs_raw_ratio": round(engine_rows_per_s / (all_rows / raw_s), 4),
            }
    finally:
        if args.keep:
            figures["kept"] = tmp if args.log is None else f"{log} and {tmp}"
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            if args.log is not None:
                for tail in ("", "-wal", "-shm"):
                    Path(log + tail).unlink(missing_ok=True)

    if args.json:
        print(json.dumps(figures))
        return
    _print(figures)


def _print(f: dict[str, Any]) -> None:
    print(
        f"  {f['status']}: {f['steps']:,} steps, {f['samples']:,} samples, {f['events']:,} events"
        f" in {f['batches']:,} commits"
    )
    print(f"  {'':16}{'wall s':>10}{'peak RSS MiB':>14}")
    print(f"  {'run':16}{f['run_wall_s']:>10.2f}{f['run_peak_rss_mib']:>14.1f}"
          f"   (engine {f['engine_wall_s']:.2f} s: {f['steps_per_s']:,.0f} steps/s,"
          f" {f['events_per_s']:,.0f} events/s)")  # fmt: skip
    for name, label in (("verify", "verify"), ("replay_verify", "replay --verify"),
                        ("report", "report")):  # fmt: skip
        if f"{name}_wall_s" in f:
            print(f"  {label:16}{f[name + '_wall_s']:>10.2f}{f[name + '_peak_rss_mib']:>14.1f}")
    steps = ", ".join(f"{m:,}: {r}" for m, r in f["rss_mib_at_step"].items())
    print(
        f"  run peak RSS MiB: {f['run_engine_peak_rss_mib']} (engine)"
        f" + {f['run_writer_peak_rss_mib']} (writer process)"
    )
    print(f"  run RSS MiB at step {steps}; at the end: {f['run_end_rss_mib']}")
    print(
        f"  log {f['log_bytes']:,} bytes after a checkpoint:"
        f" {f['bytes_per_sample']} bytes per sample_received"
    )
    if "raw_rows_per_s" in f:
        print(
            f"  raw SQLite: {f['rows_all_tables']:,} rows ({f['rows_events_table']:,} in events)"
            f" in {f['raw_insert_s']:.2f} s = {f['raw_rows_per_s']:,.0f} rows/s,"
            f" batches of {BATCH}"
        )
        print(
            f"  engine {f['engine_rows_per_s']:,.0f} rows/s (the same rows) ÷ raw rows/s"
            f" = {f['engine_vs_raw_ratio']}"
        )
    if "kept" in f:
        print(f"  kept: {f['kept']}")


if __name__ == "__main__":
    main()
