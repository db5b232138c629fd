"""The log writer in a process of its own: the parent's end of it, and the wire between them.

With ``EventLog(writer="process")`` the event loop's thread only serialises each appended event
(msgpack of the struct, well under a microsecond) into the frame it is building. A shipper task
writes the frames to the writer process's stdin every few milliseconds; the process
(:mod:`events._writer_child`) decodes them, encodes the rows in the file's format, chains the
hashes and commits, on a core of its own, and answers on its stdout with how many events it has
committed. The parent never touches the file after checking and creating it.

Frames go both ways as one kind byte, a little-endian u32 payload length, and the payload.

Parent to child:

- ``E``: events, a msgpack array of them. An event msgpack cannot hold (an int beyond 64 bits)
  travels as an ext of code 1 holding its pickle: the child is this same code, from this
  process, so it round-trips exactly.
- ``F``: commit what has arrived now (someone waits for it).
- ``A``: attach a run; the payload is its id.
- End of input: commit everything received and exit. That is how the log closes, and also what
  happens when the parent dies, however it dies: the kernel closes its end of the pipe.

Child to parent:

- ``R``: the file is open for writing.
- ``C``: committed: u64 events in all, u64 transactions in all. Transactions end at frame
  boundaries, so the parent knows the bytes it freed.
- ``H``: an attach's answer, i64 the run's last seq.
- ``X``: an attach refused: msgpack ``[kind, message, run_id]``.
- ``E``: the writer failed, a one-line message; the process exits after it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import struct
import subprocess
import sys
import tempfile
from collections import deque
from typing import IO, Final

import anyio
import anyio.abc
import msgspec
from anyio.streams.buffered import BufferedByteReceiveStream

from ._errors import CorruptEventError, EventLogError, UnknownRunError
from ._types import Event

HEADER: Final = struct.Struct("<BI")
"""A frame's kind and payload length."""
ARRAY_HEADER: Final = struct.Struct(">BI")
"""msgpack's array32 header (big-endian, as all of msgpack), which opens an ``E`` payload."""
EVENTS_HEADER_SIZE: Final = HEADER.size + ARRAY_HEADER.size
COMMITTED: Final = struct.Struct("<QQ")
SEQ: Final = struct.Struct("<q")
ARRAY32: Final = 0xDD
PICKLED: Final = 1
"""Ext code of an event that travels pickled."""

EVENTS, FLUSH, ATTACH = b"E"[0], b"F"[0], b"A"[0]
READY, DONE, HEAD, REFUSED, FAILED = b"R"[0], b"C"[0], b"H"[0], b"X"[0], b"E"[0]

SHIP_INTERVAL: Final = 0.005
"""The longest an appended event waits in the parent before it is shipped (the commit interval
when that is shorter). A kill -9 of the parent loses what was not shipped yet: the child commits
everything it received before it exits."""
FRAME_BYTES: Final = 1 << 20
"""A frame is sealed at this size, or at ``batch_size`` events, whichever comes first."""

_FLUSH_FRAME: Final = HEADER.pack(FLUSH, 0)
_ROOT: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
"""Where this package was imported from: the child imports the very same code."""
_STOP_WAIT: Final = 30.0
"""Seconds a cleanup waits for a writer process that should be exiting before it kills it."""


def frame(kind: int, payload: bytes = b"") -> bytes:
    """One frame of ``kind`` around ``payload``."""
    return HEADER.pack(kind, len(payload)) + payload


