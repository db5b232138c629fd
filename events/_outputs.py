"""Output files (exports, traces, reports): written whole or not at all, never over a log.

Every command that writes a file other than the log writes it through :func:`open_output`. An
output holds what the log holds (prompts and responses), and a command's output path is one
typo away from its log's: so an output

- is refused (:class:`OutputIsLogError`) when its path is one of the given logs, after
  resolving symbolic links and comparing files (so a hard link is the log too), or one of their
  companion files (``-wal``, ``-shm``, ``-journal``, ``-lock``), or when the file already there
  is any maker log, a companion of one, or a database still being written;
- is written to a temporary file in the destination's directory, made readable by its owner
  alone (mode :data:`OUTPUT_MODE`, 0600, whatever the umask), flushed to disk and renamed over
  the destination only when the whole output is written. When the block fails (any exception,
  a KeyboardInterrupt or a cancellation included) the temporary file is removed and a file
  already at the destination is left exactly as it was. On Linux the temporary file has no name
  until it is complete (``O_TMPFILE``), so even a process killed outright leaves nothing behind;
  elsewhere a killed process may leave a ``.NAME.*.tmp`` file beside the destination.

``None`` or ``"-"`` is standard output, passed through unchanged (flushed, not closed).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import IO, Any, BinaryIO, Literal, TextIO, cast, overload

from ._errors import EventLogError
from ._log import _header_says_maker_log

__all__ = ["OUTPUT_MODE", "OutputIsLogError", "open_output"]

OUTPUT_MODE = 0o600
"""The mode every output file is created with, whatever the umask: it holds prompts and
responses, so only its owner reads it (like the log itself)."""

_COMPANIONS = ("-wal", "-shm", "-journal", "-lock")
"""Files SQLite (and maker's run locks) keep beside a log: overwriting one damages the log."""

_NO_TMPFILE = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.EISDIR})

_WAL_MAGIC = (b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83")
_SQLITE_MAGIC = b"SQLite format 3\x00"

PathLike = str | os.PathLike[str]


class OutputIsLogError(EventLogError):
    """An output path is a log, a log's companion file, or another maker log: nothing was
    written, and the log is untouched.

    ``path`` is the output path as given, ``log`` the log it would have overwritten, and
    ``reason`` what the path is (``"the log x.db"``), as the message says it.
    """

    def __init__(self, path: str, log: str, reason: str) -> None:
        super().__init__(
            f"refusing to write {path}: it is {reason}; an output never overwrites a log, "
            "choose another path"
        )
        self.path = path
        self.log = log
        self.reason = reason


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): then they are not one file
        return False


def _starts_with(path: str, magics: Iterable[bytes]) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    return any(head.startswith(magic) for magic in magics)


def _is_empty(path: str) -> bool:
    try:
        return os.path.getsize(path) == 0
    except OSError:
        return False


def _check_output(path: PathLike, logs: Iterable[PathLike] = ()) -> None:
    """Raise :class:`OutputIsLogError` if writing ``path`` could overwrite a log (see the
    module's documentation); do nothing otherwise."""
    shown = os.fspath(path)
    real = os.path.realpath(shown)
    for log in logs:
        log_shown = os.fspath(log)
        log_real = os.path.realpath(log_shown)
        if real == log_real or _same_file(real, log_real):
            raise OutputIsLogError(shown, log_shown, f"the log {log_shown}")
        for suffix in _COMPANIONS:
            if real == log_real + suffix or _same_file(real, log_real + suffix):
                raise OutputIsLogError(
                    shown, log_shown, f"the {suffix[1:]} file of the log {log_shown}"
                )
    # Any other maker log too (a hard link to one is one), named as the file it resolves to.
    named = shown if real == os.path.abspath(shown) else real
    if _header_says_maker_log(real):
        raise OutputIsLogError(shown, real, f"the maker log {named}")
    for suffix in _COMPANIONS:
        base = real.removesuffix(suffix)
        if base != real and (_header_says_maker_log(base) or _being_written(base)):
            log_named = named.removesuffix(suffix) if named.endswith(suffix) else base
            raise OutputIsLogError(shown, base, f"the {suffix[1:]} file of the log {log_named}")
    if _being_written(real):
        raise OutputIsLogError(
            shown, real, f"a database being written ({named}-wal is beside it), perhaps a log"
        )


def _being_written(path: str) -> bool:
    """Whether ``path`` is an SQLite database with a write-ahead log beside it: a new log's
    header is written at its first checkpoint, and until then the file is empty (or a bare
    SQLite header), its pages all in the write-ahead log."""
    return (_is_empty(path) or _starts_with(path, [_SQLITE_MAGIC])) and _starts_with(
        path + "-wal", _WAL_MAGIC
    )


