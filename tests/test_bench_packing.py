"""The packing benchmark's arithmetic: aggregate img/s over the common span, per-run img/s, the table."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_packing import format_table, parse_args, summarize  # noqa: E402


def test_aggregate_is_all_images_over_the_common_span() -> None:
    results = [
        {"start": 10.0, "end": 20.0, "images": 1000, "mib": None},  # 100 img/s
        {"start": 12.0, "end": 22.0, "images": 500, "mib": None},  # 50 img/s, started 2 s later
    ]
    summary = summarize(results)
    assert summary["aggregate"] == pytest.approx(1500 / 12.0)  # not the sum of rates (150): the windows differ
    assert summary["per_run_mean"] == pytest.approx(75.0)
    assert summary["per_run_min"] == pytest.approx(50.0)


def test_table_reports_failed_levels() -> None:
    rows = [
        {"runs": 1, "aggregate": 100.0, "per_run_mean": 100.0, "per_run_min": 100.0, "mib": 512.4},
        {"runs": 2, "error": "1 worker(s) failed or timed out; see n2/worker-1.log"},
    ]
    table = format_table(rows).splitlines()
    assert table[2] == "| 1 | 100 | 100 | 100 | 512 |"
    assert table[3].startswith("| 2 | failed: 1 worker(s) failed")


def test_quick_and_bad_settings() -> None:
    quick = parse_args(["--quick"])
    assert (quick.runs, quick.device) == ([1, 2], "cpu")
    with pytest.raises(SystemExit):
        parse_args(["--runs", "0"])
