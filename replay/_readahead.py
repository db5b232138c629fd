"""Read a run in a helper process while it is re-executed.

Reading a run back (fetching its rows, decoding them, checking the hash chain) costs about as
much as re-executing it, and both are Python under one interpreter lock. For a long run a child
process does the reading (a :class:`CheckedRun`, unchanged) and hands the events over a pipe in
batches, so the two halves run side by side on two cores.

The child's answers are the same a :class:`CheckedRun` read in process gives: the same events
in the same order, then the same verdict (:class:`BrokenLogError` naming the same seq and
problem, or :class:`events.UnknownRunError`). Anything else going wrong with the child (it
cannot start, it dies, it cannot read the file) is no answer: the reading goes on in process
from the event it had reached, so the worst a failing child costs is time.

Frames on the child's stdout: a 4-byte big-endian length, one kind byte, then the payload.
Events go as msgpack, which msgspec decodes into events at C speed; a batch holding a value
that msgpack would not give back as it was (an int past 64 bits, a bool in an int field, which
the log's own decoder lets through) goes as a pickle. Everything else is a pickle too: both ends
are this module, run by the same interpreter.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import struct
import subprocess
import sys
import typing
from collections import deque
from typing import Any, Self

import msgspec

try:
    import fcntl
except ImportError:  # not on this platform: pipes keep their default size
    fcntl = None  # type: ignore[assignment]

import events
from events import (
    EVENT_TYPES,
    AnyEvent,
    BrokenLogError,
    CheckedRun,
    Event,
    EventLogError,
    RunIntegrity,
    UnknownRunError,
)

READ_AHEAD_MIN = 50_000
"""Events a run must hold before it is read in a helper process by default: below it, starting
the process (a fresh interpreter, about half a second) costs more than it saves."""


def worth_reading_ahead(events: int) -> bool:
    """Whether a run of ``events`` events is read in a helper process by default: when it is
    long enough, and a core is there for the helper to run on.

    A core to spare means more than one, and a load average (over the last minute) at least
    half a core below their number, as ``make --load-average`` judges it. On a machine already
    busy, the helper would only take turns with the re-execution for the same share of time,
    and the handing over would cost more than it saves. Which way a run is read changes how
    long it takes, never what it gives.
    """
    if events < READ_AHEAD_MIN:
        return False
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on this platform
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on this platform, or not known
        load = 0.0
    return cores > 1 and load < cores - 0.5


_BATCH = 1024
_FIRST_BATCH = 64  # the first batch is small, so the re-execution starts soon
_HEADER = struct.Struct(">IB")
_EVENTS, _PICKLED, _VERDICT, _BROKEN, _UNKNOWN, _FAILED = b"EPVBUF"
_decode_events = msgspec.msgpack.Decoder(list[AnyEvent]).decode


class ReadAhead:
    """:class:`CheckedRun` read by a helper process: the same events, checks and verdict,
    with the reading, decoding and checking done beside the caller instead of by it.

    Memory stays bounded on both sides: the child holds one batch and the pipe another, and
    the pipe's bound makes the child wait when it is a few batches ahead.
    """

    def __init__(
        self, path: str | os.PathLike[str], run_id: str, *, last_seq: int | None = None
    ) -> None:
        self.path = os.fspath(path)
        self.run_id = run_id
        self._last_seq = last_seq
        self._child: subprocess.Popen[bytes] | None = None
        self._batch: deque[AnyEvent] = deque()
        self._handed = 0  # events handed on so far
        self._fallback: CheckedRun | None = None
        self._result: RunIntegrity | None = None
        self._error: EventLogError | None = None

    @property
    def pid(self) -> int | None:
        """The helper process's id while it runs."""
        return self._child.pid if self._child is not None else None

    @property
    def in_process(self) -> bool:
        """Whether the reading went on in this process (the helper could not do it)."""
        return self._fallback is not None

    def __enter__(self) -> Self:
        request = {"path": self.path, "run_id": self.run_id, "last_seq": self._last_seq}
        if not sys.executable:
            self._fall_back()  # an embedded interpreter: no way to start another
            return self
        try:
            self._child = subprocess.Popen(
                [sys.executable, "-c", _CHILD, os.path.dirname(os.path.abspath(__file__))],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=_child_env(),
            )
            assert self._child.stdin is not None
            assert self._child.stdout is not None
            _widen(self._child.stdout.fileno())
            self._child.stdin.write(json.dumps(request).encode() + b"\n")
            self._child.stdin.close()
        except OSError:
            self._fall_back()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()
        if self._fallback is not None:
            self._fallback.__exit__(None, None, None)

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> AnyEvent:
        batch = self._batch
        if not batch:
            self._refill()
            if not batch:
                self.finish()  # raises what the check found, if anything
                raise StopIteration
        self._handed += 1
        return batch.popleft()

    def finish(self) -> RunIntegrity:
        """Check the rest of the run without handing it on, and return the verdict; raise
        :class:`BrokenLogError` if the run is broken (every time it is asked)."""
        self._batch.clear()
        while self._result is None and self._error is None:
            if self._fallback is not None:
                self._settle(self._fallback.finish)
                break
            self._frame(keep=False)
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    # -- the pipe --------------------------------------------------------------------------

    def _refill(self) -> None:
        while not self._batch and self._result is None and self._error is None:
            if self._fallback is not None:
                fallback = self._fallback
                try:
                    self._batch.append(next(fallback))
                except StopIteration:
                    self._settle(fallback.finish)
                return
            self._frame(keep=True)

    def _frame(self, *, keep: bool) -> None:
        """Take the child's next frame: a batch of events (decoded if ``keep``), or its
        verdict. A child that ends without one hands the reading back to this process."""
        assert self._child is not None
        assert self._child.stdout is not None
        out = self._child.stdout
        header = out.read(_HEADER.size)
        size, kind = _HEADER.unpack(header) if len(header) == _HEADER.size else (0, 0)
        payload = out.read(size) if kind else b""
        if not kind or len(payload) != size or kind == _FAILED:
            self._fall_back()
            return
        if kind in (_EVENTS, _PICKLED):
            if keep:
                events = _decode_events(payload) if kind == _EVENTS else pickle.loads(payload)
                self._batch.extend(events)
            return
        self._stop(kill=False)
        if kind == _VERDICT:
            self._result = pickle.loads(payload)
        elif kind == _BROKEN:
            seq, problem = pickle.loads(payload)
            self._error = BrokenLogError(self.path, self.run_id, seq, problem)
        elif kind == _UNKNOWN:
            self._error = UnknownRunError(self.run_id)
        else:
            self._fall_back()

    def _fall_back(self) -> None:
        """Go on reading in this process, from the first event not handed on yet."""
        self._stop()
        self._batch.clear()
        fallback = CheckedRun(self.path, self.run_id, last_seq=self._last_seq)
        self._fallback = fallback
        try:
            fallback.__enter__()
            for _ in range(self._handed):
                next(fallback)
        except StopIteration:
            self._settle(fallback.finish)
        except EventLogError as exc:
            self._error = exc

    def _settle(self, verdict: Any) -> None:
        try:
            self._result = verdict()
        except EventLogError as exc:
            self._error = exc

    def _stop(self, *, kill: bool = True) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        if not kill:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)  # it exits once it has given its verdict
        if child.poll() is None:
            child.kill()  # abandoned mid-read: nothing it would still say is wanted
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


