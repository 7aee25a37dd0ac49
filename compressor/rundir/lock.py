"""One ``compress`` run per directory: :func:`run_lock` holds ``RUN/.compress.lock`` while a run trains, exports and
reports; :func:`refuse_if_training` lets a reader (``compress report``, ``compress export --run``) refuse a directory
that a run is still changing.

The lock file is a plain file holding the PID of the run that holds it (empty when none does). The lock never
follows a symbolic link and never writes into a file that is not such a lock file: a link, a hard-linked file or a
file with other content in its place is refused in one line, untouched.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from compressor.errors import InputError
from compressor.rundir.layout import LOCK_FILE, RunLayout

_HELD: dict[Path, int] = {}
_LOCK_CONTENT = re.compile(rb"\d*\n?")
_READ_BYTES = 64


def _open_lock(path: Path, flags: int) -> int:
    """A descriptor of the lock file at ``path``, refusing anything but a plain, singly linked lock file."""
    try:
        handle = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o666)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise InputError("is a symbolic link, not a lock file of this tool; remove it (a run's lock is a plain "
                             "file of its own)", path) from None
        raise InputError(f"cannot open the run's lock file ({error.strerror})", path) from None
    info = os.fstat(handle)
    problem = ("is not a plain file" if not stat.S_ISREG(info.st_mode) else
               "has other hard links" if info.st_nlink != 1 else
               "holds other data" if not _LOCK_CONTENT.fullmatch(os.pread(handle, _READ_BYTES, 0)) else None)
    if problem:
        os.close(handle)
        raise InputError(f"{problem}, so it is not a lock file of this tool; it was left untouched: remove it", path)
    return handle


def _flock_or_refuse(handle: int, operation: int, refusal: str, run_dir: Path) -> None:
    """``flock`` without waiting; held elsewhere: an :class:`InputError` of ``refusal`` with ``{pid}``, the holder's."""
    try:
        fcntl.flock(handle, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(handle, _READ_BYTES, 0).decode(errors="replace").strip() or "unknown"
        raise InputError(refusal.format(pid=holder), run_dir) from None


@contextmanager
def run_lock(run_dir: Path) -> Iterator[Path]:
    """Hold ``RUN/.compress.lock`` (``fcntl.flock``) while the block runs: one ``compress`` run per directory.

    Another process holding it makes this raise an :class:`InputError` naming the directory and the holder's PID,
    at once (no waiting); so does a lock path that is not a lock file of this tool (see the module docstring).
    Re-entrant within a process. A directory this call created and the run left empty (a run refused before
    writing anything) is removed again.
    """
    run_dir = Path(run_dir).resolve()
    if run_dir in _HELD:
        _HELD[run_dir] += 1
        try:
            yield run_dir
        finally:
            _HELD[run_dir] -= 1
        return
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot write the run directory ({error.strerror})", run_dir) from None
    lock = RunLayout(run_dir).lock
    handle = _open_lock(lock, os.O_RDWR | os.O_CREAT)
    try:
        _flock_or_refuse(handle, fcntl.LOCK_EX, "another compress run (PID {pid}) is using this run directory; wait "
                         "for it to finish or choose another --out", run_dir)
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)
        _HELD[run_dir] = 1
        try:
            yield run_dir
        finally:
            del _HELD[run_dir]
            os.ftruncate(handle, 0)
            if created and [p.name for p in run_dir.iterdir()] == [LOCK_FILE]:
                lock.unlink()
                run_dir.rmdir()
    finally:
        os.close(handle)


def refuse_if_training(run_dir: Path) -> None:
    """Raise a one-line :class:`InputError` when another process's ``compress`` run holds ``run_dir``'s lock (its
    files are still changing); return at once otherwise, holding nothing. This process's own run is not refused.

    A directory without a lock file, or whose lock path is no lock file of this tool, is held by no run.
    """
    run_dir = Path(run_dir).resolve()
    lock = RunLayout(run_dir).lock
    if run_dir in _HELD or not lock.is_file() or lock.is_symlink():
        return
    try:
        handle = _open_lock(lock, os.O_RDONLY)
    except InputError:
        return
    try:
        _flock_or_refuse(handle, fcntl.LOCK_SH, "a compress run (PID {pid}) is training in this run directory and its "
                         "files are still changing; wait for it to finish", run_dir)
        fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        os.close(handle)
