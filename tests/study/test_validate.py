"""Every run's fit configuration is parsed, the way fit parses it, before the first run starts."""

import sys
from pathlib import Path

import pytest

from imbcompress.study.cli import main
from imbcompress.study.plan import expand
from imbcompress.study.spec import load_study
from imbcompress.study.validate import uses_imbcompress, validate_runs

from .conftest import write_study

REPO = Path(__file__).resolve().parents[2]
BASE = [str(REPO / "configs" / name) for name in ("trainer/cpu.yaml", "model/resnet20.yaml", "data/cifar10.yaml")]
QAT = "imbcompress.callbacks.QuantizationAwareTraining"


def methods(student_class: str) -> dict:
    callbacks = [{"class_path": student_class, "init_args": {"weight_bits": 3, "activation_bits": 3}}]
    return {"fp32": {}, "student": {"callbacks": callbacks, "init_from": "fp32", "teacher": "fp32"}}


def test_typo_in_an_inline_callback_fails_before_any_run(tmp_path, fake_env, capsys):
    path = write_study(tmp_path, base=BASE, methods=methods("imbcompress.callbacks.QuantisationAwareTraining"))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 2  # the default command: python -m imbcompress
    err = capsys.readouterr().err
    assert "is invalid (nothing was started)" in err and "2 run(s) (e.g. balanced/student/seed0)" in err
    assert "QuantisationAwareTraining" in err
    assert not out.exists()


def test_valid_runs_parse_including_the_generated_distillation_fragment(tmp_path):
    plan = expand(load_study(write_study(tmp_path, base=BASE, methods=methods(QAT), seeds=[0, 1])), tmp_path / "o")
    assert validate_runs(plan) == 4  # (fp32, student) x (balanced, exponential); the seeds parse alike
    assert not Path(plan.out_dir).exists()


def test_only_imbcompress_commands_are_parsed():
    assert uses_imbcompress([sys.executable, "-m", "imbcompress"])
    assert uses_imbcompress(["srun", "/venv/bin/imbcompress"])
    assert not uses_imbcompress([sys.executable, "tests/study/fake_fit.py"])


@pytest.mark.parametrize("name", ["c24_resnet20", "climbq_cifar10lt", "cpu_mini", "remedies_cpu"])
def test_committed_studies_parse_as_fits(name, tmp_path):
    plan = expand(load_study(REPO / "configs" / "studies" / f"{name}.yaml"), tmp_path)
    plan.runs = [run for run in plan.runs if run.variant["profile"] == "balanced"]  # one parse per configuration
    fits = {(run.method, run.remedy) for run in plan.runs if run.kind == "fit"}  # post-hoc remedies: tests
    assert (
        validate_runs(plan)
        == len(fits)
        == len(plan.methods) * sum(not r.get("posthoc") for r in plan.remedies.values())
    )


def test_remedies_are_checked_in_each_parsed_run_against_its_method_and_epochs(tmp_path):
    climbq_plus = {"class_path": "imbcompress.callbacks.ClimbQ", "init_args": {"bits": 4, "homovar": True}}
    late_drw = {"class_path": "imbcompress.callbacks.LDAMDRWLoss", "init_args": {"drw_epoch": 5}}
    methods = {"fp32": {}, "cqplus": {"callbacks": [climbq_plus], "init_from": "fp32"}}
    la = {"class_path": "imbcompress.callbacks.LogitAdjustedLoss", "init_args": {"tau": 1.0}}
    remedies = {"la": {"callbacks": [la]}, "late": {"callbacks": [late_drw]}}
    plan = expand(load_study(write_study(tmp_path, base=BASE, methods=methods, remedies=remedies)), tmp_path / "o")
    plan.runs = [run for run in plan.runs if run.variant["profile"] == "balanced"]
    with pytest.raises(ValueError) as error:
        validate_runs(plan)
    text = str(error.value)
    assert "1 run(s) (e.g. balanced/fp32@late/seed0): LDAMDRWLoss.drw_epoch=5 is past the end of training " in text
    assert "(trainer.max_epochs=1); allowed: 0..0" in text
    assert "1 run(s) (e.g. balanced/cqplus@la/seed0): ClimbQ with homovar=True (ClimbQ+'s HomoVar loss) and " in text
    assert "LogitAdjustedLoss (loss remedy 'logit_adjusted') both replace the task's base loss" in text
    assert "balanced/cqplus@late/seed0" in text  # ClimbQ+ and LDAM-DRW: two base losses as well
    assert "balanced/fp32@la/seed0" not in text and "balanced/cqplus/seed0" not in text
