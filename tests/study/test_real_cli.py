"""One tiny study through the real ``imbcompress fit`` (subprocesses) on generated CIFAR files."""

import json
import sys
from pathlib import Path

import pytest
import yaml
from cli_helpers import host_precision
from fakedata import make_fake_cifar

from imbcompress.study.cli import main
from imbcompress.study.plan import load_plan
from imbcompress.study.state import plan_states

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_study_through_the_real_cli(tmp_path, capsys):
    make_fake_cifar(tmp_path / "data", train_per_class=8, test_per_class=2)
    data = {
        "data": {"class_path": "imbcompress.data.ImbalancedDataModule", "init_args": {"root": str(tmp_path / "data")}}
    }
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(data))
    qat = {"class_path": "imbcompress.callbacks.QuantizationAwareTraining", "init_args": {"weight_bits": 3}}
    study = {
        "name": "real",
        "base": [str(REPO / "configs/trainer/cpu.yaml"), str(REPO / "configs/model/resnet20.yaml"), "data.yaml"],
        "args": [
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",  # "1" would parse as 1.0: every batch
            "--trainer.enable_progress_bar=false",
            "--data.init_args.batch_size=16",
            *host_precision([]),  # fp32 where bf16 would be emulated (cli_helpers.EMULATED_BF16)
        ],
        "methods": {"fp32": {}, "student": {"callbacks": [qat], "init_from": "fp32", "teacher": "fp32"}},
        "seeds": [0],
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    out = tmp_path / "out"
    command = f"{sys.executable} -m imbcompress"
    assert main(["run", str(tmp_path / "study.yaml"), "--out", str(out), "--command", command]) == 0, (
        capsys.readouterr()
    )
    assert set(plan_states(load_plan(out)).values()) == {"done"}
    metrics = json.loads((out / "runs/balanced/student/seed0/metrics.json").read_text())
    assert [c["method"] for c in metrics["compression"]] == ["dorefa", "knowledge_distillation"]
    assert metrics["imbalance"]["profile"] == "balanced" and metrics["seed"] == 0
    assert main(["report", str(out)]) == 0
    assert "268,336" in (out / "report" / "report.md").read_text()  # ResNet-20 NNZ ([C24] Table A7)
