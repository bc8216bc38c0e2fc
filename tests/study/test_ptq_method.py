"""PTQ as a study method: the study file, the ``imbcompress ptq`` command of a run, the fake and the real runs."""

import csv
import json
import sys
from pathlib import Path

import pytest

from imbcompress.study.cli import main
from imbcompress.study.estimate import Throughput, estimate
from imbcompress.study.plan import expand, load_plan
from imbcompress.study.spec import PTQ_CALIBRATIONS, PTQ_DEFAULT_CALIBRATION_SIZE, load_study
from imbcompress.study.state import plan_states
from imbcompress.study.validate import validate_runs

from .conftest import REPO, write_real_study, write_study

PTQ = {"ptq": {"calibration": "balanced", "calibration_size": 20}, "init_from": "fp32", "label": "PTQ int8", "bits": 8}
LA = {"callbacks": [{"class_path": "imbcompress.callbacks.LogitAdjustedLoss", "init_args": {"tau": 1.0}}]}


def methods(**ptq) -> dict:
    return {"fp32": {}, "prune": {"fragments": ["frags/prune.yaml"], "init_from": "fp32"}, **ptq}


def test_ptq_runs_quantize_the_parent_checkpoint_with_explicit_settings(tmp_path):
    both = methods(ptq_int8=PTQ, ptq_default={"ptq": {}, "init_from": "prune"})
    study = load_study(write_study(tmp_path, methods=both, remedies={"la": LA}, seeds=[0, 1]))
    runs = expand(study, tmp_path / "out").by_id()
    run = runs["exponential-r100/ptq_int8@la/seed1"]
    parent = Path(runs["exponential-r100/fp32@la/seed1"].dir)  # under a remedy: FP32 trained with the remedy
    assert run.kind == "ptq" and run.deps == ["exponential-r100/fp32@la/seed1"]
    assert run.command(["imbc"], resume=True) == [
        "imbc", "ptq", "--config", str(parent / "config.yaml"), "--ckpt_path", str(parent / "checkpoints/last.ckpt"),
        "--run_dir", run.dir, "--calibration", "balanced", "--calibration_size", "20", "--calibration_seed", "1",
    ]  # fmt: skip
    default = runs["balanced/ptq_default/seed0"].command(["imbc"])
    assert default[default.index("--ckpt_path") + 1].endswith("balanced/prune/seed0/checkpoints/last.ckpt")
    assert default[-6:] == ["--calibration", "imbalanced", "--calibration_size", "500", "--calibration_seed", "0"]
    assert run.configs == [] and run.callbacks == []  # nothing of a fit: no study args, no remedy callbacks


def test_ptq_defaults_match_the_ptq_command():
    from imbcompress.deploy.command import DEFAULT_CALIBRATION_SIZE
    from imbcompress.deploy.ptq import CALIBRATIONS

    assert (PTQ_CALIBRATIONS, PTQ_DEFAULT_CALIBRATION_SIZE) == (CALIBRATIONS, DEFAULT_CALIBRATION_SIZE)


BAD_PTQ = [
    ({"ptq": {}}, "methods.q.init_from: required for a PTQ method"),
    ({"ptq": {}, "init_from": "fp32", "fragments": ["frags/quant.yaml"]}, "methods.q.fragments: not allowed for a PTQ"),
    ({"ptq": {}, "init_from": "fp32", "teacher": "fp32"}, "methods.q.teacher: not allowed for a PTQ method"),
    ({"ptq": {"calibration": "uniform"}, "init_from": "fp32"}, "methods.q.ptq.calibration: invalid value 'uniform'"),
    ({"ptq": {"calibration_size": 0}, "init_from": "fp32"}, "methods.q.ptq.calibration_size: invalid value 0"),
    ({"ptq": {"calibration_seed": -1}, "init_from": "fp32"}, "methods.q.ptq.calibration_seed: invalid value -1"),
    ({"ptq": {"bits": 8}, "init_from": "fp32"}, "methods.q.ptq: unknown key 'bits' (allowed: calibration, "),
]


