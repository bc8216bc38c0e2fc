"""study report on hand-made metrics.json files: the numbers in the tables, CSVs, figures and report.md."""

import csv
import json
from pathlib import Path

import pytest

from imbcompress.study.cli import main
from imbcompress.study.plan import expand, load_plan, save_plan
from imbcompress.study.spec import load_study

from .conftest import write_study

# macro-F1 by (variant, method, seed); gaps by hand: step-r100-m5 fp32: (0.8-0.4)/0.8 = 0.5, (0.9-0.54)/0.9 = 0.4
F1 = {
    ("balanced", "fp32"): (0.80, 0.90),
    ("balanced", "q"): (0.70, 0.80),
    ("step-r100-m2", "fp32"): (0.60, 0.72),  # gaps 0.25, 0.20
    ("step-r100-m2", "q"): (0.49, 0.52),  # gaps 0.30, 0.35
    ("step-r100-m5", "fp32"): (0.40, 0.54),  # gaps 0.50, 0.40
    ("step-r100-m5", "q"): (0.28, 0.40),  # gaps 0.60, 0.50
    ("step-r10-m2", "fp32"): (0.798, 0.8982),  # gaps 0.25 points, 0.2 points: under the guard
    ("step-r10-m2", "q"): (0.69, 0.79),
    ("exponential-r100", "fp32"): (0.60, 0.63),  # gaps 0.25, 0.30
}


CODE = {"commit": "c0ffee" * 6 + "c0ff", "dirty": False}
EARLIER = {"commit": "0ld" * 13 + "0", "dirty": False}


