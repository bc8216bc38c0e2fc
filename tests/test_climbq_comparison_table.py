"""The ClimbQ comparison table of docs/climbq.md: final and validation-selected numbers, checks, partial results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from climbq_comparison_table import table  # noqa: E402

COUNTS = [500, 200, 50, 20]


def _metrics(f1: list[float], compression: list[dict[str, Any]], remedies: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "class_names": ["a", "b", "c", "d"],
        "train_class_counts": COUNTS,
        "data": {"dataset": "image_folder", "val_fraction": 0.1},
        "compression": compression,
        "remedies": remedies,
        "test": {"accuracy": sum(f1) / 4, "macro_f1": sum(f1) / 4, "per_class": {"f1": f1}},
    }


def _write(path: Path, metrics: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics))


def _run(
    out: Path, name: str, seed: int, final: list[float], best: list[float], epoch: int, order: Any = None, **record: Any
) -> None:
    run = out / f"{name}_s{seed}"
    compression = [{"method": "climbq", "weight_bits": 2, "activation_bits": 2, **record}]
    metrics = _metrics(final, compression, [])
    if order is not None:
        metrics["data"]["shuffle_seed"] = order
    _write(run / "metrics.json", metrics)
    _write(run / "best/metrics.json", _metrics(best, compression, []))
    (run / "checkpoints").mkdir(exist_ok=True)
    torch.save({"epoch": epoch}, run / "checkpoints/best.ckpt")


@pytest.fixture
def out(tmp_path: Path) -> Path:
    _write(tmp_path / "fp32/metrics.json", _metrics([0.9, 0.8, 0.6, 0.3], [], []))
    return tmp_path


def test_final_and_validation_selected_columns_with_seed_means(out: Path) -> None:
    record = {"homovar": False, "exclude": None}
    _run(out, "climbq", 0, [0.8, 0.6, 0.4, 0.0], [0.8, 0.6, 0.4, 0.2], epoch=6, **record)
    _run(out, "climbq", 1, [0.8, 0.6, 0.4, 0.2], [0.8, 0.6, 0.4, 0.4], epoch=19, **record)
    lines, missing = table(out, [0, 1])
    assert lines[0].endswith("smallest class d (20 images)") and "770 training images" in lines[0]
    assert lines[1] == "FP32 parent (final epoch): accuracy 65.00, macro-F1 65.00, F1 smallest 30.00"
    row = [cell.strip() for cell in lines[-1].strip("|").split("|")]
    assert row[0] == "ClimbQ 2-bit, stem quantized (official)"
    assert row[3] == "10.00 (0.00 / 20.00)" and row[4] == "7/20"  # the smallest class's F1; 1-based epochs
    assert row[7] == "30.00 (20.00 / 40.00)"
    assert "dorefa_w2a2 (0 of 2 seeds)" in missing and not any(m.startswith("climbq (") for m in missing)


def test_a_row_with_one_seed_of_two_is_left_out_and_named(out: Path) -> None:
    _run(out, "climbq", 0, [0.8, 0.6, 0.4, 0.0], [0.8, 0.6, 0.4, 0.2], epoch=6, homovar=False, exclude=None)
    lines, missing = table(out, [0, 1])
    assert not any("ClimbQ 2-bit" in line for line in lines) and "climbq (1 of 2 seeds)" in missing
    lines, _ = table(out, [0])
    assert any(line.startswith("| ClimbQ 2-bit, stem quantized") for line in lines)


def test_a_run_that_is_not_what_its_row_says_is_refused(out: Path) -> None:
    _run(out, "climbq", 0, [0.8, 0.6, 0.4, 0.0], [0.8, 0.6, 0.4, 0.2], epoch=6, homovar=True, exclude=None)
    with pytest.raises(SystemExit, match=r"climbq_s0: compression record .* does not match the row's settings"):
        table(out, [0])


def test_seeds_that_trained_on_the_same_batches_are_refused(out: Path) -> None:
    record = {"homovar": False, "exclude": None}
    _run(out, "climbq", 0, [0.8, 0.6, 0.4, 0.0], [0.8, 0.6, 0.4, 0.2], epoch=6, order=0, **record)
    _run(out, "climbq", 1, [0.8, 0.6, 0.4, 0.0], [0.8, 0.6, 0.4, 0.2], epoch=6, order=0, **record)
    with pytest.raises(SystemExit, match=r"climbq: seeds 0 and 1 trained on the same batches \(data.shuffle_seed 0"):
        table(out, [0, 1])
    _run(out, "climbq", 1, [0.8, 0.6, 0.4, 0.2], [0.8, 0.6, 0.4, 0.4], epoch=19, order=1, **record)
    lines, _ = table(out, [0, 1])
    assert lines[-1].startswith("| ClimbQ 2-bit, stem quantized")


def test_the_comparison_script_refuses_an_unknown_row_before_writing_anything(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks/climbq_comparison.sh"
    out = tmp_path / "cmp"
    env = {"PATH": "/usr/bin:/bin", "ROWS": "climbq climbq_plus"}
    done = subprocess.run(["bash", str(script), str(out)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "ROWS='climbq climbq_plus': unknown row 'climbq_plus'; allowed: dorefa_w2a2 climbq_stem_fp" in done.stderr
    assert not out.exists()
