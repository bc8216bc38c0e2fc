"""What is on disk for a run: finished results, its status record, its log, and the study lock."""

from __future__ import annotations

import json
import zipfile
from collections import deque
from datetime import UTC, datetime
from pathlib import Path

from imbcompress.atomic import write_json_atomic
from imbcompress.locks import FileLock, holder
from imbcompress.names import METRICS_FILE, SCHEMA_VERSION
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
    """The run's ``metrics.json`` if it exists and parses completely (with a test macro-F1), else None.

    Raises:
        ValueError: the file's ``schema_version`` is newer than this code understands (naming the file).
    """
    path = Path(run_dir) / METRICS_FILE
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    version = data.get("schema_version", 1) if isinstance(data, dict) else None
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise ValueError(
            f"{path}: schema_version {version} is newer than this imbcompress understands ({SCHEMA_VERSION}); "
            "read it with the imbcompress version that wrote it, or upgrade"
        )
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


def checkpoint_problem(run_dir: str | Path) -> str | None:
    """Why the run's ``last.ckpt`` cannot be resumed from (truncated, not a zip archive, a CRC error), or None.

    ``torch.save`` writes a zip archive; reading every member's CRC catches a truncated or damaged file without
    importing torch.
    """
    path = Path(run_dir) / LAST_CKPT
    if not zipfile.is_zipfile(path):
        return "not a complete zip archive (truncated, or not written by torch.save)"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return f"unreadable archive: {error}"
    return None if bad is None else f"member {bad!r} fails its CRC check"


def set_checkpoint_aside(run_dir: str | Path) -> Path:
    """Rename a corrupt ``last.ckpt`` to ``last.ckpt.corrupt-<n>`` (the first free n) and return the new path."""
    path = Path(run_dir) / LAST_CKPT
    number = 1
    while path.with_name(f"{path.name}.corrupt-{number}").exists():
        number += 1
    target = path.with_name(f"{path.name}.corrupt-{number}")
    path.rename(target)
    return target


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


class StudyLock(FileLock):
    """An exclusive lock on a study output directory (``DIR/.study.lock``), so two ``study run``s never drive
    the same runs. A killed study never leaves a stale lock behind (see :mod:`imbcompress.locks`).

    Args:
        out_dir: the study output directory.
    """

    def __init__(self, out_dir: str | Path) -> None:
        super().__init__(Path(out_dir) / LOCK_FILE, f"another `study run` is using {out_dir}")


def lock_held(out_dir: str | Path) -> bool:
    """Whether some process holds the study lock right now."""
    return holder(Path(out_dir) / LOCK_FILE) is not None


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
