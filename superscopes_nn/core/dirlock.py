"""Guarding a run directory: one writer at a time, and a writable place before any model loads.

    check_run_dir("runs/exp1")     # OSError (one line) if it is a file, under a file, unwritable, full
    lock = DirLock("runs/exp1")    # RunDirBusy naming the directory and the holder's pid
    ...
    lock.release()

The lock is a kernel lock (``flock``) on the run directory itself, so deleting ``.lock``,
``.lock.owner`` or any other file does not defeat it; it dies with its process, so the lock
of a SIGKILLed writer is simply taken over. ``.lock.owner`` holds ``pid N`` of the holder,
written atomically, for the refusal message (removed on release; a stale one names a dead
pid and is ignored). :class:`~superscopes_nn.core.store.RunStore` holds one while it is open.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

LOCK_FILE = ".lock"
OWNER_FILE = ".lock.owner"


class RunDirBusy(RuntimeError):
    """Another live process holds the run directory's lock (the message names the directory and the pid)."""


def check_run_dir(run_dir: str | os.PathLike) -> Path:
    """Refuse an output directory that cannot be written, before any model loads.

    Raises a one-line ``OSError`` naming the directory: it is a file, it lies under a
    file, or a probe write in it (or its nearest existing parent) fails (no permission,
    read-only file system, full disk). Creates nothing that stays.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"run directory {run_dir} exists and is a file; choose a directory")
    at = run_dir
    while not at.exists() and at != at.parent:
        at = at.parent
    if not at.is_dir():
        raise NotADirectoryError(f"cannot create run directory {run_dir}: {at} is a file")
    try:
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=at)
        try:
            os.write(fd, b"superscopes write probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        where = "" if at == run_dir else f" (in {at})"
        raise OSError(err.errno, f"cannot write run directory {run_dir}{where}: {err.strerror or err}") from None
    return run_dir


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DirLock:
    """The exclusive lock of ``run_dir`` (which must exist), taken at once or refused.

    A kernel lock (``flock``) on the directory itself: no file a user can delete defeats it,
    and it dies with its process. ``.lock.owner`` (``pid N``) only names the holder in the
    refusal and is removed on release. Without ``fcntl`` (Windows), ``filelock`` on ``.lock``.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self._fd = self._lock = None
        try:
            self._take()
        except _Busy:
            raise RunDirBusy(f"run directory {self.run_dir} is in use by {self.holder()}; wait for it to finish "
                             "or choose another directory") from None
        except OSError as err:
            raise OSError(f"cannot lock run directory {self.run_dir}: {err.strerror or err}") from None
        owner, tmp = self.run_dir / OWNER_FILE, self.run_dir / (OWNER_FILE + ".tmp")
        tmp.write_text(f"pid {os.getpid()}\n", encoding="utf-8")
        os.replace(tmp, owner)

    def _take(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows
            import filelock

            lock = filelock.FileLock(str(self.run_dir / LOCK_FILE), timeout=0, thread_local=False)
            try:
                lock.acquire()
            except filelock.Timeout:
                raise _Busy() from None
            self._lock = lock
            return
        fd = os.open(self.run_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _Busy() from None
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def holder(self, wait: float = 2.0) -> str:
        """``"pid N"`` of the lock's live holder (it may be a moment from writing ``.lock.owner``)."""
        owner, deadline = self.run_dir / OWNER_FILE, time.monotonic() + wait
        while True:
            try:
                text = owner.read_text(encoding="utf-8").strip()
            except OSError:
                text = ""
            pid = text.removeprefix("pid ")
            if (pid.isdigit() and _alive(int(pid))) or time.monotonic() > deadline:
                return text or "another process"
            time.sleep(0.02)

    def release(self) -> None:
        if self._fd is None and self._lock is None:
            return
        try:
            owner = self.run_dir / OWNER_FILE
            if owner.read_text(encoding="utf-8").strip() == f"pid {os.getpid()}":
                owner.unlink()
        except OSError:
            pass
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None


class _Busy(Exception):
    pass
