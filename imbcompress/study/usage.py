"""What a run used: peak CPU memory (the child's rusage) and peak GPU memory (sampled with ``nvidia-smi``).

Torch-free. The fit runs in its own process group (:mod:`imbcompress.study.attempt`), so every GPU process whose
group is the fit's belongs to that run, whatever wrapper (``srun``, ``env``) started it.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time

GPU_SAMPLE_SECONDS = 2.0
QUERY = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]


def wait_with_usage(proc: subprocess.Popen, block: bool) -> resource.struct_rusage | None:
    """Reap ``proc`` if it ended (or wait for it with ``block``) and return its rusage; None while it runs.

    Sets ``proc.returncode`` as ``Popen.poll`` would.
    """
    try:
        pid, status, usage = os.wait4(proc.pid, 0 if block else os.WNOHANG)
    except ChildProcessError:  # already reaped elsewhere: no usage to report
        proc.poll()
        return None
    if pid == 0:
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage


def peak_rss_mib(usage: resource.struct_rusage | None) -> float | None:
    """Peak resident memory of the fit process (the largest of it and the children it waited for), MiB."""
    if usage is None:
        return None
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return round(usage.ru_maxrss * scale / 2**20, 1)


def gpu_memory_by_group() -> dict[int, float]:
    """GPU memory in use (MiB) per process group, from ``nvidia-smi``; empty when it is missing or shows no pids."""
    if shutil.which(QUERY[0]) is None:
        return {}
    result = subprocess.run(QUERY, capture_output=True, text=True, check=False)
    groups: dict[int, float] = {}
    for line in result.stdout.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) != 2 or not parts[0].isdigit():
            continue
        try:
            group = os.getpgid(int(parts[0]))  # a pid of another namespace (container) is not ours
            memory = float(parts[1])
        except (ProcessLookupError, PermissionError, ValueError):
            continue
        groups[group] = groups.get(group, 0.0) + memory
    return groups


class GpuPeaks:
    """Peak GPU memory of each running fit's process group, sampled at most every ``GPU_SAMPLE_SECONDS``."""

    def __init__(self) -> None:
        self.peaks: dict[int, float] = {}
        self._last = -float("inf")

    def sample(self, groups: list[int]) -> None:
        """Sample now if the interval has passed, keeping the maximum per process group in ``groups``."""
        if not groups or time.monotonic() - self._last < GPU_SAMPLE_SECONDS:
            return
        self._last = time.monotonic()
        for group, memory in gpu_memory_by_group().items():
            if group in groups:
                self.peaks[group] = max(self.peaks.get(group, 0.0), memory)

    def pop(self, group: int) -> float | None:
        """The peak of a finished fit (None when never seen on a GPU)."""
        return self.peaks.pop(group, None)
