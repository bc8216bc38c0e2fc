"""Run a study's plan locally: dependency order, several runs at once, resume, failure isolation."""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from imbcompress.atomic import atomic_write
from imbcompress.locks import LockHeld, wait_for_run_dir
from imbcompress.study.plan import GENERATED_FRAGMENT, Plan, Run, save_plan
from imbcompress.study.spec import LAST_CKPT
from imbcompress.study.state import (
    LOG_FILE,
    StudyLock,
    checkpoint_problem,
    has_checkpoint,
    is_done,
    log_tail,
    now,
    read_status,
    set_checkpoint_aside,
    update_status,
)

DEFAULT_COMMAND = [sys.executable, "-m", "imbcompress"]
POLL_SECONDS = 0.2
TERMINATE_GRACE_SECONDS = 10.0
LOCK_WAIT_SECONDS = 30.0  # a fit left by a killed study gets this long to end before its run is given up
PR_SET_PDEATHSIG = 1


def detect_gpus() -> list[int]:
    """The CUDA devices this study may use, as the ids ``CUDA_VISIBLE_DEVICES`` takes (never imports torch).

    An existing ``CUDA_VISIBLE_DEVICES`` (e.g. ``2,3`` from a scheduler) is kept: its ids are handed out, not
    renumbered. Otherwise every GPU that ``nvidia-smi -L`` lists; none without ``nvidia-smi``.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [part.strip() for part in visible.split(",") if part.strip()]
        if not all(part.isdigit() for part in ids):
            raise ValueError(
                f"CUDA_VISIBLE_DEVICES: invalid value {visible!r} for the study runner (allowed: comma-separated "
                "integer device ids; pass --jobs 1 or unset it)"
            )
        return [int(part) for part in ids]
    if shutil.which("nvidia-smi") is None:
        return []
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
    return list(range(sum(1 for line in listing.splitlines() if line.startswith("GPU "))))


def slot_envs(jobs: int, gpus: list[int], cpus: int | None = None) -> list[dict[str, str]]:
    """Environment overrides of each concurrent slot: a share of the CPU threads, or its own GPU(s).

    Args:
        jobs: number of runs at once.
        gpus: visible GPU indices; split evenly across slots (a slot may get several for DDP).
        cpus: CPU cores to share (default: all).

    Returns:
        One environment dict per slot.
    """
    if jobs < 1:
        raise ValueError(f"jobs: invalid value {jobs} (allowed: an integer >= 1)")
    threads = max(1, (cpus or os.cpu_count() or 1) // jobs)
    envs = []
    for slot in range(jobs):
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        if gpus:
            share = max(1, len(gpus) // jobs)
            mine = [gpus[(slot * share + i) % len(gpus)] for i in range(share)]
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in mine)
        envs.append(env)
    return envs


def prepare_run(run: Run) -> None:
    """Create the run directory and write its generated fragment (inline callbacks, the distillation teacher)."""
    Path(run.dir).mkdir(parents=True, exist_ok=True)
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


def stop_process_group(proc: subprocess.Popen, grace_s: float = TERMINATE_GRACE_SECONDS) -> None:
    """SIGTERM a run's whole process group (the fit and anything it started), SIGKILL it after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace_s if sig == signal.SIGTERM else None)
            break
        except subprocess.TimeoutExpired:
            continue


def start_fit(cmd: list[str], log: object, env: dict[str, str]) -> subprocess.Popen:
    """Start a fit in its own process group that dies with this process (``PR_SET_PDEATHSIG`` on Linux)."""
    return subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,  # type: ignore[arg-type]
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
        run.dir, state="running", attempt=attempt, resumed=resume, start_mode=how, pid=proc.pid, command=cmd, started=now(),
        first_started=previous.get("first_started") or now(), returncode=None, error=None, total_s=total,
    )  # fmt: skip
    return proc


def _end_attempt(run: Run, started: float, **fields: object) -> None:
    """Record the end of an attempt: ``fields`` plus its duration, added to the run's ``total_s``."""
    duration = round(time.monotonic() - started, 1)
    total = round(float(read_status(run.dir).get("total_s") or 0.0) + duration, 1)
    update_status(run.dir, ended=now(), duration_s=duration, total_s=total, **fields)


def finalize(run: Run, returncode: int, started: float) -> str:
    """Record how a finished subprocess ended; returns ``done`` or ``failed``."""
    if returncode == 0 and is_done(run.dir):
        _end_attempt(run, started, state="done", returncode=0)
        return "done"
    error = f"exit code {returncode}" if returncode != 0 else "exit code 0 but metrics.json is missing or incomplete"
    _end_attempt(run, started, state="failed", returncode=returncode, error=error, log_tail=log_tail(run.dir))
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
        returncode = proc.wait()
    finally:
        if proc.returncode is None:  # interrupted (e.g. the job was cancelled): the fit goes too
            stop_process_group(proc)
            _end_attempt(run, started, state="interrupted", returncode=proc.returncode)
    return finalize(run, returncode, started)


