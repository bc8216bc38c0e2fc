"""The machine a run or a report ran on, from the standard library only (the study CLI must not import torch)."""

from __future__ import annotations

import os
import platform


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
