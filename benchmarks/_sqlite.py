"""Raw SQLite inserts of a log's own rows: the baseline the engine's log writer is measured
against, whatever the log's schema version."""

from __future__ import annotations

import sqlite3
import time

BATCH = 4096
"""Rows per transaction of the baseline."""


def raw_inserts(source: str, target: str) -> tuple[int, int, float]:
    """Copy every table of ``source`` into a fresh file; time only the inserts and commits.

    Returns the events table's rows, all rows and the seconds spent inserting.
    """
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(target, isolation_level=None)
    dst.execute("PRAGMA journal_mode=WAL")
    dst.execute("PRAGMA synchronous=NORMAL")
    layout = src.execute(
        "SELECT type, name, sql FROM sqlite_master"
        " WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'"
    ).fetchall()
    # Tables first, so that indexes and triggers find theirs.
    order = {"table": 0, "index": 1, "view": 2, "trigger": 3}
    # A run's head (in version 2 and later, its row in ``runs``) goes in after its events, as
    # the log's writer puts it: the append-only trigger refuses an event at or below the head.
    tables = sorted(
        (name for kind, name, _ in layout if kind == "table"), key=lambda t: t == "runs"
    )
    for _, _, sql in sorted(layout, key=lambda row: order.get(row[0], 9)):
        dst.execute(sql)
    all_rows = event_rows = 0
    spent = 0.0
    for table in tables:
        quoted = '"' + table.replace('"', '""') + '"'
        width = len(src.execute(f"SELECT * FROM {quoted} LIMIT 0").description)
        insert = f"INSERT INTO {quoted} VALUES ({', '.join('?' * width)})"
        cursor = src.execute(f"SELECT * FROM {quoted}")
        while rows := cursor.fetchmany(BATCH):
            began = time.perf_counter()
            dst.execute("BEGIN")
            dst.executemany(insert, rows)
            dst.execute("COMMIT")
            spent += time.perf_counter() - began
            all_rows += len(rows)
            if table == "events":
                event_rows += len(rows)
    src.close()
    dst.close()
    return event_rows, all_rows, spent
