"""File-system helpers every layer uses: atomic writes and swaps that survive a kill.

A file is written to a temporary name beside its target, flushed to disk and renamed into place
(:func:`write_atomic`); a directory (a dataset) is built beside its target and swapped in
(:func:`exchange`, falling back to a rename), so a reader never sees a half-written output.
:func:`hold` gives one process at a time the right to write a target (a dataset or run
directory) for the whole of its write: a second writer is refused at once, naming the holder.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:  # e.g. ENOSPC from write()
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename inside it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the system cannot."""
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a))


class Busy(ValueError):
    """Another process holds the write lock of a target (see :func:`hold`)."""


_HELD: dict[Path, int] = {}  # lock files this process holds, with their nesting depth


def lock_file(target: Path) -> Path:
    """The lock file of ``target``: a hidden sibling, so it exists before the target does."""
    target = Path(target).absolute()
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def hold(target: Path, command: str | None = None) -> Iterator[None]:
    """Hold ``target``'s write lock for the body; raise :class:`Busy` if another process does.

    The lock is an advisory ``flock`` on :func:`lock_file`, which the kernel releases when the
    holder dies (a killed writer never leaves a stale lock); the file records who holds it
    (pid, host, command) for the refusal's message and is removed on release. Re-entrant within
    a process. Local file systems only: ``flock`` does not exclude writers on other hosts of a
    network file system.
    """
    lock = lock_file(target)
    if lock in _HELD:
        _HELD[lock] += 1
        try:
            yield
        finally:
            _HELD[lock] -= 1
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = _acquire(lock, Path(target))
    except OSError as err:
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror, str(lock)) from err
    _HELD[lock] = 1
    try:
        who = command or " ".join(["macflow", *sys.argv[1:]])
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}: {who}\n".encode())
        except OSError:  # a full disk: the lock holds without its note; the write will report
            pass
        yield
    finally:
        del _HELD[lock]
        # Unlink while still holding it: a process waiting on this inode then sees it is stale.
        lock.unlink(missing_ok=True)
        os.close(fd)


def _acquire(lock: Path, target: Path) -> int:
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise Busy(
                f"{target} is being written by another process ({holder}); wait for it to "
                "finish or write elsewhere"
            ) from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder released and removed it between our open and flock: retry
