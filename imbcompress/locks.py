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
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


class LockHeld(RuntimeError):
    """The lock is held by another process (the message names the directory and the holder)."""


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

    def acquire(self) -> FileLock:
        """Take the lock or raise :class:`LockHeld` naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise LockHeld(f"{self.what} (lock {self.path} held by {holder})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {datetime.now(UTC).isoformat(timespec='seconds')}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        """Drop the lock."""
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(path: str | Path, what: str = "locked") -> str | None:
    """The refusal message when some process holds the lock at ``path`` right now, else None (probes briefly)."""
    if not Path(path).exists():
        return None
    try:
        with FileLock(path, what):
            return None
    except LockHeld as held:
        return str(held)


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


def _is_first_process() -> bool:
    """False in the extra processes of a multi-process (DDP) run, which share rank 0's run directory."""
    return all(os.environ.get(name, "0") == "0" for name in RANK_VARIABLES)


_HELD: dict[Path, FileLock] = {}


def hold_run_dir_lock(run_dir: str | Path) -> None:
    """Lock ``run_dir`` until :func:`release_run_dir_locks` or the end of this process; raise :class:`LockHeld` if
    another process has it.

    Called by ``fit --run_dir`` before it writes anything, so two fits can never share a run directory. Repeated
    calls in one process keep the one lock; the extra ranks of a DDP run skip it.
    """
    key = Path(run_dir).resolve()
    if key in _HELD or not _is_first_process():
        return
    _HELD[key] = run_dir_lock(run_dir).acquire()


def release_run_dir_locks() -> None:
    """Release the run-directory locks this process holds (when its fit is over)."""
    while _HELD:
        _HELD.popitem()[1].release()
