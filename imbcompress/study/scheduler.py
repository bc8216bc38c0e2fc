"""Decide what runs when and where: dependency order, concurrent slots (CPU thread shares or GPUs), stopping.

Each attempt itself is :mod:`imbcompress.study.attempt`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from imbcompress.locks import LockHeld
from imbcompress.study.attempt import (
    DEFAULT_COMMAND,
    TERMINATE_GRACE_SECONDS,
    CorruptCheckpoint,
    end_attempt,
    finalize,
    launch,
    signal_group,
    stop_process_group,
)
from imbcompress.study.plan import Plan, Run, save_plan
from imbcompress.study.state import StudyLock, is_done, read_status, update_status
from imbcompress.study.usage import GpuPeaks, peak_rss_mib, wait_with_usage

POLL_SECONDS = 0.2


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


def usable_cpus() -> int:
    """The cores this process may run on: its CPU affinity (``taskset``, a SLURM or cgroup cpuset), which
    ``os.cpu_count()`` ignores (it counts the whole machine); the machine's count where affinity is unknown."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no sched_getaffinity (macOS, Windows)
        return os.cpu_count() or 1


def slot_envs(jobs: int, gpus: list[int], cpus: int | None = None) -> list[dict[str, str]]:
    """Environment overrides of each concurrent slot: a share of the CPU threads, or its own GPU(s).

    Args:
        jobs: number of runs at once.
        gpus: visible GPU indices; split evenly across slots (a slot may get several for DDP).
        cpus: CPU cores to share (default: the cores this process may run on, :func:`usable_cpus`).

    Returns:
        One environment dict per slot.
    """
    if jobs < 1:
        raise ValueError(f"jobs: invalid value {jobs} (allowed: an integer >= 1)")
    threads = max(1, (cpus or usable_cpus()) // jobs)
    envs = []
    for slot in range(jobs):
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        if gpus:
            share = max(1, len(gpus) // jobs)
            mine = [gpus[(slot * share + i) % len(gpus)] for i in range(share)]
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in mine)
        envs.append(env)
    return envs


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
        only: run only these run ids (``study run --only``; :func:`~imbcompress.study.plan.select_run_ids` adds
            what they start from); None: every run.
    """

    plan: Plan
    command_prefix: list[str] = field(default_factory=lambda: list(DEFAULT_COMMAND))
    jobs: int = 1
    gpus: list[int] | None = None
    echo: Callable[[str], None] = print
    restart_corrupt: bool = False
    only: set[str] | None = None

    def __post_init__(self) -> None:
        self.envs = slot_envs(self.jobs, detect_gpus() if self.gpus is None else self.gpus)
        self.gpu_slots = any("CUDA_VISIBLE_DEVICES" in env for env in self.envs)
        self.gpu_peaks = GpuPeaks()
        self.states: dict[str, str] = {}
        self.active: dict[str, _Active] = {}
        self.runs = [run for run in self.plan.runs if self.only is None or run.id in self.only]  # in plan order

    def _pending(self) -> list[Run]:
        return [run for run in self.runs if run.id not in self.states and run.id not in self.active]

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
                update_status(run.dir, slot=slot, cuda_visible_devices=self.envs[slot].get("CUDA_VISIBLE_DEVICES"))
                how = str(read_status(run.dir).get("start_mode"))
                self.echo(f"[start] {run.id} (pid {proc.pid}{'; ' + how if how.startswith('restart') else ''})")

    def _reap(self) -> bool:
        self.gpu_peaks.sample([item.proc.pid for item in self.active.values()] if self.gpu_slots else [])
        finished = []
        for item in list(self.active.values()):
            usage = wait_with_usage(item.proc, block=False)
            if item.proc.returncode is not None:
                finished.append((item, usage))
        for item, usage in finished:
            del self.active[item.run.id]
            memory = {"peak_rss_mib": peak_rss_mib(usage), "peak_gpu_mib": self.gpu_peaks.pop(item.proc.pid)}
            state = finalize(item.run, item.proc.returncode, item.started, **memory)
            self.states[item.run.id] = state
            self.echo(f"[{state}] {item.run.id}" + ("" if state == "done" else f" (exit {item.proc.returncode})"))
        return bool(finished)

    def _stop_all(self) -> None:
        for item in self.active.values():
            signal_group(item.proc, signal.SIGTERM)
        deadline = time.monotonic() + TERMINATE_GRACE_SECONDS
        for item in self.active.values():
            stop_process_group(item.proc, max(0.1, deadline - time.monotonic()))
            end_attempt(item.run, item.started, state="interrupted", returncode=item.proc.returncode)
        self.active.clear()

    def run(self) -> dict[str, str]:
        """Execute every unfinished run (of ``only``); returns the final state of each (done / failed / blocked)."""
        for run in self.runs:
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
        return {run.id: self.states.get(run.id, "pending") for run in self.runs}


def run_plan(
    plan: Plan,
    command_prefix: list[str] | None = None,
    jobs: int = 1,
    gpus: list[int] | None = None,
    echo: Callable[[str], None] = print,
    lock: bool = True,
    restart_corrupt: bool = False,
    only: set[str] | None = None,
) -> dict[str, str]:
    """Run a plan (see :class:`LocalScheduler`); returns the state of every run (of ``only``, when given).

    With ``lock`` the study lock is taken here; pass False when the caller already holds it. The whole plan is
    saved either way: ``only`` restricts what this call runs, not what the study is.
    """
    scheduler = LocalScheduler(plan, list(command_prefix or DEFAULT_COMMAND), jobs, gpus, echo, restart_corrupt, only)
    if not lock:
        save_plan(plan)
        return scheduler.run()
    with StudyLock(plan.out_dir):
        save_plan(plan)
        return scheduler.run()
