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


@pytest.mark.parametrize("name", ["c24_resnet20", "climbq_cifar10lt", "cpu_mini"])
def test_committed_studies_parse_as_fits(name, tmp_path):
    plan = expand(load_study(REPO / "configs" / "studies" / f"{name}.yaml"), tmp_path)
    plan.runs = [run for run in plan.runs if run.variant["profile"] == "balanced"]  # every method, one parse each
    assert validate_runs(plan) == len(plan.methods)
