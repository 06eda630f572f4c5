"""The lock by which one sweep owns its output directory (``DIR/.lock``).

Two sweeps writing one directory would interleave their trials in one store and overwrite each
other's checkpoint. A sweep therefore holds an exclusive ``fcntl.flock`` on ``DIR/.lock`` for its
whole run, ``--resume`` included. The kernel drops the lock when the process dies, however it
dies, so a killed sweep never leaves a stale lock: the file stays, unlocked, and only says which
process held it last.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from jaxae.errors import UserError

LOCK = ".lock"


class DirectoryLock:
    """An exclusive, non-blocking lock on ``directory``; ``release()`` (or process exit) frees it.

    Raises:
        UserError: another process holds it (naming that process), or the lock file cannot be
            created (a read-only directory).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / LOCK
        try:
            # O_CLOEXEC: a child process (a report renderer, say) must not inherit the lock.
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise UserError(f"--out {str(self.path.parent)!r} is not writable "
                            f"({e.strerror or e})") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = self._holder()
            os.close(self._fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise UserError(f"--out {str(self.path.parent)!r} is in use by another sweep "
                                f"(pid {holder or 'unknown'})") from None
            raise UserError(f"--out {str(self.path.parent)!r} cannot be locked "
                            f"({e.strerror or e})") from None
        # Say who owns it, for the message of a sweep that finds it taken.
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def _holder(self) -> str | None:
        try:
            text = os.pread(self._fd, 32, 0).decode("ascii", "replace").strip()
        except OSError:
            return None
        return text if text.isdigit() else None

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = -1

    def __enter__(self) -> DirectoryLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
