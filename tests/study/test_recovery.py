"""The recovery table (and the other tables) of a study with remedies, on hand-made metrics.json files."""

import csv
import json
from pathlib import Path

import pytest

from imbcompress.study.aggregate import paired_difference, smallest_class_f1
from imbcompress.study.cli import main
from imbcompress.study.plan import expand, save_plan
from imbcompress.study.spec import load_study

from .conftest import write_study

# macro-F1 by (variant, configuration) for seeds 0 and 1. Gaps by hand, exponential-r100:
#   fp32 (0.8-0.6)/0.8 = 0.25, (0.9-0.72)/0.9 = 0.20   q    (0.7-0.49)/0.7 = 0.30, (0.8-0.52)/0.8 = 0.35
#   fp32@la 0.125, 0.125                                q@la (0.72-0.576)/0.72 = 0.20, (0.8-0.64)/0.8 = 0.20
F1 = {
    ("balanced", "fp32"): (0.80, 0.90),
    ("balanced", "q"): (0.70, 0.80),
    ("balanced", "fp32@la"): (0.80, 0.88),
    ("balanced", "q@la"): (0.72, 0.80),
    ("exponential-r100", "fp32"): (0.60, 0.72),
    ("exponential-r100", "q"): (0.49, 0.52),
    ("exponential-r100", "fp32@la"): (0.70, 0.77),
    ("exponential-r100", "q@la"): (0.576, 0.64),
}
# per-class F1 = macro-F1 + these; the last class has the fewest training images on the imbalanced variant
OFFSETS = {"ce": (0.1, 0.1, -0.2), "la": (0.025, 0.025, -0.05)}
COUNTS = {"balanced": [10, 10, 10], "exponential-r100": [100, 10, 1]}
LA_CALLBACK = {"class_path": "imbcompress.callbacks.LogitAdjustedLoss", "init_args": {"tau": 1.0}}
LA = {"callbacks": [LA_CALLBACK], "label": "LA"}


