"""Copy runs from one log to another: a SQLite file or a PostgreSQL database, either way.

A copy moves events, not rows. The stores' rows name blobs and dictionaries by ids that are
each store's own (a destination already holding other runs numbers them differently), and a
row's hash covers those ids, so rows cannot be moved with their hashes intact. Instead each
event is read from the source through :class:`events.CheckedRun`, which hands on only rows
that pass the source's hash chain and head, and appended to the destination through its own
writer, which chains it afresh: both sides' chains verify.

What proves the copy lossless is what both sides export: the SHA-256 of a run's ``maker
export`` lines (:func:`events.encode` of every event, in seq order) is computed while the
source is read and again from the destination once the copy is committed, through the
destination's own integrity check, and the copy fails unless they are equal.

A copy never holds a run in memory: events go over in chunks from a worker thread into the
destination's bounded queue. It resumes: a destination run that is a prefix of the source's
(a copy killed part-way, or a run copied while it was still being written) is continued from
its head. A destination run that is anything else is a conflict, found before anything is
written. A source run being written is copied up to its committed head, one snapshot.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from anyio.streams.memory import MemoryObjectSendStream

from ._codec import encode
from ._errors import CopyConflictError, EventLogError
from ._integrity import CheckedRun
from ._log import RunInfo
from ._store import Store, open_log
from ._targets import is_database_url, redact_url
from ._types import AnyEvent, RunFinished

__all__ = ["CopiedRun", "copy_runs"]

_CHUNK = 1024  # events handed from the reading thread at a time
_AHEAD = 4  # chunks read ahead of the destination's writer, at most


@dataclass(frozen=True, kw_only=True)
class CopiedRun:
    """One run copied (or found copied already) by :func:`copy_runs`."""

    run_id: str
    events: int
    """Events the destination holds of the run after the copy: the source's committed ones."""
    copied: int
    """Of those, the events this copy appended (0 when the run was there whole)."""
    finished: bool
    """Whether the run had finished in the source when it was read; an unfinished one is
    copied up to its committed head, and copying again continues it."""
    sha256: str
    """The SHA-256 of the run's ``maker export`` output, the same from both sides."""

    def line(self) -> str:
        """One line for a terminal."""
        if not self.copied:
            what = f"already copied ({self.events} events)"
        elif self.copied < self.events:
            first = self.events - self.copied
            what = f"continued at seq {first}: {self.copied} of {self.events} events copied"
        else:
            what = f"{self.events} events copied"
        if not self.finished:
            what += f"; unfinished, up to seq {self.events - 1} (copy again to continue it)"
        return f"{self.run_id}: {what}, export sha256 {self.sha256[:16]} on both sides"

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible builtins: the fields."""
        return {
            "run_id": self.run_id,
            "events": self.events,
            "copied": self.copied,
            "finished": self.finished,
            "sha256": self.sha256,
        }


class _Exported:
    """The SHA-256 of a run's export lines, fed event by event."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.events = 0

    def add(self, event: AnyEvent) -> None:
        self.hash.update(encode(event) + b"\n")
        self.events += 1


def _checked(path: str, run_id: str) -> Generator[AnyEvent, None, None]:
    """A run's events in seq order, each handed on once it passed the integrity checks."""
    with CheckedRun(path, run_id) as run:
        yield from run


def _exported(path: str, run_id: str, last_seq: int) -> tuple[str, int]:
    """The export hash and count of a run's events up to ``last_seq``, checked as read."""
    out = _Exported()
    events = _checked(path, run_id)
    try:
        for event in events:
            if event.seq > last_seq:
                break
            out.add(event)
    finally:
        events.close()
    return out.hash.hexdigest(), out.events


def same_target(source: str, dest: str) -> bool:
    """Whether two targets name one log (the same URL, or the same file)."""
    if is_database_url(source) or is_database_url(dest):
        return source == dest
    try:
        return os.path.samefile(source, dest)
    except OSError:
        return os.path.abspath(source) == os.path.abspath(dest)


async def _read_ahead(src: str, run_id: str, send: MemoryObjectSendStream[list[AnyEvent]]) -> None:
    events = _checked(src, run_id)
    try:
        async with send:
            while chunk := await anyio.to_thread.run_sync(
                lambda: list(itertools.islice(events, _CHUNK))
            ):
                await send.send(chunk)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(events.close)


