"""Who writes a run: one writer per run, held by a record lock the operating system releases.

Two writers of one run would interleave its seq numbers and break its hash chain: two
``maker resume`` of one run at once, or a resume of a run another process is still writing.
Each writer therefore holds an exclusive POSIX record lock on one byte of ``LOG-lock`` (the
byte is the run id's hash) from the run's first event, or from attaching to it, until the log
closes. The kernel drops the lock when the process ends however it ends (``kill -9``
included), so a crashed run is never left locked, and nothing stale is ever stored in the log.

POSIX record locks belong to a process, and closing any descriptor of the file drops all of
that process's locks on it. So a process opens each lock file once (found by device and
inode), keeps it open while any of its logs holds a run there, and checks its own logs' runs
against each other itself: the kernel would let the same process take a lock twice.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import struct
import sys
import threading

from ._errors import EventLogError, RunBusyError

_SUFFIX = "-lock"


class _LockFile:
    __slots__ = ("fd", "held")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.held: dict[str, object] = {}  # run id -> the log holding it


_guard = threading.Lock()
_files: dict[tuple[int, int], _LockFile] = {}


def lock_path(path: str) -> str:
    """The lock file beside the log at ``path``."""
    return path + _SUFFIX


def _offset(run_id: str) -> int:
    # 62 bits of the id's hash: two runs share a byte with odds of 2**-62, and record locks
    # take offsets far past the end of a file that stays empty.
    digest = hashlib.blake2b(run_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 2


def acquire(path: str, run_id: str, owner: object) -> None:
    """Hold ``run_id`` of the log at ``path`` for ``owner`` (a log), or raise
    :class:`RunBusyError` naming the writer that holds it. Holding it again is a no-op."""
    with _guard:
        entry = _open(path)
        holder = entry.held.get(run_id)
        if holder is owner:
            return
        if holder is not None:
            raise RunBusyError(path, run_id, os.getpid())
        offset = _offset(run_id)
        try:
            fcntl.lockf(entry.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset, os.SEEK_SET)
        except OSError as exc:
            busy = isinstance(exc, BlockingIOError) or exc.errno in (errno.EAGAIN, errno.EACCES)
            holder = _holder(entry.fd, offset) if busy else None
            if not entry.held:
                _close(path, entry)
            if busy:
                raise RunBusyError(path, run_id, holder) from None
            raise EventLogError(f"cannot lock run {run_id} in {lock_path(path)}: {exc}") from exc
        entry.held[run_id] = owner


def release(path: str, owner: object) -> None:
    """Let go of every run ``owner`` holds in the log at ``path``."""
    with _guard:
        key = _key(path)
        entry = _files.get(key) if key is not None else None
        if entry is None:
            return
        for run_id in [r for r, o in entry.held.items() if o is owner]:
            del entry.held[run_id]
            fcntl.lockf(entry.fd, fcntl.LOCK_UN, 1, _offset(run_id), os.SEEK_SET)
        if not entry.held:
            _close(path, entry)


def _open(path: str) -> _LockFile:
    # Found by stat, not by opening it again: closing even a descriptor that never locked
    # anything would drop every lock this process holds on the file.
    key = _key(path)
    if key is not None and key in _files:
        return _files[key]
    name = lock_path(path)
    try:
        # 0600 like the log: the lock file holds nothing, but it says who runs what.
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise EventLogError(f"cannot open the lock file {name}: {exc.strerror}") from None
    stat = os.fstat(fd)
    entry = _LockFile(fd)
    _files[(stat.st_dev, stat.st_ino)] = entry
    return entry


def _key(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(lock_path(path))
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino)


def _close(path: str, entry: _LockFile) -> None:
    for key, value in list(_files.items()):
        if value is entry:
            del _files[key]
    os.close(entry.fd)


# struct flock on Linux: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid.
_FLOCK = "hhqqi"


def _holder(fd: int, offset: int) -> int | None:
    """The process holding the lock at ``offset`` (Linux; None elsewhere or if it is gone)."""
    if not sys.platform.startswith("linux"):
        return None
    query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
    try:
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
    except OSError:
        return None
    l_type, _, _, _, pid = struct.unpack(_FLOCK, answer)
    return pid if l_type != fcntl.F_UNLCK and pid > 0 else None


def holder(path: str, run_id: str) -> int | None:
    """The process writing ``run_id`` of the log at ``path`` now, or None when nobody holds it
    (or the platform does not say who). Takes nothing, creates nothing."""
    with _guard:
        key = _key(path)
        if key is None:
            return None  # no lock file: no writer ever held a run here
        entry = _files.get(key)
        if entry is not None and run_id in entry.held:
            return os.getpid()
        fd = entry.fd if entry is not None else None
        opened = fd is None
        if fd is None:
            try:
                fd = os.open(lock_path(path), os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
        try:
            return _holder(fd, _offset(run_id))
        finally:
            # Safe: this process holds no lock on the file (it had no entry for it).
            if opened:
                os.close(fd)