_PIPE_BYTES = 1 << 20


def _widen(fd: int) -> None:
    """Let the pipe hold a few batches (Linux; a default pipe holds 64 KiB, a quarter of one).

    With room for only part of a batch, the child waits for the parent to read each part, and
    on a busy machine every such handover waits for a core: the two would take turns instead of
    running side by side.
    """
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
    if set_size is None:
        return
    for size in (_PIPE_BYTES, _PIPE_BYTES // 4):
        try:
            fcntl.fcntl(fd, set_size, size)
        except OSError:
            continue  # above the system's limit for this user: try less
        return


def _child_env() -> dict[str, str]:
    """The environment of the child: this one, with the directories this package and the
    events package were imported from first on its path."""
    roots = []
    for module in (__file__, events.__file__):
        root = os.path.dirname(os.path.dirname(os.path.abspath(module)))
        if root not in roots:
            roots.append(root)
    env = dict(os.environ)
    if env.get("PYTHONPATH"):
        roots.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(roots)
    return env


# -- the child -------------------------------------------------------------------------------

_CHILD = """
import sys, types
# This package without its __init__, which would import the whole engine: the child needs
# only this module and the events package, which holds the integrity check.
package = types.ModuleType("replay")
package.__path__ = [sys.argv[1]]
sys.modules["replay"] = package
from replay._readahead import serve
serve()
"""


def _exact_fields(cls: type[Event]) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """The int fields and the tally fields of ``cls``, whose values msgpack gives back exactly
    when they hold ints (the log's decoder also lets bools through); None when a field is of a
    type checked no further (a list of str, say), whose events go as a pickle."""
    ints: list[str] = []
    tallies: list[str] = []
    for info in msgspec.structs.fields(cls):
        tp = info.type
        if info.name in ("run_id", "seq", "ts", "step"):
            continue  # from the row's columns, of their exact types
        if tp is int:
            ints.append(info.name)
        elif tp == dict[str, int]:
            tallies.append(info.name)
        elif not (
            tp in (str, float, bool, Any)
            or tp == (float | None)
            or typing.get_origin(tp) is typing.Literal
        ):
            return None
    return tuple(ints), tuple(tallies)


_EXACT = {cls: _exact_fields(cls) for cls in EVENT_TYPES}


def _as_msgpack(events: list[AnyEvent]) -> bytes | None:
    """The events as msgpack, when msgpack gives every value back as it is."""
    for event in events:
        fields = _EXACT[type(event)]
        if fields is None:
            return None
        ints, tallies = fields
        for name in ints:
            if type(getattr(event, name)) is not int:
                return None
        for name in tallies:
            for count in getattr(event, name).values():
                if type(count) is not int:
                    return None
    try:
        return _encode(events)
    except OverflowError:  # an int past 64 bits, somewhere in a state
        return None


_encode = msgspec.msgpack.Encoder().encode


def serve() -> None:
    """The child's side: serve the request on stdin, and leave quietly if the parent goes."""
    try:
        _serve()
    except (BrokenPipeError, KeyboardInterrupt):
        os._exit(0)  # the parent stopped reading: nothing is left to do, and nothing to say


def _serve() -> None:
    """Read the run the request on stdin names and write it to stdout as frames."""
    request = json.loads(sys.stdin.readline())
    out = sys.stdout.buffer

    def send(kind: int, payload: Any) -> None:
        data = _as_msgpack(payload) if kind == _EVENTS else None
        if data is None:
            kind = _PICKLED if kind == _EVENTS else kind
            data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        out.write(_HEADER.pack(len(data), kind))
        out.write(data)
        out.flush()

    batch: list[AnyEvent] = []
    size = _FIRST_BATCH
    try:
        with CheckedRun(request["path"], request["run_id"], last_seq=request["last_seq"]) as run:
            try:
                for event in run:
                    batch.append(event)
                    if len(batch) >= size:
                        send(_EVENTS, batch)
                        batch, size = [], _BATCH
            finally:
                if batch:
                    send(_EVENTS, batch)  # the events before a failure are the reader's too
            result = run.finish()
    except BrokenLogError as exc:
        send(_BROKEN, (exc.seq, exc.problem))
    except UnknownRunError:
        send(_UNKNOWN, None)
    except Exception as exc:  # no verdict: the parent reads in process instead
        send(_FAILED, f"{type(exc).__name__}: {exc}")
    else:
        send(_VERDICT, result)
