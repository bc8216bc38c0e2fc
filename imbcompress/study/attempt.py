"""One attempt of one run: launch its fit (own process group, dies with us), record how it ended.

What runs when and where is :mod:`imbcompress.study.scheduler`; a SLURM job runs one attempt through
:func:`execute_run`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO

from imbcompress.atomic import atomic_write
from imbcompress.locks import LockHeld, wait_for_run_dir
from imbcompress.run_dir import FIT_OUTPUTS
from imbcompress.study.plan import GENERATED_FRAGMENT, Run
from imbcompress.study.spec import LAST_CKPT
from imbcompress.study.state import (
    LOG_FILE,
    checkpoint_problem,
    has_checkpoint,
    is_done,
    log_tail,
    now,
    read_status,
    set_checkpoint_aside,
    update_status,
)
from imbcompress.study.usage import peak_rss_mib, wait_with_usage

DEFAULT_COMMAND = [sys.executable, "-m", "imbcompress"]
TERMINATE_GRACE_SECONDS = 10.0
LOCK_WAIT_SECONDS = 30.0  # a fit left by a killed study gets this long to end before its run is given up
PR_SET_PDEATHSIG = 1


def prepare_run(run: Run) -> None:
    """Create the run directory and write its generated fragment (inline callbacks, the distillation teacher).

    A ``test`` run (a post-hoc remedy) starts again: what an interrupted attempt wrote (its ``config.yaml``,
    TensorBoard files) is removed, else ``imbcompress test`` would find a run there and write to ``RUN/test-<n>/``.
    """
    Path(run.dir).mkdir(parents=True, exist_ok=True)
    if run.kind == "test":
        for path in (path for pattern in FIT_OUTPUTS for path in Path(run.dir).glob(pattern)):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    if run.callbacks:
        text = run.fragment_text().encode()
        atomic_write(Path(run.dir) / GENERATED_FRAGMENT, lambda handle: handle.write(text))


def lost_attempt_seconds(run_dir: str | Path, status: dict) -> float:
    """Run time of an attempt whose end was never recorded, or 0.

    That happens when the study process died together with the run (SIGKILL, the machine stopped): the status still
    says ``running``. The attempt lasted at least from its start to its last write (its log or checkpoint), which is
    what is counted.
    """
    if status.get("state") != "running" or not status.get("started"):
        return 0.0
    writes = [Path(run_dir) / LOG_FILE, Path(run_dir) / LAST_CKPT]
    last = max((path.stat().st_mtime for path in writes if path.exists()), default=None)
    if last is None:
        return 0.0
    return max(0.0, round(last - datetime.fromisoformat(status["started"]).timestamp(), 1))


def _die_with_parent(prctl: Callable[[int, int], int] | None, parent: int) -> None:
    """In the child before exec: its own process group (set by Popen) and SIGTERM when the study process dies."""
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the study died before the death signal was armed
        os._exit(1)


def _prctl() -> Callable[[int, int], int] | None:
    """libc's ``prctl`` on Linux (loaded in the parent: the child between fork and exec must not load libraries)."""
    if not sys.platform.startswith("linux"):
        return None
    return getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to a run's process group (the fit and anything it started), if it still exists."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def stop_process_group(proc: subprocess.Popen, grace_s: float = TERMINATE_GRACE_SECONDS) -> None:
    """SIGTERM a run's whole process group, SIGKILL it after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        signal_group(proc, sig)
        try:
            proc.wait(timeout=grace_s if sig == signal.SIGTERM else None)
            break
        except subprocess.TimeoutExpired:
            continue


def start_fit(cmd: list[str], log: IO[str], env: dict[str, str]) -> subprocess.Popen:
    """Start a fit in its own process group that dies with this process (``PR_SET_PDEATHSIG`` on Linux)."""
    return subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        preexec_fn=functools.partial(_die_with_parent, _prctl(), os.getpid()),
    )  # fmt: skip


class CorruptCheckpoint(RuntimeError):
    """A run's ``last.ckpt`` cannot be resumed from; the message names the file and the way out."""


def _check_checkpoint(run: Run, restart_corrupt: bool) -> str:
    """``resume``, ``start`` or, after moving a corrupt checkpoint aside, ``restart``; raises without permission."""
    if not has_checkpoint(run.dir):
        return "start"
    problem = checkpoint_problem(run.dir)
    if problem is None:
        return "resume"
    path = Path(run.dir) / LAST_CKPT
    if not restart_corrupt:
        raise CorruptCheckpoint(
            f"checkpoint {path} is corrupt ({problem}), so run {run.id} cannot resume from it; re-run with "
            "--restart-corrupt to move it to last.ckpt.corrupt-<n> and restart this run from scratch"
        )
    return f"restart (corrupt {LAST_CKPT} moved to {set_checkpoint_aside(run.dir).name}: {problem})"


