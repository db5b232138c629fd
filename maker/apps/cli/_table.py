"""The one way the CLI prints a table: plain text columns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import click

from ...core._pricing import PriceTable


def table_lines(rows: Sequence[Sequence[str]], header: Sequence[str] | None = None) -> list[str]:
    """``rows`` (after ``header``, when given) as left-aligned columns two spaces apart, with no
    trailing spaces. Never wrapped or cut, whatever the terminal: a log's reason or a task's
    parameters stay whole, and a script can split the lines. Cells are printed as they are (no
    markup is read in them).

    >>> for line in table_lines([("1", "x"), ("10", "y")], header=("step", "answer")):
    ...     print(line)
    step  answer
    1     x
    10    y
    """
    lines = [tuple(header), *(tuple(row) for row in rows)] if header is not None else rows
    if not lines:
        return []
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in lines
    ]


def counts_text(counts: Mapping[str, int]) -> str:
    """Counts by reason (red flags, failures) in one cell: ``"N reason"``, by reason, or ``""``.

    >>> counts_text({"too_long": 2, "format": 1})
    '1 format, 2 too_long'
    """
    return ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))


def echo_table(
    rows: Sequence[Sequence[str]],
    header: Sequence[str] | None = None,
    *,
    title: str | None = None,
) -> None:
    """Print :func:`table_lines` on stdout, after ``title`` when given."""
    if title is not None:
        click.echo(title)
    for line in table_lines(rows, header):
        click.echo(line)


def cost_text(cost_usd: float, models: Sequence[str], prices: PriceTable) -> str:
    """A run's cost in one cell: in USD, or ``unknown`` when it is nothing only because no
    model of the run has a price (``$0.0000`` would read as free).

    >>> cost_text(0.0, ["sim"], PriceTable())
    'unknown (no price for sim)'
    >>> cost_text(0.0123, ["openai:gpt-4.1-mini"], PriceTable())
    '$0.0123'
    """
    unpriced = [model for model in models if not prices.known(model)]
    if cost_usd == 0 and models and len(unpriced) == len(models):
        return f"unknown (no price for {', '.join(unpriced)})"
    return f"${cost_usd:.4f}"