def write_metrics(run, f1: float) -> None:
    Path(run.dir).mkdir(parents=True, exist_ok=True)
    metrics = {
        "schema_version": 1,
        "class_names": ["a", "b", "c"],
        "train_class_counts": COUNTS[run.variant["key"]],
        "test": {"macro_f1": f1, "accuracy": f1, "per_class": {"f1": [f1 + d for d in OFFSETS[run.remedy]]}},
        "model_size": {"total_params": 110, "nnz": 100, "weight_storage_mib": 0.1, "paper_mibit": 0.1},
        "seed": run.seed,
    }
    (Path(run.dir) / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def study_dir(tmp_path):
    methods = {"fp32": {"label": "FP32"}, "q": {"fragments": ["frags/quant.yaml"], "init_from": "fp32"}}
    plan = expand(load_study(write_study(tmp_path, methods=methods, remedies={"la": LA}, seeds=[0, 1])), tmp_path / "o")
    save_plan(plan)
    for run in plan.runs:
        write_metrics(run, F1[(run.variant["key"], run.config)][run.seed])
    return plan


def rows(path: Path, key: str) -> dict[str, dict]:
    with open(path) as handle:
        return {row[key]: row for row in csv.DictReader(handle)}


def test_recovery_table_numbers(study_dir):
    assert main(["report", study_dir.out_dir]) == 0
    out = Path(study_dir.out_dir) / "report"
    table = rows(out / "recovery_exponential-r100.csv", "method")
    assert list(table) == ["FP32", "q"]  # one row per (method, remedy other than ce); here one remedy
    q = table["q"]
    assert q["remedy"] == "LA"
    assert (q["macro-F1"], q["macro-F1 (cross-entropy)"], q["Δ macro-F1"]) == ("60.8±4.5", "50.5±2.1", "+10.3")
    # tail F1 = macro-F1 - 0.05 (LA) / - 0.2 (ce): Δ = 10.3 + 15 points
    assert (q["tail F1"], q["tail F1 (cross-entropy)"], q["Δ tail F1"]) == ("55.8±4.5", "30.5±2.1", "+25.3")
    assert (q["gap"], q["gap (cross-entropy)"], q["Δ gap"]) == ("20.0±0.0", "32.5±3.5", "-12.5")
    assert (q["R"], q["R (cross-entropy)"]) == ("1.60", "1.44")  # 0.2 / 0.125 and 0.325 / 0.225
    fp32 = table["FP32"]
    assert (fp32["Δ macro-F1"], fp32["Δ gap"], fp32["R"], fp32["R (cross-entropy)"]) == ("+7.5", "-10.0", "–", "–")
    assert not (out / "recovery_balanced.csv").exists()
    report = (out / "report.md").read_text()
    assert "### Recovery, exponential ρ=100" in report and "- Remedies: `ce` (cross-entropy), `la` (LA)." in report
    robust = rows(out / "robustness_exponential_first.csv", "ρ")["100"]
    assert list(robust)[1:] == ["q", "q + LA"]  # each remedy's FP32 is the reference of that remedy's runs
    assert (robust["q"], robust["q + LA"]) == ("1.44 (+10.0)", "1.60 (+7.5)")
    with open(out / "gaps_long.csv") as handle:
        gaps = {(r["variant"], r["method"]): r for r in csv.DictReader(handle)}
    assert float(gaps[("exponential-r100", "q@la")]["R_of_means"]) == pytest.approx(1.6)
    assert list(rows(out / "model_size.csv", "method")) == ["FP32", "q"]  # a remedy does not change the size


def test_damage_table_numbers(study_dir):
    assert main(["report", study_dir.out_dir]) == 0
    out = Path(study_dir.out_dir) / "report"
    q = rows(out / "damage_exponential-r100.csv", "method")["q"]
    # ce: 0.49 - 0.60, 0.52 - 0.72 = -11, -20 points; LA: 0.576 - 0.70, 0.64 - 0.77 = -12.4, -13 points; the tail
    # offsets are the same for both runs of a remedy, so the tail differences equal the macro-F1 ones
    assert (q["Δ macro-F1 (cross-entropy)"], q["Δ tail F1 (cross-entropy)"]) == ("-15.5±6.4", "-15.5±6.4")
    assert (q["Δ macro-F1 (LA)"], q["Δ tail F1 (LA)"]) == ("-12.7±0.4", "-12.7±0.4")
    balanced = rows(out / "damage_balanced.csv", "method")
    assert list(balanced) == ["q"]  # the reference has no row
    assert (balanced["q"]["Δ macro-F1 (cross-entropy)"], balanced["q"]["Δ tail F1 (LA)"]) == ("-10.0±0.0", "-8.0±0.0")
    assert "### Compression damage by remedy, exponential ρ=100" in (out / "report.md").read_text()


def test_recovery_table_of_a_partial_study(study_dir):
    runs = study_dir.by_id()
    (Path(runs["exponential-r100/q@la/seed1"].dir) / "metrics.json").unlink()
    for seed in (0, 1):
        (Path(runs[f"balanced/fp32@la/seed{seed}"].dir) / "metrics.json").unlink()
    assert main(["report", study_dir.out_dir]) == 0
    out = Path(study_dir.out_dir) / "report"
    q = rows(out / "recovery_exponential-r100.csv", "method")["q"]
    assert (q["macro-F1"], q["Δ macro-F1"]) == ("57.6", "+8.6")  # seed 0 only, paired with the ce run of seed 0
    assert (q["gap"], q["Δ gap"]) == ("20.0", "-10.0")
    assert (q["R"], q["R (cross-entropy)"]) == ("–", "1.44")  # no balanced FP32 + LA: no reference gap
    assert "Partial study: 13 of 16 runs have results." in (out / "report.md").read_text()
    damage = rows(out / "damage_exponential-r100.csv", "method")["q"]
    assert damage["Δ macro-F1 (LA)"] == "-12.4"  # seed 0 only: no std


def test_smallest_class_and_paired_difference():
    assert smallest_class_f1([0.9, 0.5, 0.3], [100, 10, 1]) == 0.3
    assert smallest_class_f1([0.9, 0.5, 0.3], [100, 10, 10]) == pytest.approx(0.4)  # tied smallest classes
    assert smallest_class_f1([0.9, 0.5], []) != smallest_class_f1([0.9, 0.5], [])  # NaN without counts
    assert paired_difference({0: 0.5, 1: 0.7, 2: 0.9}, {1: 0.6, 2: 0.6, 3: 0.1}) == pytest.approx(0.2)
    assert paired_difference({0: 0.5}, {1: 0.6}) != paired_difference({0: 0.5}, {1: 0.6})  # no common seed: NaN