def launch(
    run: Run, command_prefix: list[str], env: dict[str, str] | None = None, restart_corrupt: bool = False
) -> subprocess.Popen:
    """Start one run as a subprocess, resuming from its last checkpoint when it has one.

    The log is appended to, so the output of earlier attempts is kept. The run time of an earlier attempt that was
    lost without a record (:func:`lost_attempt_seconds`) is added to ``total_s`` here. A fit still holding the run
    directory (left by a killed study) gets ``LOCK_WAIT_SECONDS`` to end, else :class:`LockHeld` is raised. A
    corrupt ``last.ckpt`` raises :class:`CorruptCheckpoint`, or with ``restart_corrupt`` is moved aside and the
    run starts from scratch.
    """
    if is_done(run.dir):
        raise RuntimeError(f"run {run.id} is finished; refusing to start it again")
    wait_for_run_dir(run.dir, LOCK_WAIT_SECONDS)
    how = _check_checkpoint(run, restart_corrupt)
    prepare_run(run)
    resume = how == "resume"
    cmd = run.command(command_prefix, resume=resume)
    previous = read_status(run.dir)
    attempt = int(previous.get("attempt", 0)) + 1
    total = round(float(previous.get("total_s") or 0.0) + lost_attempt_seconds(run.dir, previous), 1)
    with open(Path(run.dir) / LOG_FILE, "a") as log:
        log.write(f"\n=== attempt {attempt} at {now()} ({how}) ===\n$ {' '.join(cmd)}\n")
        log.flush()
        proc = start_fit(cmd, log, {**os.environ, **(env or {})})
    update_status(
        run.dir, state="running", attempt=attempt, resumed=resume, start_mode=how, pid=proc.pid, command=cmd,
        started=now(), first_started=previous.get("first_started") or now(), returncode=None, error=None, total_s=total,
    )  # fmt: skip
    return proc


def end_attempt(run: Run, started: float, **fields: object) -> None:
    """Record the end of an attempt: ``fields`` plus its duration, added to the run's ``total_s``."""
    duration = round(time.monotonic() - started, 1)
    total = round(float(read_status(run.dir).get("total_s") or 0.0) + duration, 1)
    update_status(run.dir, ended=now(), duration_s=duration, total_s=total, **fields)


def finalize(run: Run, returncode: int, started: float, **usage: object) -> str:
    """Record how a finished subprocess ended (and ``usage``: peak memory fields); returns ``done`` or ``failed``."""
    if returncode == 0 and is_done(run.dir):
        end_attempt(run, started, state="done", returncode=0, **usage)
        return "done"
    error = f"exit code {returncode}" if returncode != 0 else "exit code 0 but metrics.json is missing or incomplete"
    end_attempt(run, started, state="failed", returncode=returncode, error=error, log_tail=log_tail(run.dir), **usage)
    return "failed"


def execute_run(
    run: Run, command_prefix: list[str] | None = None, env: dict[str, str] | None = None, restart_corrupt: bool = False
) -> str:
    """Run one run to completion in the foreground (what a SLURM job does); returns its final state."""
    if is_done(run.dir):
        return "done"
    plan_root = Path(run.dir).parents[3]
    missing = [dep for dep in run.deps if not is_done(plan_root / "runs" / dep)]
    if missing:
        Path(run.dir).mkdir(parents=True, exist_ok=True)
        update_status(run.dir, state="blocked", error=f"dependencies not finished: {', '.join(missing)}")
        return "blocked"
    started = time.monotonic()
    try:
        proc = launch(run, command_prefix or DEFAULT_COMMAND, env, restart_corrupt)
    except (CorruptCheckpoint, LockHeld) as error:
        update_status(run.dir, state="failed", returncode=None, error=str(error))
        return "failed"
    try:
        usage = wait_with_usage(proc, block=True)
    finally:
        if proc.returncode is None:  # interrupted (e.g. the job was cancelled): the fit goes too
            stop_process_group(proc)
            end_attempt(run, started, state="interrupted", returncode=proc.returncode)
    assert proc.returncode is not None
    return finalize(run, proc.returncode, started, peak_rss_mib=peak_rss_mib(usage))
