"""Adaptive k against fixed k_min when the initial guess of p is pessimistic.

Both policies start from the same guess of p (0.8 by default) for a target success probability;
the simulated model's real p is higher (0.99). Fixed k is Eq 14's k_min at the guess; adaptive k
starts there and follows the run's own votes. Over several seeds it prints, for each policy, how
many runs succeeded (every winner equal to the optimal solution) and the samples they used.

    python -m benchmarks.adaptive_k [--disks 10] [--seeds 5] [--guess 0.8] [--p 0.99]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import anyio

from events import StepDecided
from maker import AdaptiveK, Engine, Policy, SimConfig, SimulatedModel, k_min
from maker.tasks import Hanoi, optimal_moves
from replay import load_events


async def _run(path: str, disks: int, policy: Policy, p: float, seed: int) -> tuple[bool, int]:
    async with Engine(log=path, client=SimulatedModel(SimConfig(p=p))) as engine:
        result = await engine.run(Hanoi(disks), policy=policy, seed=seed)
    events = await load_events(path, result.run_id)
    moves = [tuple(json.loads(e.winner)["move"]) for e in events if isinstance(e, StepDecided)]
    return result.ok and moves == optimal_moves(disks), result.samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disks", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--guess", type=float, default=0.8)
    parser.add_argument("--p", type=float, default=0.99)
    parser.add_argument("--target", type=float, default=0.999)
    args = parser.parse_args()
    steps = 2**args.disks - 1
    fixed = Policy(k=k_min(args.guess, args.target, steps))
    adaptive = Policy(adaptive=AdaptiveK(target=args.target, prior_p=args.guess))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, policy in (("fixed k_min", fixed), ("adaptive", adaptive)):
            correct, samples = 0, 0
            for seed in range(args.seeds):
                path = os.path.join(tmp, f"{name.split()[0]}-{seed}.db")
                ok, used = anyio.run(_run, path, args.disks, policy, args.p, seed)
                correct += ok
                samples += used
            rows.append((name, correct, samples))
    print(
        f"{args.disks}-disk Hanoi, true p {args.p}, guess {args.guess}, target {args.target}, "
        f"{args.seeds} seeds (fixed k = {fixed.k})"
    )
    for name, correct, samples in rows:
        print(
            f"  {name:12} {correct}/{args.seeds} runs fully correct, {samples} samples, "
            f"{samples / (args.seeds * steps):.3f} per step"
        )
    print(f"  adaptive / fixed samples = {rows[1][2] / rows[0][2]:.3f}")


if __name__ == "__main__":
    main()
