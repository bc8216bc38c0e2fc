"""One tiny study through the real ``imbcompress fit`` (subprocesses) on generated CIFAR files."""

import json
import sys

import pytest

from imbcompress.study.cli import main
from imbcompress.study.plan import load_plan
from imbcompress.study.state import plan_states

from .conftest import write_real_study


@pytest.mark.slow
def test_study_through_the_real_cli(tmp_path, capsys):
    qat = {"class_path": "imbcompress.callbacks.QuantizationAwareTraining", "init_args": {"weight_bits": 3}}
    methods = {"fp32": {}, "student": {"callbacks": [qat], "init_from": "fp32", "teacher": "fp32"}}
    study = write_real_study(tmp_path, "real", methods)
    out = tmp_path / "out"
    command = f"{sys.executable} -m imbcompress"
    assert main(["run", str(study), "--out", str(out), "--command", command]) == 0, capsys.readouterr()
    assert set(plan_states(load_plan(out)).values()) == {"done"}
    metrics = json.loads((out / "runs/balanced/student/seed0/metrics.json").read_text())
    assert [c["method"] for c in metrics["compression"]] == ["dorefa", "knowledge_distillation"]
    assert metrics["imbalance"]["profile"] == "balanced" and metrics["seed"] == 0
    assert main(["report", str(out)]) == 0
    assert "268,336" in (out / "report" / "report.md").read_text()  # ResNet-20 NNZ ([C24] Table A7)