async def copy_runs(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    run_ids: Sequence[str] = (),
    *,
    on_copied: Callable[[CopiedRun], None] | None = None,
    **options: Any,
) -> list[CopiedRun]:
    """Copy runs from the log ``source`` to the log ``dest`` (each a SQLite file's path or a
    ``postgresql://`` URL): the runs ``run_ids`` name (a unique prefix of an id will do), or
    every run in the source.

    The destination is made if it holds no log yet (as a run's first event would). A run it
    holds already is continued when it is a prefix of the source's, left alone when it is the
    whole of it, and otherwise refused with :class:`events.CopyConflictError` before anything
    is written. The source is only read. ``on_copied`` is told of each run once it is copied
    and checked; ``options`` are the destination store's (see :func:`events.open_log`).

    >>> import anyio, os, tempfile
    >>> from events import EventLog, RunFinished, RunStarted, verify_log
    >>> where = tempfile.mkdtemp()
    >>> a, b = os.path.join(where, "a.db"), os.path.join(where, "b.db")
    >>> async def main() -> list[CopiedRun]:
    ...     async with EventLog(a) as log:
    ...         log.append(RunStarted(run_id="demo", seq=0, ts=0.0, task="t", task_params={},
    ...                               policy={}, models=[], model_params={}, seed=0, version=""))
    ...         log.append(RunFinished(run_id="demo", seq=1, ts=1.0, status="succeeded",
    ...                                steps=0, samples=0))
    ...     return await copy_runs(a, b)
    >>> [(run.run_id, run.events, run.copied) for run in anyio.run(main)]
    [('demo', 2, 2)]
    >>> verify_log(b).ok
    True
    """
    src, dst = os.fspath(source), os.fspath(dest)
    shown_src, shown_dst = redact_url(src), redact_url(dst)
    if same_target(src, dst):
        raise EventLogError(f"{shown_src} is both the source and the destination of the copy")
    async with open_log(src, mode="r") as log:
        if run_ids:
            infos = [await log.run(run_id) for run_id in dict.fromkeys(run_ids)]
        else:
            infos = await log.runs()
    picked = list({info.run_id: info for info in infos}.values())
    out: list[CopiedRun] = []
    async with open_log(dst, **options) as to:
        heads = {info.run_id: info.last_seq for info in await to.runs()}
        # Every conflict before any write: a refused copy leaves the destination as it was.
        prefixes: dict[str, tuple[int, str]] = {}
        for info in picked:
            head = heads.get(info.run_id)
            if head is not None:
                prefixes[info.run_id] = await _check_prefix(src, dst, shown_dst, info, head)
        for info in picked:
            copied = await _copy_run(src, to, shown_dst, info, prefixes.get(info.run_id))
            out.append(copied)
            if on_copied is not None:
                on_copied(copied)
    return out


async def _check_prefix(
    src: str, dst: str, shown_dst: str, info: RunInfo, head: int
) -> tuple[int, str]:
    """The destination run's head and export hash, if it is a prefix of the source's run."""
    theirs, count = await anyio.to_thread.run_sync(_exported, dst, info.run_id, head)
    if count != head + 1:
        raise EventLogError(f"{shown_dst}: run {info.run_id} ends before its head at seq {head}")
    if head > info.last_seq:
        raise CopyConflictError(
            shown_dst,
            info.run_id,
            f"is longer than the source's ({head + 1} events against {info.last_seq + 1})",
        )
    ours, _ = await anyio.to_thread.run_sync(_exported, src, info.run_id, head)
    if ours != theirs:
        raise CopyConflictError(
            shown_dst, info.run_id, f"differs from the source's in its first {head + 1} events"
        )
    return head, theirs


async def _copy_run(
    src: str, to: Store, shown_dst: str, info: RunInfo, prefix: tuple[int, str] | None
) -> CopiedRun:
    run_id = info.run_id
    done = -1
    if prefix is not None:
        done = prefix[0]
        # Held from here on: a second copy of the run into this destination is refused.
        following = await to.attach(run_id)
        if following != done + 1:
            raise EventLogError(
                f"{shown_dst}: run {run_id} moved on while it was being copied to "
                f"(its head is at seq {following - 1}, not {done})"
            )
    exported = _Exported()
    last: AnyEvent | None = None
    send, receive = anyio.create_memory_object_stream[list[AnyEvent]](_AHEAD)
    try:
        async with anyio.create_task_group() as tg:
            # The source is read (and checked) on a worker thread while this one encodes what
            # it read before: a few chunks ahead at most.
            tg.start_soon(_read_ahead, src, run_id, send)
            async with receive:
                async for chunk in receive:
                    for last in chunk:
                        exported.add(last)
                        if last.seq > done:
                            await to.put(last)
    except BaseExceptionGroup as group:
        # One of the two failed (the source's check, or the destination's writer) and the
        # other was cancelled: raise what went wrong, as a call without a task group would.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    await to.flush()
    ours = exported.hash.hexdigest()
    theirs, count = await anyio.to_thread.run_sync(_exported, to.path, run_id, exported.events - 1)
    if theirs != ours or count != exported.events:
        raise EventLogError(
            f"{shown_dst}: the copy of run {run_id} does not export as its source does"
        )
    return CopiedRun(
        run_id=run_id,
        events=exported.events,
        copied=exported.events - (done + 1),
        finished=isinstance(last, RunFinished),
        sha256=ours,
    )