@dataclass
class _Active:
    run: Run
    proc: subprocess.Popen
    slot: int
    started: float


@dataclass
class LocalScheduler:
    """Runs a plan's runs as subprocesses, at most ``jobs`` at once, dependencies first.

    Args:
        plan: the expanded study.
        command_prefix: the command that runs ``fit`` (default ``python -m imbcompress``); tests inject a fake.
        jobs: runs at once; each gets ``cpus // jobs`` threads, or its share of the GPUs.
        gpus: GPU indices to share out (default: detected).
        echo: where progress lines go.
        restart_corrupt: move a corrupt ``last.ckpt`` aside and restart its run from scratch (else the run fails).
    """

    plan: Plan
    command_prefix: list[str] = field(default_factory=lambda: list(DEFAULT_COMMAND))
    jobs: int = 1
    gpus: list[int] | None = None
    echo: Callable[[str], None] = print
    restart_corrupt: bool = False

    def __post_init__(self) -> None:
        self.envs = slot_envs(self.jobs, detect_gpus() if self.gpus is None else self.gpus)
        self.states: dict[str, str] = {}
        self.active: dict[str, _Active] = {}

    def _pending(self) -> list[Run]:
        return [run for run in self.plan.runs if run.id not in self.states and run.id not in self.active]

    def _block_orphans(self) -> None:
        for run in self._pending():
            bad = [dep for dep in run.deps if self.states.get(dep) in ("failed", "blocked")]
            if bad:
                self.states[run.id] = "blocked"
                Path(run.dir).mkdir(parents=True, exist_ok=True)
                update_status(run.dir, state="blocked", error=f"dependency failed or blocked: {', '.join(bad)}")
                self.echo(f"[blocked] {run.id} (needs {', '.join(bad)})")

    def _launch_ready(self) -> None:
        free = [slot for slot in range(self.jobs) if slot not in {a.slot for a in self.active.values()}]
        for run in self._pending():
            if not free:
                return
            if all(self.states.get(dep) == "done" for dep in run.deps):
                slot = free.pop(0)
                try:
                    proc = launch(run, self.command_prefix, self.envs[slot], self.restart_corrupt)
                except (OSError, LockHeld, CorruptCheckpoint) as error:  # this run fails, the study goes on
                    self.states[run.id] = "failed"
                    update_status(run.dir, state="failed", returncode=None, error=f"could not start: {error}")
                    self.echo(f"[failed] {run.id} (could not start: {error})")
                    free.insert(0, slot)
                    continue
                self.active[run.id] = _Active(run, proc, slot, time.monotonic())
                how = read_status(run.dir).get("start_mode")
                self.echo(f"[start] {run.id} (pid {proc.pid}{'; ' + how if how.startswith('restart') else ''})")

    def _reap(self) -> bool:
        finished = [a for a in self.active.values() if a.proc.poll() is not None]
        for item in finished:
            del self.active[item.run.id]
            state = finalize(item.run, item.proc.returncode, item.started)
            self.states[item.run.id] = state
            self.echo(f"[{state}] {item.run.id}" + ("" if state == "done" else f" (exit {item.proc.returncode})"))
        return bool(finished)

    def _stop_all(self) -> None:
        for item in self.active.values():
            try:
                os.killpg(item.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + TERMINATE_GRACE_SECONDS
        for item in self.active.values():
            stop_process_group(item.proc, max(0.1, deadline - time.monotonic()))
            _end_attempt(item.run, item.started, state="interrupted", returncode=item.proc.returncode)
        self.active.clear()

    def run(self) -> dict[str, str]:
        """Execute every unfinished run; returns the final state of each run (done / failed / blocked)."""
        for run in self.plan.runs:
            if is_done(run.dir):
                self.states[run.id] = "done"
        try:
            while True:
                self._block_orphans()
                self._launch_ready()
                if not self.active:
                    self._block_orphans()  # runs that failed to start in this pass block their dependants
                    break
                if not self._reap():
                    time.sleep(POLL_SECONDS)
        finally:
            self._stop_all()
        return {run.id: self.states.get(run.id, "pending") for run in self.plan.runs}


def run_plan(
    plan: Plan,
    command_prefix: list[str] | None = None,
    jobs: int = 1,
    gpus: list[int] | None = None,
    echo: Callable[[str], None] = print,
    lock: bool = True,
    restart_corrupt: bool = False,
) -> dict[str, str]:
    """Run a plan (see :class:`LocalScheduler`); returns the state of every run.

    With ``lock`` the study lock is taken here; pass False when the caller already holds it.
    """
    scheduler = LocalScheduler(plan, list(command_prefix or DEFAULT_COMMAND), jobs, gpus, echo, restart_corrupt)
    if not lock:
        save_plan(plan)
        return scheduler.run()
    with StudyLock(plan.out_dir):
        save_plan(plan)
        return scheduler.run()
