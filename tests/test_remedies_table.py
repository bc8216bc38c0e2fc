"""The remedy table of docs/remedies.md: the numbers it prints and the runs it refuses."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from remedies_table import table  # noqa: E402

COUNTS = [500, 200, 50, 20]


def _run(root: Path, name: str, seed: int, f1: list[float], remedies: list[str], epochs: int = 40) -> None:
    run = root / f"{name}_s{seed}"
    run.mkdir(parents=True)
    metrics = {
        "dataset": "cifar10",
        "imbalance": {"profile": "exponential", "ratio": 100.0, "seed": seed},
        "class_names": ["a", "b", "c", "d"],
        "train_class_counts": COUNTS,
        "seed": seed,
        "remedies": [{"method": method} for method in remedies],
        "test": {"accuracy": sum(f1) / 4, "macro_f1": sum(f1) / 4, "num_samples": 400, "per_class": {"f1": f1}},
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "config.yaml").write_text(f"trainer:\n  max_epochs: {epochs}\n")


def test_table_means_over_seeds_and_orders_the_tail_smallest_first(tmp_path: Path) -> None:
    _run(tmp_path, "ce", 0, [0.9, 0.8, 0.4, 0.0], [])
    _run(tmp_path, "ce", 1, [0.9, 0.8, 0.6, 0.2], [])
    _run(tmp_path, "ldam_drw", 0, [0.9, 0.8, 0.6, 0.4], ["ldam_drw"])
    lines, missing = table(tmp_path, [0, 1])
    assert lines[0] == "| remedy | accuracy | macro-F1 | F1 d (20) | F1 c (50) | F1 b (200) |"
    assert (
        lines[2] == "| cross-entropy | 57.50 (52.50 / 62.50) | 57.50 (52.50 / 62.50) | 10.00 (0.00 / 20.00) | "
        "50.00 (40.00 / 60.00) | 80.00 (80.00 / 80.00) |"
    )
    assert len(lines) == 3 and "ldam_drw (1 of 2 seeds)" in missing


def test_a_run_that_is_not_what_its_row_says_is_refused(tmp_path: Path) -> None:
    _run(tmp_path, "ce", 0, [0.9, 0.8, 0.4, 0.0], [])
    _run(tmp_path, "focal", 0, [0.9, 0.8, 0.4, 0.0], ["class_balanced"])
    with pytest.raises(SystemExit, match=r"remedies \['class_balanced'\] do not match the row's \['focal'\]"):
        table(tmp_path, [0])


def test_fits_of_different_lengths_are_refused(tmp_path: Path) -> None:
    _run(tmp_path, "ce", 0, [0.9, 0.8, 0.4, 0.0], [])
    _run(tmp_path, "focal", 0, [0.9, 0.8, 0.4, 0.0], ["focal"], epochs=12)
    with pytest.raises(SystemExit, match=r"different numbers of epochs: \[12, 40\]"):
        table(tmp_path, [0])


def test_each_run_needs_its_seed_as_run_and_subset_seed_and_the_same_profile(tmp_path: Path) -> None:
    _run(tmp_path, "ce", 0, [0.9, 0.8, 0.4, 0.0], [])
    _run(tmp_path, "ce", 1, [0.9, 0.8, 0.6, 0.2], [])  # another subset seed: accepted
    _run(tmp_path, "focal", 1, [0.9, 0.8, 0.4, 0.0], ["focal"])
    metrics = json.loads((tmp_path / "focal_s1/metrics.json").read_text())
    metrics["imbalance"]["seed"] = 0
    (tmp_path / "focal_s1/metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(SystemExit, match=r"focal_s1: seed 1 and subset seed 0, expected 1 for both"):
        table(tmp_path, [0, 1])
    metrics["imbalance"].update(seed=1, ratio=50.0)
    (tmp_path / "focal_s1/metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(SystemExit, match=r"focal_s1: imbalance .*'ratio': 50.0.* differs from the other runs'"):
        table(tmp_path, [0, 1])