class AttachRequest:
    """An attach sent to the child, and its answer once it came."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.done = anyio.Event()
        self.seq: int | None = None
        self.error: EventLogError | None = None


class WriterProcess:
    """The parent's end of a writer process: the frame being built, the frames shipped but not
    yet committed, the pipes and the process itself."""

    def __init__(self, path: str, version: int, *, batch_size: int, commit_interval: float) -> None:
        self.path = path
        self.ship_interval = min(SHIP_INTERVAL, commit_interval)
        self._args = [path, str(version), str(batch_size), repr(commit_interval)]
        self._encode_into = msgspec.msgpack.Encoder().encode_into
        self._frame_events = batch_size
        self._buf = bytearray(EVENTS_HEADER_SIZE)
        self._count = 0  # events in _buf
        self._sealed_events = 0  # events in sealed frames, in all
        self._bytes = 0  # serialised bytes added, in all
        self._ready: list[bytes | bytearray] = []
        # (events, bytes) in all at the end of each shipped frame not yet committed
        self._frames: deque[tuple[int, int]] = deque()
        self._committed_bytes = 0
        self._requests: deque[AttachRequest] = deque()
        self._process: anyio.abc.Process | None = None
        self._stdout: BufferedByteReceiveStream | None = None
        self._stderr: IO[bytes] | None = None

    # -- the process -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer process. It opens the file itself; errors come back as frames."""
        if not sys.executable:
            raise EventLogError(
                f"cannot start the log writer process for {self.path}: no Python interpreter"
                " (sys.executable is empty)"
            )
        # The child imports this very package, and not whatever the working directory holds
        # (-P keeps the working directory off sys.path).
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
        command = [sys.executable, "-P", "-m", "events._writer_child", *self._args]
        command.append(str(os.getpid()))
        try:
            # A file, not a pipe: nothing has to read it while the child runs, and it keeps
            # the last words of a child that died for the error message.
            self._stderr = tempfile.TemporaryFile()  # noqa: SIM115  (closed by aclose)
            # A session of its own: a Ctrl-C at the terminal reaches the parent, which closes
            # the log in order, and not the writer, which would lose what it had.
            self._process = await anyio.open_process(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            if self._stderr is not None:
                self._stderr.close()
                self._stderr = None
            raise EventLogError(
                f"cannot start the log writer process for {self.path}: {exc}"
            ) from exc
        assert self._process.stdout is not None
        self._stdout = BufferedByteReceiveStream(self._process.stdout)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def send(self, data: bytes) -> bool:
        """Write ``data`` to the child; False if it is gone (its exit says why)."""
        assert self._process is not None
        assert self._process.stdin is not None
        try:
            await self._process.stdin.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return False
        return True

    async def close_input(self) -> None:
        """End the child's input: it commits what it received and exits."""
        assert self._process is not None
        assert self._process.stdin is not None
        with contextlib.suppress(anyio.BrokenResourceError, OSError):
            await self._process.stdin.aclose()

    async def receive(self) -> tuple[int, bytes] | None:
        """The child's next frame, or None at the end of its output."""
        assert self._stdout is not None
        try:
            kind, size = HEADER.unpack(await self._stdout.receive_exactly(HEADER.size))
            payload = await self._stdout.receive_exactly(size) if size else b""
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, OSError):
            return None
        return kind, payload

    async def wait(self) -> int:
        assert self._process is not None
        return await self._process.wait()

    def describe_exit(self, code: int) -> str:
        """Why the child ended, for an error message: its exit and its last line on stderr."""
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            how = f"was killed by {name}"
        else:
            how = f"exited with code {code}"
        last = self._last_words()
        return f"the log writer process {how}" + (f": {last}" if last else "")

    def _last_words(self) -> str:
        if self._stderr is None:
            return ""
        try:
            self._stderr.seek(0)
            text = self._stderr.read()[-4096:].decode("utf-8", "replace")
        except OSError:
            return ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[-1] if lines else ""

    async def aclose(self) -> None:
        """Release the process and its pipes. A child still running is given time to finish
        what it received, then killed."""
        process, self._process = self._process, None
        try:
            if process is not None:
                with anyio.CancelScope(shield=True):
                    if process.returncode is None:
                        if process.stdin is not None:
                            with contextlib.suppress(anyio.BrokenResourceError, OSError):
                                await process.stdin.aclose()
                        with anyio.move_on_after(_STOP_WAIT):
                            await process.wait()
                        if process.returncode is None:
                            process.kill()
                    await process.aclose()
        finally:
            if self._stderr is not None:
                self._stderr.close()
                self._stderr = None

    # -- appending: on the event loop's thread ----------------------------------------------

    def add(self, event: Event) -> int:
        """Serialise ``event`` into the frame being built; returns its size in bytes."""
        buf = self._buf
        start = len(buf)
        try:
            self._encode_into(event, buf, -1)
        except OverflowError:
            del buf[start:]
            self._encode_into(msgspec.msgpack.Ext(PICKLED, pickle.dumps(event, 5)), buf, -1)
        except BaseException:
            del buf[start:]
            raise
        size = len(buf) - start
        self._bytes += size
        self._count += 1
        if self._count >= self._frame_events or len(buf) >= FRAME_BYTES:
            self._seal()
        return size

    def _seal(self) -> None:
        if not self._count:
            return
        buf = self._buf
        HEADER.pack_into(buf, 0, EVENTS, len(buf) - HEADER.size)
        ARRAY_HEADER.pack_into(buf, HEADER.size, ARRAY32, self._count)
        self._ready.append(buf)
        self._sealed_events += self._count
        self._frames.append((self._sealed_events, self._bytes))
        self._buf = bytearray(EVENTS_HEADER_SIZE)
        self._count = 0

    def take(self, *, flush: bool) -> bytes:
        """Everything to ship now: the frames so far, requests, and a flush if asked."""
        self._seal()
        if flush:
            self._ready.append(_FLUSH_FRAME)
        if not self._ready:
            return b""
        data = b"".join(self._ready)
        self._ready.clear()
        return data

    def attach(self, run_id: str) -> AttachRequest:
        """Queue an attach behind the events appended so far."""
        self._seal()
        request = AttachRequest(run_id)
        self._ready.append(frame(ATTACH, run_id.encode()))
        self._requests.append(request)
        return request

    # -- answers -----------------------------------------------------------------------------

    def committed(self, events: int) -> int:
        """The child committed ``events`` in all: the bytes that freed."""
        freed = 0
        frames = self._frames
        while frames and frames[0][0] <= events:
            _, total = frames.popleft()
            freed += total - self._committed_bytes
            self._committed_bytes = total
        return freed

    def answer(self, kind: int, payload: bytes) -> None:
        """An attach's answer (``H`` or ``X``), for the oldest request waiting."""
        request = self._requests.popleft()
        if kind == HEAD:
            (request.seq,) = SEQ.unpack(payload)
        else:
            refused, message, run_id = msgspec.msgpack.decode(payload)
            request.error = refusal(str(refused), str(message), str(run_id))
        request.done.set()

    def fail_requests(self, error: EventLogError) -> None:
        while self._requests:
            request = self._requests.popleft()
            request.error = error
            request.done.set()


def refusal(kind: str, message: str, run_id: str) -> EventLogError:
    """The error an attach was refused with, rebuilt from its ``X`` frame."""
    if kind == "unknown":
        return UnknownRunError(run_id)
    if kind == "corrupt":
        return CorruptEventError(message)
    return EventLogError(message)


def refusal_kind(exc: EventLogError) -> str:
    """How an attach's error travels (see :func:`refusal`)."""
    if isinstance(exc, UnknownRunError):
        return "unknown"
    if isinstance(exc, CorruptEventError):
        return "corrupt"
    return "error"


def committed_counts(payload: bytes) -> tuple[int, int]:
    """A ``C`` frame's events and transactions committed, in all."""
    events, batches = COMMITTED.unpack(payload)
    return int(events), int(batches)
