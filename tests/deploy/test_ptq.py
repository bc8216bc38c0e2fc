"""PTQ as a method (`imbcompress ptq`) and `imbcompress export` on a run trained through the real CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from cli_helpers import CONFIGS, fake_data_args, fit, make_learnable_cifar

from imbcompress.__main__ import main
from imbcompress.deploy.ptq import agreement, calibration_indices
from imbcompress.host import code_revision


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """An FP32 ResNet-20 trained a few epochs on a learnable, imbalanced (rho = 5) generated CIFAR-10."""
    tmp = tmp_path_factory.mktemp("fp32")
    root = make_learnable_cifar(tmp / "data", train_per_class=60, test_per_class=60)
    args = [
        f"--config={CONFIGS / 'trainer/cpu.yaml'}",
        f"--config={CONFIGS / 'trainer/fp32.yaml'}",
        f"--config={CONFIGS / 'model/resnet20.yaml'}",
        "--data=imbcompress.data.ImbalancedDataModule",
        *fake_data_args(root),
        "--data.init_args.profile=exponential",
        "--data.init_args.imbalance_ratio=5",
        "--data.init_args.batch_size=50",
        "--trainer.max_epochs=4",
        "--trainer.limit_val_batches=0",
        "--model.init_args.lr=0.05",
    ]
    metrics = fit(args, tmp / "run")
    assert metrics["test"]["accuracy"] > 0.4, "4 x chance: a model whose int8 accuracy can be compared"
    return tmp / "run", metrics


def _ptq(run: Path, out: Path, *extra: str) -> dict:
    config, ckpt = run / "config.yaml", run / "checkpoints/last.ckpt"
    assert main(["ptq", f"--config={config}", f"--ckpt_path={ckpt}", f"--run_dir={out}", *extra]) == 0
    return json.loads((out / "metrics.json").read_text())


def test_ptq_run_writes_metrics_within_one_point_of_fp32(fp32_run: tuple[Path, dict], tmp_path: Path) -> None:
    run, fp32 = fp32_run
    metrics = _ptq(run, tmp_path / "ptq", "--calibration_size=100")
    record = metrics["compression"][0]
    assert record["method"] == "ptq_int8" and record["calibration"] == "imbalanced"
    assert record["calibration_size"] == 100 and sum(record["calibration_class_counts"]) == 100
    assert record["calibration_class_counts"][0] > record["calibration_class_counts"][-1]  # the training mix
    assert abs(metrics["test"]["accuracy"] - fp32["test"]["accuracy"]) <= 0.01 + 1e-9  # 1 point = 6 of 600 images
    assert metrics["test"]["num_samples"] == fp32["test"]["num_samples"] == 600
    size = metrics["model_size"]
    assert size["file_bytes"] == (tmp_path / "ptq/model_int8.onnx").stat().st_size
    assert size["file_bytes"] < 0.5 * fp32["model_size"]["weight_storage_mib"] * 2**20  # int8, not fp32, weights
    assert (
        size["nnz"] == fp32["model_size"]["nnz"]
        and size["weight_storage_bits"] < fp32["model_size"]["weight_storage_bits"]
    )
    assert metrics["train_class_counts"] == fp32["train_class_counts"] and metrics["seed"] == fp32["seed"]
    assert set(metrics["versions"]) >= {"onnxruntime", "torch"} and metrics["host"]["cpu"]
    assert metrics["code"] == code_revision()
    assert round(600 * (1 - record["agreement_with_source"])) == record["disagreements"]


def test_balanced_calibration_and_an_existing_metrics_file(
    fp32_run: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = fp32_run
    metrics = _ptq(run, tmp_path / "bal", "--calibration=balanced", "--calibration_size=50", "--calibration_seed=3")
    record = metrics["compression"][0]
    assert record["calibration_class_counts"] == [5] * 10 and record["calibration_seed"] == 3
    before = (tmp_path / "bal/metrics.json").read_text()
    capsys.readouterr()
    again = ["ptq", f"--config={run / 'config.yaml'}", f"--ckpt_path={run / 'checkpoints/last.ckpt'}"]
    assert main([*again, f"--run_dir={tmp_path / 'bal'}"]) == 2  # a bad setting: one line, exit 2
    assert "already has a metrics.json" in capsys.readouterr().err
    assert (tmp_path / "bal/metrics.json").read_text() == before


def test_export_int8_and_fp32_files(fp32_run: tuple[Path, dict], tmp_path: Path) -> None:
    run, _ = fp32_run
    common = [f"--config={run / 'config.yaml'}", f"--ckpt_path={run / 'checkpoints/last.ckpt'}"]
    assert main(["export", *common, f"--out={tmp_path / 'm.onnx'}"]) == 0
    assert main(["export", *common, f"--out={tmp_path / 'q.onnx'}", "--int8", "--calibration_size=50"]) == 0
    assert (tmp_path / "q.onnx").stat().st_size < 0.4 * (tmp_path / "m.onnx").stat().st_size


def _refused(capsys: pytest.CaptureFixture[str], words: list[str], message: str) -> None:
    """The command refuses ``words`` as a bad setting: exit status 2 and one line naming the cause."""
    capsys.readouterr()
    assert main(words) == 2
    assert re.search(message, capsys.readouterr().err)


def test_bad_inputs_fail_before_any_work(
    fp32_run: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = fp32_run
    config, ckpt = f"--config={run / 'config.yaml'}", f"--ckpt_path={run / 'checkpoints/last.ckpt'}"
    not_a_model = tmp_path / "not_a_model.ckpt"
    torch.save({"weights": torch.zeros(3)}, not_a_model)
    _refused(
        capsys,
        ["export", config, f"--ckpt_path={not_a_model}", f"--out={tmp_path / 'x.onnx'}"],
        "not an imbcompress model checkpoint",
    )
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    _refused(capsys, ["export", config, ckpt, f"--out={blocker / 'x.onnx'}"], "cannot be written")
    _refused(
        capsys,
        ["ptq", config, ckpt, f"--run_dir={tmp_path / 'r'}", "--calibration=balanced", "--calibration_size=5"],
        "calibration_size=5 with calibration='balanced'",
    )
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "r/metrics.json").exists()


def test_calibration_draws() -> None:
    labels = torch.repeat_interleave(torch.arange(3), torch.tensor([80, 15, 5]))
    imbalanced = calibration_indices(labels, 50, "imbalanced", seed=0)
    assert len(imbalanced.unique()) == 50 and torch.equal(imbalanced, calibration_indices(labels, 50, "imbalanced", 0))
    assert torch.bincount(labels[calibration_indices(labels, 15, "balanced", 1)]).tolist() == [5, 5, 5]
    with pytest.raises(ValueError, match="at most 15"):
        calibration_indices(labels, 18, "balanced", 0)
    with pytest.raises(ValueError, match="calibration_size must be an integer in 1..100"):
        calibration_indices(labels, 101, "imbalanced", 0)


def test_agreement_reports_how_close_to_a_tie_the_disagreements_were() -> None:
    source = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.9, 0.0], [0.0, 3.0, 2.5], [0.0, 0.0, 5.0]])
    int8 = torch.tensor([[2.0, 0.0, 0.0], [0.9, 1.0, 0.0], [0.0, 2.4, 2.5], [0.0, 0.0, 5.0]])  # images 1 and 2 flip
    record = agreement(int8, source)
    assert record["agreement_with_source"] == 0.5 and record["disagreements"] == 2
    assert record["source_margin_at_disagreement"] == pytest.approx(0.5)  # image 2: 3.0 - 2.5; image 1: 0.1
    assert record["share_within_that_margin"] == 0.5  # margins 2.0, 0.1, 0.5, 5.0: two are <= 0.5
    same = agreement(source, source)
    assert same["disagreements"] == 0 and same["source_margin_at_disagreement"] is None
    assert same["share_within_that_margin"] is None
