"""``maker copy SOURCE DEST``: move runs between logs, a SQLite file or a PostgreSQL database
either way, losslessly (see :func:`events.copy_runs`).

Store to store rather than through ``maker export``'s JSON lines: the export carries no hash
chain, so a run imported from one could only be trusted as far as the file is, while a copy
reads the source's rows through its integrity checks and proves the destination's run exports
exactly as the source's does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import click

from events import CopiedRun, copy_runs

from .._options import LogTarget

__all__ = ["copy_command"]


@click.command("copy")
@click.argument("source", type=LogTarget())
@click.argument("dest", type=LogTarget())
@click.option(
    "--run",
    "run_ids",
    multiple=True,
    help="A run to copy (its id or a unique prefix); repeat for more. Default: every run.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per run.")
def copy_command(
    source: Path | str, dest: Path | str, run_ids: tuple[str, ...], as_json: bool
) -> None:
    """Copy runs from the log SOURCE to the log DEST (a SQLite file or a postgresql:// URL).

    Each run is read through its integrity checks and appended through DEST's own writer; the
    copy then checks that DEST's run exports exactly as SOURCE's does. A run DEST holds already
    is continued if it is a prefix of SOURCE's (a copy cut short resumes) and refused
    otherwise. A run still being written is copied up to its committed head.
    """

    def report(run: CopiedRun) -> None:
        # Each run as soon as it is done: a long copy shows its progress run by run.
        line = json.dumps(run.to_json()) if as_json else run.line()
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    async def go() -> None:
        # Into a file, the writer in a process of its own: the encoding and hashing take the
        # other core while this one reads and checks the source (about twice as fast).
        await copy_runs(str(source), str(dest), run_ids, on_copied=report, writer="process")

    anyio.run(go)
