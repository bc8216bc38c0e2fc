"""Exclusive ``flock`` locks on files: one ``study run`` per study directory, one ``fit`` per run directory.

Torch-free. The kernel drops an ``flock`` when its holder dies, so a killed process never leaves a stale lock.
The lock file holds ``pid <N> since <time>`` of the holder, for the message a refused second user gets.
"""

from __future__ import annotations

import fcntl
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

RUN_LOCK_FILE = ".fit.lock"
_ATTEMPTS = 5  # tries to lock the file on disk while holders keep removing it
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


class LockHeld(RuntimeError):
    """The lock is held by another process (the message names the directory and the holder)."""


def _open_lock_file(path: Path) -> tuple[IO[str], bool] | None:
    """The lock file opened for reading and writing (created if absent) and whether this call created it; None if
    it (or its folder) was removed between the tries."""
    try:
        return os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), "r+"), True
    except FileExistsError:
        pass
    except FileNotFoundError:
        return None
    try:
        return os.fdopen(os.open(path, os.O_RDWR), "r+"), False
    except FileNotFoundError:
        return None


def _is_on_disk(handle: IO[str], path: Path) -> bool:
    """Whether ``handle`` is still the file at ``path`` (a holder that puts its lock back removes the file)."""
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(handle.fileno())
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


class FileLock:
    """An exclusive, non-blocking ``flock`` on ``path``.

    Args:
        path: the lock file (created with its directory).
        what: how a refusal describes the holder, e.g. ``another `study run` is using DIR``.
    """

    def __init__(self, path: str | Path, what: str) -> None:
        self.path = Path(path)
        self.what = what
        self._handle: IO[str] | None = None
        self._previous: str | None = None  # the file's text before this lock took it; None: the lock created it

    def acquire(self) -> FileLock:
        """Take the lock or raise :class:`LockHeld` naming the holder."""
        for _ in range(_ATTEMPTS):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            opened = _open_lock_file(self.path)
            if opened is None:
                continue
            handle, created = opened
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                handle.close()
                raise LockHeld(f"{self.what} (lock {self.path} held by {holder})") from None
            if _is_on_disk(handle, self.path):
                self._hold(handle, created)
                return self
            handle.close()  # its holder put it back (removed it) after this open: lock the file now on disk
        raise LockHeld(f"{self.what} (lock {self.path} keeps being removed and recreated)")

    def _hold(self, handle: IO[str], created: bool) -> None:
        handle.seek(0)
        self._previous = None if created else handle.read()
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {datetime.now(UTC).isoformat(timespec='seconds')}\n")
        handle.flush()
        self._handle = handle

    def release(self, put_back: bool = False) -> None:
        """Drop the lock.

        Args:
            put_back: First leave the lock file as this lock found it: removed if taking the lock created it, else
                with its earlier text (for a fit that failed before it did anything).
        """
        if self._handle is None:
            return
        previous = self._previous
        if put_back and previous is None:
            self.path.unlink(missing_ok=True)  # while held: a process that opened it meanwhile sees it gone
        elif put_back and previous is not None:
            self._handle.seek(0)
            self._handle.truncate()
            self._handle.write(previous)
            self._handle.flush()
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(path: str | Path, what: str = "locked") -> str | None:
    """The refusal message when some process holds the lock at ``path`` right now, else None (probes briefly, and
    leaves the lock file as it found it)."""
    if not Path(path).exists():
        return None
    lock = FileLock(path, what)
    try:
        lock.acquire()
    except LockHeld as held:
        return str(held)
    lock.release(put_back=True)
    return None


def run_dir_lock(run_dir: str | Path) -> FileLock:
    """The lock of a run directory (not yet taken)."""
    return FileLock(Path(run_dir) / RUN_LOCK_FILE, f"run directory {run_dir} is in use by another fit")


def wait_for_run_dir(run_dir: str | Path, timeout_s: float) -> None:
    """Wait up to ``timeout_s`` for a run directory's fit to end; raise :class:`LockHeld` if it does not."""
    deadline = time.monotonic() + timeout_s
    while True:
        message = holder(Path(run_dir) / RUN_LOCK_FILE, f"run directory {run_dir} is in use by another fit")
        if message is None:
            return
        if time.monotonic() >= deadline:
            raise LockHeld(message)
        time.sleep(0.2)


def is_first_process() -> bool:
    """False in the extra processes of a multi-process (DDP) run, which share rank 0's run directory."""
    return all(os.environ.get(name, "0") == "0" for name in RANK_VARIABLES)


_HELD: dict[Path, FileLock] = {}


def hold_run_dir_lock(run_dir: str | Path) -> bool:
    """Lock ``run_dir`` until :func:`release_run_dir_locks` or the end of this process; raise :class:`LockHeld` if
    another process has it.

    Called by ``fit --run_dir`` before it writes anything, so two fits can never share a run directory. Repeated
    calls in one process keep the one lock; the extra ranks of a DDP run skip it.

    Returns:
        Whether this process holds the lock (False in the extra ranks of a DDP run).
    """
    key = Path(run_dir).resolve()
    if not is_first_process():
        return False
    if key not in _HELD:
        _HELD[key] = run_dir_lock(run_dir).acquire()
    return True


def release_run_dir_locks(put_back: bool = False) -> None:
    """Release the run-directory locks this process holds (when its fit is over).

    Args:
        put_back: Leave each lock file as its lock found it (see :meth:`FileLock.release`): for a fit that failed
            before it trained.
    """
    while _HELD:
        _HELD.popitem()[1].release(put_back=put_back)
