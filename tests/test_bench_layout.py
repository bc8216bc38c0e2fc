"""The layout benchmark runs end to end (both parts) and its table has a row per thread count x layout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_layout.py"


def test_quick_run_prints_both_parts() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith("| 1 | fp32 |")]
    assert [row.split("|")[3].strip() for row in rows] == ["nchw", "channels_last"]
    assert rows[0].rstrip().endswith("| 1.00 |")  # the reference row
    assert "2 single-thread processes of fp32:" in out
