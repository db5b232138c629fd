"""Version 1 logs with the process writer: test_log.py's tests that read version 1 rows with
plain SQL run again here, with the writer in a process of its own (version 1 files are still
continued in their own layout, whichever writer continues them)."""

from __future__ import annotations

import pytest

from events import EventLog

from .test_log import (  # noqa: F401  (collected here again, with the process writer)
    test_attach_refuses_a_run_whose_rows_do_not_reach_its_head,
    test_attach_refuses_a_run_without_a_head,
    test_concurrent_readers_see_gap_free_prefixes,
    test_events_table_is_append_only,
    test_file_layout_wal_strict_and_ids,
    test_many_batches_of_interleaved_runs_read_back_in_order,
    test_reopen_and_attach_continues_seq_and_chain,
    test_run_heads_are_written_in_the_same_transaction_as_the_rows,
    test_run_heads_hold_each_runs_last_seq_and_hash_after_every_batch,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _version_1_with_the_process_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = EventLog.__init__.__kwdefaults__
    assert defaults is not None
    monkeypatch.setitem(defaults, "schema_version", 1)
    monkeypatch.setitem(defaults, "writer", "process")