def write_metrics(run, f1: float) -> None:
    Path(run.dir).mkdir(parents=True, exist_ok=True)
    nnz = 1000 if run.method == "fp32" else 250
    metrics = {
        "schema_version": 1,
        "class_names": ["cat", "dog", "frog"],
        "test": {"accuracy": f1 + 0.05, "macro_f1": f1, "per_class": {"f1": [f1 + 0.1, f1, f1 - 0.1]}},
        "model_size": {"total_params": nnz + 10, "nnz": nnz, "weight_storage_mib": nnz / 2**18, "paper_mibit": 0.1},
        "seed": run.seed,
        "versions": {"torch": "2.14.1", "lightning": "2.6.6"},
        "precision": "bf16-mixed" if run.seed == 0 else "32-true",
        "code": CODE | {"dirty": run.method == "q"} if run.seed == 0 else None,  # seed 1: older files
        # seed 0's FP32 runs were resumed at another commit; seed 1's files predate fit_code
        "fit_code": ([EARLIER] if run.method == "fp32" else []) + [CODE | {"dirty": run.method == "q"}]
        if run.seed == 0
        else None,
        "host": {"cpu": "Test CPU", "cpu_count": 2, "system": "Linux", "python": "3.11.7", "gpu": None},
    }
    (Path(run.dir) / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def study_dir(tmp_path):
    imbalance = [
        {"profile": "step", "ratio": [10, 100], "minority_classes": [2, 5]},
        {"profile": "exponential", "ratio": [100]},
    ]
    methods = {"fp32": {"label": "FP32"}, "q": {"fragments": ["frags/quant.yaml"], "init_from": "fp32", "bits": 3}}
    study = load_study(write_study(tmp_path, imbalance=imbalance, methods=methods, seeds=[0, 1]))
    plan = expand(study, tmp_path / "out")
    save_plan(plan)
    for run in plan.runs:
        if (run.variant["key"], run.method) in F1:
            write_metrics(run, F1[(run.variant["key"], run.method)][run.seed])
    return Path(plan.out_dir)


def read_csv(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_report_numbers_tables_and_figures(study_dir):
    assert main(["report", str(study_dir)]) == 0
    out = study_dir / "report"
    rows = {(r["variant"], r["method"]): r for r in read_csv(out / "gaps_long.csv")}
    fp32 = rows[("step-r100-m5", "fp32")]
    assert float(fp32["gap_mean_pct"]) == pytest.approx(45.0)
    assert float(fp32["gap_std_pct"]) == pytest.approx(7.0711, abs=1e-3)
    q = rows[("step-r100-m5", "q")]
    assert float(q["gap_mean_pct"]) == pytest.approx(55.0)
    assert float(q["R_of_means"]) == pytest.approx(0.55 / 0.45, abs=1e-4)
    assert float(q["R_per_seed_mean"]) == pytest.approx((1.2 + 1.25) / 2, abs=1e-4)
    assert float(q["diff_mean_points"]) == pytest.approx(10.0)
    guarded = rows[("step-r10-m2", "q")]
    assert guarded["R_of_means"] == "" and guarded["diff_mean_points"] != ""
    assert ("exponential-r100", "q") not in rows  # no results for that cell

    gap_step = read_csv(out / "gap_step_first.csv")
    by_rho = {r["ρ"]: r for r in gap_step}
    assert by_rho["100"]["FP32"] == "22.5±3.5 / 45.0±7.1"
    robust = {r["ρ"]: r for r in read_csv(out / "robustness_step_first.csv")}
    assert robust["10"]["q"].startswith("– (")
    assert robust["100"]["q"].split(" / ")[1] == "1.22 (+10.0)"
    size = {r["method"]: r for r in read_csv(out / "model_size.csv")}
    assert size["q"]["NNZ"] == "250" and size["q"]["sparsity (%)"] == "75.0"
    accuracy = {r["method"]: r for r in read_csv(out / "accuracy_3-bit.csv")}
    assert accuracy["FP32"]["balanced"] == "90.0±7.1"  # accuracy = F1 + 5 points

    report = (out / "report.md").read_text()
    for name in ("gap_vs_rho.png", "per_class_f1_balanced.png", "per_class_f1_step-r100-m5.png", "gap_step_first.csv"):
        assert name in report
        assert (out / name).stat().st_size > 0
    assert not (out / "per_class_f1_step-r10-m5.png").exists()  # a variant without results has no heat map
    assert "Each cell: μ=2 / μ=5 minority classes." in report
    software = "torch 2.14.1, lightning 2.6.6; precision "
    assert f"{software}bf16-mixed | {software}32-true" in report  # each distinct setting once
    assert "Machine of the runs (their metrics.json): Test CPU, 2 CPU(s), Linux, Python 3.11.7; report" in report
    cells = len(F1)  # every (variant, method) with results has both seeds: seed 0 recorded its commit, seed 1 not
    fp32_cells = sum(method == "fp32" for _, method in F1)
    assert (
        "- imbcompress code of the runs (their metrics.json; a run resumed at another commit names each, in order): "
        f"not recorded ({cells} runs), commit 0ld0ld0ld0ld then commit c0ffeec0ffee ({fp32_cells} runs), "
        f"commit c0ffeec0ffee, with uncommitted changes ({cells - fp32_cells} runs)\n"
    ) in report


def test_report_to_another_directory(study_dir, tmp_path):
    assert main(["report", str(study_dir), "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "report.md").is_file()
    assert not (study_dir / "report").exists()


def test_partial_study_reports_what_finished_and_lists_the_rest(tmp_path):
    plan = expand(load_study(write_study(tmp_path)), tmp_path / "out")
    save_plan(plan)
    for run in plan.runs:
        if run.variant["key"] == "balanced" and run.method == "fp32":
            write_metrics(run, 0.8)
    assert main(["report", plan.out_dir]) == 0
    report = (Path(plan.out_dir) / "report" / "report.md").read_text()
    assert "**Partial study: 1 of 6 runs have results.**" in report
    assert "- pending (5): exponential-r100/fp32/seed0, balanced/prune/seed0, exponential-r100/prune/seed0" in report
    assert "No gap figure" in report and not (Path(plan.out_dir) / "report" / "gap_vs_rho.png").exists()
    assert (Path(plan.out_dir) / "report" / "per_class_f1_balanced.png").is_file()


def test_report_is_written_completely_or_not_at_all(study_dir, monkeypatch):
    from imbcompress.study import report as report_module

    assert main(["report", str(study_dir)]) == 0
    before = {p.name: p.read_bytes() for p in (study_dir / "report").iterdir()}

    def broken(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(report_module, "heatmap_figure", broken)
    with pytest.raises(RuntimeError, match="figure failed"):
        report_module.write_report(load_plan(study_dir))
    assert {p.name: p.read_bytes() for p in (study_dir / "report").iterdir()} == before  # the previous report
    assert sorted(p.name for p in study_dir.iterdir() if p.name.startswith(".")) == []  # no staging left
    fresh = study_dir / "fresh"
    with pytest.raises(RuntimeError):
        report_module.write_report(load_plan(study_dir), fresh)
    assert not fresh.exists()


def test_a_findings_page_beside_the_report_survives_its_regeneration(study_dir):
    assert main(["report", str(study_dir)]) == 0
    out = study_dir / "report"
    (out / "README.md").write_text("what the runs show")
    (out / "stale.csv").write_text("a table a report no longer writes")
    assert main(["report", str(study_dir)]) == 0
    assert (out / "README.md").read_text() == "what the runs show"  # before, the swap removed it with the old report
    assert (out / "report.md").is_file() and not (out / "stale.csv").exists()


def test_report_refuses_to_replace_a_directory_that_is_not_a_report(study_dir, capsys):
    (study_dir / "notes").mkdir()
    (study_dir / "notes" / "todo.txt").write_text("keep me")
    assert main(["report", str(study_dir), "--out", str(study_dir / "notes")]) == 2
    assert "holds files a report does not write" in capsys.readouterr().err
    assert (study_dir / "notes" / "todo.txt").read_text() == "keep me"


def test_metrics_with_a_newer_schema_are_refused_naming_the_file(study_dir, capsys):
    plan = load_plan(study_dir)
    path = Path(plan.runs[0].dir) / "metrics.json"
    metrics = json.loads(path.read_text())
    path.write_text(json.dumps({**metrics, "schema_version": 2}))
    assert main(["report", str(study_dir)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: schema_version 2 is newer than this imbcompress understands (1)" in err