@pytest.mark.parametrize(("method", "message"), BAD_PTQ)
def test_bad_ptq_methods_are_rejected(tmp_path, method, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_study(write_study(tmp_path, methods={"fp32": {}, "q": method}))


def test_a_ptq_method_writes_no_checkpoint_to_start_from(tmp_path):
    bad = methods(ptq_int8=PTQ, after={"fragments": ["frags/quant.yaml"], "init_from": "ptq_int8"})
    with pytest.raises(ValueError, match=r"methods\.after\.init_from: 'ptq_int8' is a PTQ method, which writes no"):
        load_study(write_study(tmp_path, methods=bad))


def test_ptq_runs_through_the_runner_and_into_the_gap_tables(tmp_path, fake_env, fake_prefix, capsys):
    out = tmp_path / "out"
    path = write_study(tmp_path, methods=methods(ptq_int8=PTQ))
    assert main(["run", str(path), "--out", str(out), "--command", " ".join(fake_prefix)]) == 0
    calls = {Path(c["run_dir"]).relative_to(out / "runs").as_posix(): c["argv"] for c in fake_env()}
    assert calls["balanced/ptq_int8/seed0"][0] == "ptq" and calls["balanced/fp32/seed0"][0] == "fit"
    assert set(plan_states(load_plan(out)).values()) == {"done"}
    assert main(["report", str(out)]) == 0
    with open(out / "report" / "gap_exponential_first.csv") as handle:
        gap = next(csv.DictReader(handle))
    assert gap["PTQ int8"] == f"{100 * (0.879 - 0.73) / 0.879:.1f}"  # the fake ptq: the fake fit's F1 - 0.02
    with open(out / "report" / "robustness_exponential_first.csv") as handle:
        assert next(csv.DictReader(handle))["PTQ int8"].endswith(")")  # R (Δ_c − Δ_u) beside pruning
    changed = dict(PTQ, ptq={"calibration": "imbalanced", "calibration_size": 20})
    changed_path = write_study(tmp_path, methods=methods(ptq_int8=changed))
    assert main(["run", str(changed_path), "--out", str(out), "--command", " ".join(fake_prefix)]) == 2
    assert "-'balanced' +'imbalanced'" in capsys.readouterr().err  # a changed PTQ setting is a changed run


def test_ptq_runs_are_not_parsed_as_fits_and_train_nothing(tmp_path):
    base = [str(REPO / "configs" / name) for name in ("trainer/cpu.yaml", "model/resnet20.yaml", "data/cifar10.yaml")]
    plan = expand(load_study(write_study(tmp_path, base=base, methods={"fp32": {}, "ptq_int8": PTQ})), tmp_path / "o")
    plan.runs = [run for run in plan.runs if run.variant["profile"] == "balanced"]
    assert validate_runs(plan) == 1
    result = estimate(plan, Throughput(images_per_s_per_run=1000.0))
    assert result["methods"]["ptq_int8"]["images"] == 0 and result["methods"]["fp32"]["images"] == 50000


@pytest.mark.slow
def test_ptq_study_end_to_end_on_generated_data(tmp_path, capsys):
    methods = {"fp32": {}, "ptq_int8": {"ptq": {"calibration_size": 16}, "init_from": "fp32"}}
    study = write_real_study(tmp_path, "ptq", methods, imbalance=[{"profile": "exponential", "ratio": 2}])
    out = tmp_path / "out"
    command = f"{sys.executable} -m imbcompress"
    code = main(["run", str(study), "--out", str(out), "--command", command, "--jobs", "2"])
    assert code == 0, capsys.readouterr()
    metrics = json.loads((out / "runs/exponential-r2/ptq_int8/seed0/metrics.json").read_text())
    record = metrics["compression"][0]
    assert (record["method"], record["calibration"], record["calibration_size"]) == ("ptq_int8", "imbalanced", 16)
    assert metrics["seed"] == 0 and (out / "runs/exponential-r2/ptq_int8/seed0/model_int8.onnx").is_file()
    assert main(["report", str(out)]) == 0
    with open(out / "report" / "gaps_long.csv") as handle:
        row = next(r for r in csv.DictReader(handle) if r["method"] == "ptq_int8")
    assert row["gap_mean_pct"] != "" and row["diff_mean_points"] != ""  # a gap, and Δ_c − Δ_u against fp32
    report = (out / "report" / "report.md").read_text()
    assert "| ρ | ptq_int8 |" in report  # the robustness table's column
