"""One tiny study through the real ``imbcompress fit`` (subprocesses) on generated CIFAR files."""

import json
import sys

import pytest

from imbcompress.study.cli import main
from imbcompress.study.plan import load_plan
from imbcompress.study.state import plan_states

from .conftest import REPO, write_real_study


@pytest.mark.slow
def test_study_through_the_real_cli(tmp_path, capsys):
    qat = {"class_path": "imbcompress.callbacks.QuantizationAwareTraining", "init_args": {"weight_bits": 3}}
    methods = {"fp32": {}, "student": {"callbacks": [qat], "init_from": "fp32", "teacher": "fp32"}}
    remedies = {"posthoc_la": {"fragments": [str(REPO / "configs/remedies/posthoc_logit_adjustment.yaml")]}}
    study = write_real_study(tmp_path, "real", methods, remedies=remedies)
    out = tmp_path / "out"
    command = f"{sys.executable} -m imbcompress"
    assert main(["run", str(study), "--out", str(out), "--command", command]) == 0, capsys.readouterr()
    assert set(plan_states(load_plan(out)).values()) == {"done"}
    metrics = json.loads((out / "runs/balanced/student/seed0/metrics.json").read_text())
    assert [c["method"] for c in metrics["compression"]] == ["dorefa", "knowledge_distillation"]
    assert metrics["imbalance"]["profile"] == "balanced" and metrics["seed"] == 0
    # the post-hoc remedy tested the distilled 3-bit student's checkpoint, as trained, and trained nothing
    tested = json.loads((out / "runs/balanced/student@posthoc_la/seed0/metrics.json").read_text())
    assert tested["remedies"] == [{"method": "posthoc_logit_adjustment", "tau": 1.0}] and metrics["remedies"] == []
    assert tested["ckpt_path"] == str(out / "runs/balanced/student/seed0/checkpoints/last.ckpt")
    assert tested["compression"] == metrics["compression"] and tested["model_size"] == metrics["model_size"]
    assert tested["fit_code"] == metrics["fit_code"] and tested["seed"] == 0
    assert tested["test"]["macro_f1"] == pytest.approx(metrics["test"]["macro_f1"])  # balanced: a constant shift
    assert not (out / "runs/balanced/student@posthoc_la/seed0/checkpoints").exists()
    assert main(["report", str(out)]) == 0
    assert "268,336" in (out / "report" / "report.md").read_text()  # ResNet-20 NNZ ([C24] Table A7)
