"""Samples per step with and without a matcher, on answers written in several forms.

The task is the arithmetic chain with ``free_form=True``: the simulated model writes each
result as digits (half the time), ``N.0`` (a quarter), an exponent form (an eighth) or ``N.00``
(an eighth), right with probability p, and the parser keeps what it wrote. Without a matcher the
four forms of the right value split its votes; with ``number`` they vote together. Each matcher
runs the same seeds (so the same sample outcomes before the runs' paths part), and the figure
is total samples over total steps, beside Eq 16's expectation for one rival.

    python -m benchmarks.matchers [--steps 1000] [--seeds 5] [--p 0.99] [--k 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile

import anyio

from events import StepDecided
from maker import PRESETS, Engine, Policy, SimulatedModel, expected_samples_per_step
from maker.tasks import Arithmetic
from replay import load_events

MATCHERS = ("exact", "number")


async def _run(
    path: str, steps: int, spec: str, p: float, k: int, seed: int
) -> tuple[bool, list[int]]:
    # The paper's model statistics (red flags, hard states, two rivals) at the chosen p.
    model = SimulatedModel(PRESETS["paper"].replace(p=p))
    task = Arithmetic(steps=steps, digits=6, seed=seed, free_form=True)
    async with Engine(log=path, client=model) as engine:
        result = await engine.run(task, policy=Policy(k=k, matcher=spec), seed=seed)
    events = await load_events(path, result.run_id)
    return result.ok, [e.samples for e in events if isinstance(e, StepDecided)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--p", type=float, default=0.99)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    args = parser.parse_args()
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in MATCHERS:
            per_step: list[int] = []
            ok = 0
            for seed in range(args.seeds):
                path = os.path.join(tmp, f"{spec}-{seed}.db")
                succeeded, samples = anyio.run(_run, path, args.steps, spec, args.p, args.k, seed)
                ok += succeeded
                per_step += samples
            mean = statistics.fmean(per_step)
            figures[spec] = {
                "runs_ok": ok,
                "steps": len(per_step),
                "samples_per_step": round(mean, 3),
                "se": round(statistics.stdev(per_step) / math.sqrt(len(per_step)), 3),
                "max_in_step": max(per_step),
            }
    v = 1.0 - PRESETS["paper"].malformed_rate - PRESETS["paper"].overlong_rate
    out = {
        "task": f"arithmetic free_form, {args.steps} steps x {args.seeds} seeds",
        "p": args.p,
        "k": args.k,
        "matchers": figures,
        "eq16_samples_per_step": round(expected_samples_per_step(args.p, args.k, v), 3),
        "ratio_number_to_exact": round(
            figures["number"]["samples_per_step"] / figures["exact"]["samples_per_step"], 3
        ),
    }
    if args.json:
        print(json.dumps(out))
        return
    print(f"{out['task']}, p {args.p}, k {args.k}")
    for spec, row in figures.items():
        print(
            f"  --matcher {spec:7} {row['samples_per_step']:7.3f} samples per step "
            f"(± {row['se']:.3f}), at most {row['max_in_step']} in a step, "
            f"{row['runs_ok']}/{args.seeds} runs succeeded"
        )
    print(f"  Eq 16 with red flags, one rival: {out['eq16_samples_per_step']:.3f} per step")
    print(f"  number / exact samples = {out['ratio_number_to_exact']:.3f}")


if __name__ == "__main__":
    main()
