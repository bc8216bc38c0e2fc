"""What is on disk for a run: finished results, its status record, its log, and the study lock."""

from __future__ import annotations

import fcntl
import json
import os
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from imbcompress.atomic import write_json_atomic
from imbcompress.names import METRICS_FILE
from imbcompress.study.plan import Plan, Run
from imbcompress.study.spec import LAST_CKPT

STATUS_FILE = "run_status.json"
LOG_FILE = "run.log"
LOCK_FILE = ".study.lock"
INVOCATIONS_FILE = "invocations.log"
LOG_TAIL_LINES = 40
STATES = ("done", "running", "failed", "blocked", "pending")


def now() -> str:
    """Current UTC time, ISO format."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_metrics(run_dir: str | Path) -> dict | None:
    """The run's ``metrics.json`` if it exists and parses completely (with a test macro-F1), else None."""
    path = Path(run_dir) / METRICS_FILE
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    test = data.get("test") if isinstance(data, dict) else None
    if not isinstance(test, dict) or not isinstance(test.get("macro_f1"), int | float):
        return None
    return data


def is_done(run_dir: str | Path) -> bool:
    """A run is finished only when its ``metrics.json`` is complete."""
    return read_metrics(run_dir) is not None


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether an interrupted run left a checkpoint to resume from."""
    return (Path(run_dir) / LAST_CKPT).is_file()


def read_status(run_dir: str | Path) -> dict:
    """The run's status record (empty when it never started)."""
    try:
        with open(Path(run_dir) / STATUS_FILE) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def update_status(run_dir: str | Path, **fields: object) -> dict:
    """Merge ``fields`` into the run's status record (atomic write) and return it."""
    status = read_status(run_dir)
    status.update(fields, updated=now())
    write_json_atomic(Path(run_dir) / STATUS_FILE, status)
    return status


def log_tail(run_dir: str | Path, lines: int = LOG_TAIL_LINES) -> str:
    """Last lines of the run's log, for the failure record."""
    try:
        with open(Path(run_dir) / LOG_FILE, errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines))
    except OSError:
        return ""


class StudyLock:
    """An exclusive lock on a study output directory, so two ``study run``s never drive the same runs.

    The lock is an ``flock`` on ``DIR/.study.lock``: the kernel drops it when the holder dies, so a killed
    study never leaves a stale lock behind.

    Args:
        out_dir: the study output directory.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / LOCK_FILE
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``RuntimeError`` naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RuntimeError(
                f"another `study run` is using {self.path.parent} (lock {self.path} held by {holder})"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {now()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        """Drop the lock."""
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_held(out_dir: str | Path) -> bool:
    """Whether some process holds the study lock right now."""
    try:
        with StudyLock(out_dir):
            return False
    except RuntimeError:
        return True


def run_state(run: Run, states: dict[str, str], study_active: bool) -> str:
    """State of one run for ``study status`` (dependencies must already be in ``states``)."""
    if is_done(run.dir):
        return "done"
    status = read_status(run.dir)
    recorded = status.get("state")
    # a SLURM job runs without the local lock; its own record is the best evidence
    if recorded == "running" and (study_active or status.get("slurm_job_id")):
        return "running"
    if recorded == "failed":
        return "failed"
    if any(states.get(dep) in ("failed", "blocked") for dep in run.deps):
        return "blocked"
    return "pending"


def plan_states(plan: Plan) -> dict[str, str]:
    """State of every run of the plan, in plan order."""
    active = lock_held(plan.out_dir)
    states: dict[str, str] = {}
    for run in plan.runs:
        states[run.id] = run_state(run, states, active)
    return states
