"""The machine a run or a report ran on, from the standard library only (the study CLI must not import torch)."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the checkout's root when imbcompress runs from one


def _cpuinfo_lines() -> list[str]:
    """The lines of ``/proc/cpuinfo`` (empty where there is none: not Linux)."""
    try:
        with open("/proc/cpuinfo") as handle:
            return handle.readlines()
    except OSError:
        return []


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what :mod:`platform` knows)."""
    names = [line.split(":", 1)[1].strip() for line in _cpuinfo_lines() if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def cpu_has_native_bf16() -> bool | None:
    """Whether the CPU computes bf16 natively (x86 AVX-512 BF16 or AMX, Arm BF16); None when it cannot be told.

    Without it PyTorch emulates bf16 and autocast is slower than fp32 (docs/performance.md has the measurements).
    """
    lines = _cpuinfo_lines()
    flags = {flag for line in lines if line.startswith(("flags", "Features")) for flag in line.split()}
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"}) if flags else None


def describe_host(gpu: str | None = None) -> dict[str, object]:
    """What ``metrics.json`` records under ``host``: CPU model, visible CPUs, OS, Python and the GPU (or None)."""
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "system": platform.system(),
        "python": platform.python_version(),
        "gpu": gpu,
    }


def host_text(host: dict) -> str:
    """One line for a report: ``AMD EPYC, 2 CPU(s), Linux, Python 3.11.7`` (plus the GPU when there was one)."""
    text = f"{host.get('cpu')}, {host.get('cpu_count')} CPU(s), {host.get('system')}, Python {host.get('python')}"
    return text + (f", GPU {host['gpu']}" if host.get("gpu") else "")


def git_revision(root: Path) -> dict[str, object] | None:
    """``{"commit": HEAD, "dirty": tracked files differ from HEAD}`` of the git checkout whose top level is ``root``.

    None when ``root`` is not the top of a git work tree (an installed package, even one inside another repository's
    tree, such as a virtual environment in a checkout) or git cannot answer. Untracked files do not count as dirty.
    """

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30, check=True)
        return done.stdout

    try:
        top, commit = git("rev-parse", "--show-toplevel", "HEAD").splitlines()  # one line each
        if Path(top).resolve() != root.resolve():
            return None
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError, ValueError):  # ValueError: not the two lines asked for
        return None
    return {"commit": commit, "dirty": dirty}


@functools.cache
def code_revision() -> dict[str, object] | None:
    """The commit of the imbcompress checkout this process runs, for ``metrics.json`` (None: not a checkout).

    Cached: a command asks at its start, so a checkout moved while a long fit trains does not relabel it.
    """
    return git_revision(PACKAGE_ROOT)


def revision_text(code: dict | None, missing: str = "not recorded") -> str:
    """``commit 1a2b3c4d5e6f`` (``, with uncommitted changes`` when dirty), or ``missing`` when there is none."""
    if not code:
        return missing
    return f"commit {str(code.get('commit'))[:12]}" + (", with uncommitted changes" if code.get("dirty") else "")
