"""Bring your own model and images, through the real command: a timm model on an image folder of mixed sizes
(``image_size: 64``), pruned by the Torch-Pruning engine, and pruned + DoReFa + distilled; each checkpoint reloads
through ``test --ckpt_path`` and ``load_from_checkpoint`` with identical metrics. One fit per run, shared by the
module's tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_helpers import CONFIGS, QUIET, fit
from fakedata import make_fake_image_folder
from lightning.pytorch import Trainer
from PIL import Image

from imbcompress.checkpoint import load_checkpoint_file
from imbcompress.cli import run_cli
from imbcompress.compress.transforms import TRANSFORMS_KEY
from imbcompress.data import ImbalancedDataModule
from imbcompress.task import ImbalanceClassifier

ARCH = "timm:mobilenetv3_small_050"
IMAGE_SIZE = 64


def _mixed_folder(root: Path) -> Path:
    make_fake_image_folder(root, num_classes=3, train_per_class=[8, 5, 3], test_per_class=3, size=32)
    rng = np.random.default_rng(0)
    for split, label, (width, height) in (("train", 0, (90, 50)), ("train", 2, (40, 72)), ("test", 1, (100, 80))):
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / split / f"class_{label:02d}" / "odd_size.png")
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("byom")
    root = _mixed_folder(work / "images")
    base = [
        f"--config={CONFIGS / 'trainer/cpu.yaml'}",
        f"--config={CONFIGS / 'model/timm_mobilenetv3_small_100.yaml'}",
        f"--model.init_args.arch={ARCH}",
        "--data=imbcompress.data.ImbalancedDataModule",
        "--data.init_args.dataset=image_folder",
        f"--data.init_args.root={root}",
        f"--data.init_args.image_size={IMAGE_SIZE}",
        "--data.init_args.batch_size=8",
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=0",
    ]
    fp32 = fit(base, work / "fp32")
    teacher = work / "fp32/checkpoints/last.ckpt"
    prune = [f"--config={CONFIGS / 'compress/prune_moderate.yaml'}", f"--model.init_args.init_from={teacher}"]
    pruned = fit([*base, *prune], work / "pruned")
    combo = [
        *prune,
        f"--config={CONFIGS / 'compress/dorefa_a8w4.yaml'}",
        f"--config={CONFIGS / 'compress/distill.yaml'}",
        f"--trainer.callbacks.init_args.teacher_checkpoint={teacher}",
    ]
    combined = fit([*base, *combo], work / "combo")
    return {"root": root, "work": work, "fp32": fp32, "pruned": pruned, "combo": combined}


def test_mixed_size_image_folder_trains_at_image_size(runs: dict[str, Any]) -> None:
    metrics = runs["fp32"]
    assert metrics["data"]["image_size"] == IMAGE_SIZE and metrics["data"]["resize"] == "center_crop"
    assert metrics["train_class_counts"] == [9, 5, 4] and metrics["test"]["num_samples"] == 10
    assert metrics["model"]["name"] == ARCH


def test_pruned_timm_model_records_the_torch_pruning_engine(runs: dict[str, Any]) -> None:
    (record,) = runs["pruned"]["compression"]
    assert record["method"] == "filter_pruning" and record["engine_used"] == "torch_pruning"
    assert record["preset"] == "moderate" and record["engine"] == "auto"
    assert record["sparsity"] == pytest.approx(0.712, abs=0.01)
    assert runs["pruned"]["model_size"]["nnz"] == record["nnz_after"] < record["nnz_before"]
    saved = load_checkpoint_file(runs["work"] / "pruned/checkpoints/last.ckpt", setting="test")[TRANSFORMS_KEY]
    assert saved[0]["input_size"] == [3, IMAGE_SIZE, IMAGE_SIZE] and saved[0]["kept_indices"]
    methods = [entry["method"] for entry in runs["combo"]["compression"]]
    assert methods == ["filter_pruning", "dorefa", "knowledge_distillation"]


@pytest.mark.parametrize("run", ["pruned", "combo"])
def test_checkpoint_reloads_with_identical_metrics(runs: dict[str, Any], run: str) -> None:
    work, expected = runs["work"], runs[run]["test"]
    ckpt = work / run / "checkpoints/last.ckpt"
    again = work / f"{run}-again"
    run_cli(["test", f"--config={work / run / 'config.yaml'}", f"--ckpt_path={ckpt}", f"--run_dir={again}", *QUIET])
    assert json.loads((again / "metrics.json").read_text())["test"] == expected

    model = ImbalanceClassifier.load_from_checkpoint(ckpt, weights_only=True)
    datamodule = ImbalancedDataModule("image_folder", str(runs["root"]), image_size=IMAGE_SIZE, batch_size=8)
    trainer = Trainer(accelerator="cpu", precision=runs[run]["precision"], logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    trainer.test(model, datamodule=datamodule, verbose=False)
    assert model.last_test_results is not None
    assert model.last_test_results["confusion_matrix"] == expected["confusion_matrix"]
    assert model.last_test_results["macro_f1"] == expected["macro_f1"]
    assert model.last_test_results["loss"] == pytest.approx(expected["loss"], rel=1e-6)
