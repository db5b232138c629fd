"""The README's picture of a report: the overview of a 10-disk run on the simulated model.

Runs Hanoi with the simulated model (a noisy one, so that the plots have something to show),
writes the run's whole report into a temporary directory (or ``--report DIR``), and saves its
overview (convergence beside the prediction, samples per step against Eq 16 / v, steps per
second, latency) as a small PNG. Prints the figures the picture shows.

    python -m benchmarks.report_figure [--disks 10] [--out docs/report.png] [--report DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import anyio

from maker import Engine, Policy, SimConfig, SimulatedModel
from maker.tasks import Hanoi
from replay import ReportData, load_events, report_data, write_report
from replay._plots import RUN_PLOTS

MODEL = SimConfig(
    p=0.95, malformed_rate=0.01, overlong_rate=0.01, hard_fraction=0.01, latency_ms=2.0
)
"""A model noisier than the paper's, with a little latency: red flags, disagreements, a tail."""


async def _record(path: str, disks: int, seed: int) -> ReportData:
    async with Engine(log=path, client=SimulatedModel(MODEL)) as engine:
        result = await engine.run(Hanoi(disks), policy=Policy(k=3), seed=seed)
    return report_data(await load_events(path, result.run_id))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disks", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="docs/report.png")
    parser.add_argument("--report", default=None, help="Keep the whole report in this directory.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        data = anyio.run(_record, os.path.join(scratch, "run.db"), args.disks, args.seed)
        write_report(data, args.report or os.path.join(scratch, "report"))
    overview = RUN_PLOTS[0]
    figure = overview.render(overview.data(data))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    # 80 dpi: 800 x 512 pixels, small enough to keep in the repository.
    figure.savefig(args.out, format="png", dpi=80)
    prediction = data.prediction
    print(
        json.dumps(
            {
                "png": args.out,
                "status": data.summary.status,
                "steps": data.summary.steps,
                "samples": data.summary.samples,
                "undecided_by_round": list(data.undecided),
                "p_estimate": data.p_estimate,
                "eq16_samples_per_step": None
                if prediction is None
                else prediction.samples_per_step,
                "samples_per_step": data.summary.mean_samples_per_step,
                "latency_quantiles": data.latency_quantiles,
            }
        )
    )


if __name__ == "__main__":
    main()