@overload
def open_output(
    path: PathLike | None,
    *,
    logs: Iterable[PathLike] = (),
    mode: Literal["w"] = "w",
    encoding: str = "utf-8",
) -> AbstractContextManager[TextIO]: ...


@overload
def open_output(
    path: PathLike | None,
    *,
    logs: Iterable[PathLike] = (),
    mode: Literal["wb"],
    encoding: str = "utf-8",
) -> AbstractContextManager[BinaryIO]: ...


def open_output(
    path: PathLike | None,
    *,
    logs: Iterable[PathLike] = (),
    mode: Literal["w", "wb"] = "w",
    encoding: str = "utf-8",
) -> AbstractContextManager[Any]:
    """A context manager giving a file to write the output at ``path`` into (text for ``"w"``,
    in ``encoding``; bytes for ``"wb"``); the file is in place, whole, when the block ends.

    ``logs`` are the logs the command reads or writes: ``path`` may be none of them. Refusals
    raise :class:`OutputIsLogError` before anything is created, and again, for a log that
    appeared meanwhile, before the rename; a file that cannot be created or renamed raises
    :class:`OSError` naming ``path``. A symbolic link at ``path`` is written through: the file
    it points to is replaced. ``None`` or ``"-"`` writes to standard output.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    if path is None or os.fspath(path) == "-":
        return _stdout(mode)
    return _atomic(os.fspath(path), tuple(logs), mode, encoding)


@contextmanager
def _stdout(mode: str) -> Iterator[IO[str] | IO[bytes]]:
    out: IO[str] | IO[bytes] = sys.stdout if mode == "w" else sys.stdout.buffer
    yield out
    out.flush()


@contextmanager
def _atomic(
    path: str, logs: tuple[PathLike, ...], mode: str, encoding: str
) -> Iterator[IO[str] | IO[bytes]]:
    _check_output(path, logs)
    target = os.path.realpath(path)
    if os.path.isdir(target):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
    pending = _Pending(path, target)
    try:
        file = cast(
            "IO[str] | IO[bytes]",
            os.fdopen(pending.fd, mode, encoding=encoding if mode == "w" else None),
        )
    except BaseException:
        os.close(pending.fd)
        pending.discard()
        raise
    try:
        yield file
        file.flush()
        os.fsync(file.fileno())
        _check_output(path, logs)  # a log made at the path while the output was written
        pending.commit()
    except BaseException:
        with contextlib.suppress(OSError):
            file.close()
        pending.discard()
        raise
    file.close()


class _Pending:
    """The temporary file an output is written to, and its rename into place."""

    def __init__(self, path: str, target: str) -> None:
        self.path = path
        self.target = target
        self.directory = os.path.dirname(target) or "."
        self.name: str | None = None  # the temporary file's name, while it has one
        try:
            self.fd = self._open()
            os.fchmod(self.fd, OUTPUT_MODE)  # the umask may have taken bits off (or not)
        except OSError as exc:
            self.discard()
            raise OSError(exc.errno, exc.strerror, path) from None

    def _open(self) -> int:
        tmpfile = getattr(os, "O_TMPFILE", 0)
        if tmpfile and os.path.isdir("/proc/self/fd"):
            try:
                # Nameless until committed: a killed process leaves nothing in the directory.
                return os.open(self.directory, tmpfile | os.O_WRONLY | os.O_CLOEXEC, OUTPUT_MODE)
            except OSError as exc:
                # The kernel or the file system does not support O_TMPFILE: use a named file.
                if exc.errno not in _NO_TMPFILE:
                    raise
        fd, self.name = tempfile.mkstemp(
            dir=self.directory, prefix=f".{os.path.basename(self.target)}.", suffix=".tmp"
        )
        return fd

    def commit(self) -> None:
        try:
            if self.name is None:
                self.name = self._link()
            os.replace(self.name, self.target)
            self.name = None
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, self.path) from None
        _sync_directory(self.directory)

    def _link(self) -> str:
        """Give the nameless temporary file a name beside the target (to rename it from)."""
        directory = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            while True:
                base = f".{os.path.basename(self.target)}.{secrets.token_hex(6)}.tmp"
                try:
                    # A directory fd makes os.link call linkat(), which can follow the magic
                    # /proc link to the open file (plain link() would link the symlink).
                    os.link(
                        f"/proc/self/fd/{self.fd}", base, dst_dir_fd=directory, follow_symlinks=True
                    )
                except FileExistsError:
                    continue
                self.name = os.path.join(self.directory, base)  # from here, remove on failure
                return self.name
        finally:
            os.close(directory)

    def discard(self) -> None:
        if self.name is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.name)
            self.name = None


def _sync_directory(directory: str) -> None:
    # The rename is durable once the directory is: best effort (not every system allows it).
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
