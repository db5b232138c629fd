"""The writer process of ``EventLog(writer="process")``.

    python -P -m events._writer_child PATH VERSION BATCH_SIZE COMMIT_INTERVAL PARENT_PID

It owns the only writing connection to PATH (a log its parent has already checked and created,
of schema VERSION), reads frames of events on stdin and answers on stdout (see
:mod:`events._process` for the wire). It does what the thread writer does, on a core of its
own: encodes each event's row in the file's format as it arrives, chains the hashes, and
commits in transactions of at most BATCH_SIZE rows, a round at least once per COMMIT_INTERVAL
seconds, at once when the parent asks.

When its input ends it commits everything it received and exits: the parent closed the log, or
died. It never outlives its parent by more than that last commit (or a second, if a fork of the
parent still holds the pipe: it also watches that its parent is PARENT_PID). A frame cut off by
the parent's death is dropped whole, so the file holds exactly a prefix of what was appended.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import pickle
import select
import signal
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Sequence
from typing import Final

import msgspec

from ._errors import EventLogError
from ._formats import WriterFormat
from ._log import _load_head, _open_for_writing, _write_batch
from ._process import (
    ATTACH,
    COMMITTED,
    DONE,
    EVENTS,
    FAILED,
    FLUSH,
    HEAD,
    HEADER,
    PICKLED,
    READY,
    REFUSED,
    SEQ,
    frame,
    refusal_kind,
)
from ._types import AnyEvent, Event

_PIPE_SIZE: Final = 1 << 20
"""Bytes the input pipe holds (Linux's limit for an unprivileged process). What the parent wrote
into the pipe survives its death, and the kernel takes it at once even while a commit keeps this
process from reading: what the parent still held when it died is what a kill loses."""
_READ: Final = _PIPE_SIZE
_PARENT_CHECK: Final = 1.0
"""Seconds between checks, while idle, that the parent is still the one that started us."""
_COLLECT_EVERY: Final = 1024
"""Commits between the writer's own garbage collections (about a minute at full speed).

The writer makes no reference cycles in its loop (events, rows and blobs are plain values), yet
the collector, left automatic, ran full passes over the long-lived blob cache as rows came and
went: an eighth of the writer's CPU on a 15-disk Hanoi run (1.8 s of 13.5 s). So the automatic
collector is off in this process, and a collection every so many commits bounds what a stray
cycle could hold."""

_decode = msgspec.msgpack.Decoder(list[AnyEvent | msgspec.msgpack.Ext]).decode


class WriterFailed(Exception):
    """Writing failed; the message is the one line the parent reports."""


class _Output:
    """Frames to the parent. A parent that is gone reads nothing more, and that is fine: the
    input's end follows, and then the last commit."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.gone = False

    def send(self, kind: int, payload: bytes = b"") -> None:
        if self.gone:
            return
        data = memoryview(frame(kind, payload))
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError:
            self.gone = True


class _Writer:
    def __init__(
        self,
        conn: sqlite3.Connection,
        layout: WriterFormat,
        path: str,
        *,
        batch_size: int,
        commit_interval: float,
        parent: int,
        out: _Output,
    ) -> None:
        self._conn = conn
        self._layout = layout
        self._path = path
        self._batch_size = batch_size
        self._interval = commit_interval
        self._parent = parent
        self._out = out
        self._hashes: dict[str, bytes] = {}
        self._inbox = bytearray()
        self._encoded = 0
        self._committed = 0
        self._batches = 0
        self._bounds: deque[int] = deque()  # events encoded in all at the end of each frame
        self._urgent = False

    def run(self, fd: int) -> None:
        _widen_pipe(fd)
        poll = select.poll()
        poll.register(fd, select.POLLIN)
        began = -math.inf  # when the last round of commits began
        ended = False
        while True:
            pending = self._encoded - self._committed
            now = time.monotonic()
            if pending and (
                self._urgent or pending >= self._batch_size or now >= began + self._interval
            ):
                # As the thread writer: rounds start at least once per interval, counting the
                # time the writes take, and a round writes all that came meanwhile.
                began = now
                self._commit()
                continue
            if self._urgent and not pending:
                self._urgent = False
            if self._next_frame():
                continue  # one frame at a time, so a commit that falls due is not held up
            if ended:
                break
            wait = (
                _PARENT_CHECK if not pending else min(_PARENT_CHECK, began + self._interval - now)
            )
            if poll.poll(max(0.0, wait) * 1000):
                chunk = os.read(fd, _READ)
                if chunk:
                    self._inbox += chunk
                else:
                    ended = True  # the frames already here are still processed first
            elif os.getppid() != self._parent:
                ended = True
        # A frame cut short by the parent's death is not part of what was appended in full.
        self._commit()

    def _next_frame(self) -> bool:
        box = self._inbox
        if len(box) < HEADER.size:
            return False
        kind, size = HEADER.unpack_from(box)
        end = HEADER.size + size
        if len(box) < end:
            return False
        payload = memoryview(box)[HEADER.size : end]
        try:
            if kind == EVENTS:
                self._encode(payload)
            elif kind == FLUSH:
                self._urgent = True
            elif kind == ATTACH:
                self._attach(bytes(payload).decode())
            else:
                raise WriterFailed(f"unknown frame kind {kind} from the log")
        finally:
            payload.release()
        del box[:end]
        return True

    def _encode(self, payload: memoryview) -> None:
        try:
            items = _decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise WriterFailed(f"cannot decode appended events: {exc}") from exc
        layout, hashes = self._layout, self._hashes
        for item in items:
            event: Event
            if isinstance(item, msgspec.msgpack.Ext):
                if item.code != PICKLED:
                    raise WriterFailed(f"unknown ext code {item.code} in appended events")
                event = pickle.loads(item.data)
            else:
                event = item
            try:
                queued = layout.encode(event, hashes.get(event.run_id, b""))
            except (TypeError, ValueError, OverflowError) as exc:
                raise WriterFailed(
                    f"cannot encode event {event.seq} of run {event.run_id}: {exc}"
                ) from exc
            hashes[event.run_id] = queued.digest
        self._encoded += len(items)
        self._bounds.append(self._encoded)

    def _attach(self, run_id: str) -> None:
        try:
            seq, digest = _load_head(self._conn, self._layout, self._path, run_id)
        except EventLogError as exc:
            reply = msgspec.msgpack.encode([refusal_kind(exc), str(exc), run_id])
            self._out.send(REFUSED, reply)
            return
        self._hashes[run_id] = digest
        self._out.send(HEAD, SEQ.pack(seq))

    def _commit(self) -> None:
        """Write what is encoded, in transactions of at most batch_size rows that end at frame
        boundaries (so the parent can tell the bytes each one frees)."""
        self._urgent = False
        bounds = self._bounds
        while bounds:
            end = bounds.popleft()
            while bounds and bounds[0] - self._committed <= self._batch_size:
                end = bounds.popleft()
            batch = self._layout.take(end - self._committed)
            if batch is None:  # pragma: no cover - the bounds count encoded rows
                break
            try:
                _write_batch(self._conn, self._layout, batch)
            except sqlite3.Error as exc:
                raise WriterFailed(str(exc)) from exc
            self._committed += batch.events
            self._batches += 1
            self._out.send(DONE, COMMITTED.pack(self._committed, self._batches))
            if self._batches % _COLLECT_EVERY == 0:
                gc.collect()


def _widen_pipe(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not a POSIX system
        return
    setsize = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
    if setsize is not None:
        with contextlib.suppress(OSError):  # a lower system limit: the pipe stays as it is
            fcntl.fcntl(fd, setsize, _PIPE_SIZE)


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    path, version, batch_size, interval, parent = (
        args[0],
        int(args[1]),
        int(args[2]),
        float(args[3]),
        int(args[4]),
    )
    # The parent owns the terminal's signals; a stray SIGINT here would lose what is queued.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = _Output(sys.stdout.fileno())
    try:
        conn, layout = _open_for_writing(path, version)
    except EventLogError as exc:
        out.send(FAILED, str(exc).encode())
        return 1
    try:
        if layout.version != version:
            out.send(FAILED, f"{path} changed its schema version to {layout.version}".encode())
            return 1
        out.send(READY)
        gc.disable()  # see _COLLECT_EVERY
        writer = _Writer(
            conn,
            layout,
            path,
            batch_size=batch_size,
            commit_interval=interval,
            parent=parent,
            out=out,
        )
        try:
            writer.run(sys.stdin.fileno())
        except WriterFailed as exc:
            out.send(FAILED, " ".join(str(exc).split()).encode())
            return 1
        except Exception as exc:
            out.send(FAILED, f"{type(exc).__name__}: {' '.join(str(exc).split())}".encode())
            return 1
        return 0
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
