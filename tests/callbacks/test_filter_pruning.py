"""FilterPruning with the task and a Trainer: pruning in setup, checkpoints, replay, composition, bad input.

Uses plain tensor DataLoaders (the data module is not needed to exercise the callback).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, ModelPruning
from tiny import quiet_trainer, random_loader
from torch import Tensor, nn
from torch.utils.data import DataLoader

from imbcompress.callbacks.filter_pruning import FilterPruning
from imbcompress.compress.pruning import top_filters
from imbcompress.compress.size import model_size
from imbcompress.task import ImbalanceClassifier, LossContext

NUM_CLASSES = 3


def _loader(n: int = 16) -> DataLoader:
    return random_loader(NUM_CLASSES, n=n)


def _trainer(tmp_path: Path, callbacks: list, **kwargs) -> Trainer:
    return quiet_trainer(tmp_path, callbacks=callbacks, **kwargs)


def _task(**kwargs) -> ImbalanceClassifier:
    return ImbalanceClassifier(arch="resnet20", num_classes=NUM_CLASSES, channels_last=False, lr=0.01, **kwargs)


def _fit_checkpoint(tmp_path: Path, callbacks: list, task: ImbalanceClassifier | None = None) -> tuple:
    task = task or _task()
    trainer = _trainer(tmp_path, callbacks, enable_checkpointing=True)
    trainer.fit(task, train_dataloaders=_loader())
    return task, trainer, trainer.checkpoint_callback.best_model_path


def test_fit_prunes_once_and_checkpoint_reloads_with_equal_metrics(tmp_path):
    callback = FilterPruning(preset="severe")
    task, trainer, ckpt = _fit_checkpoint(tmp_path, [callback])
    assert [block.conv1.out_channels for _, block in task.model.prunable_blocks()] == [1] * 9
    assert len(task.transforms) == 1
    record = callback.compression_record()
    assert record["method"] == "filter_pruning" and record["preset"] == "severe"
    assert record["kept_filters"] == {f"layer{s}.{i}": 1 for s in (1, 2, 3) for i in range(3)}
    assert record["nnz_before"] == 268_336 - 64 * 7 and record["nnz_after"] == model_size(task.model)["nnz"]
    expected = trainer.test(task, dataloaders=_loader())[0]
    # The run's config again (callback present): it prunes the fresh model the same way, then the weights load.
    again = _trainer(tmp_path, [FilterPruning(preset="severe")]).test(_task(), dataloaders=_loader(), ckpt_path=ckpt)
    assert "test/macro_f1" in expected and again[0] == pytest.approx(expected)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["compression"][0]["kept_filters"] == record["kept_filters"]
    assert written["model_size"]["nnz"] == record["nnz_after"]
    assert written["model_size"]["sparsity"] == pytest.approx(record["sparsity"])  # against the unpruned NNZ
    loaded = ImbalanceClassifier.load_from_checkpoint(ckpt)
    assert _trainer(tmp_path, []).test(loaded, dataloaders=_loader())[0] == pytest.approx(expected)


def test_init_from_prunes_the_trained_weights_and_skips_a_replayed_plan(tmp_path):
    dense, _, dense_ckpt = _fit_checkpoint(tmp_path / "dense", [])
    expected = top_filters(dense.model.layer2[0].conv1, 9)
    task = _task(init_from=dense_ckpt)
    _trainer(tmp_path, [FilterPruning(target_sparsity=0.7)]).fit(task, train_dataloaders=_loader())
    assert task.model.layer2[0].conv1.out_channels == 9  # the architecture-only plan for 70 % on ResNet-20 (A)
    initial = ImbalanceClassifier(arch="resnet20", num_classes=NUM_CLASSES, init_from=dense_ckpt)
    callback = FilterPruning(target_sparsity=0.7)
    callback.setup(_trainer(tmp_path, []), initial, "fit")
    assert torch.equal(initial.model.layer2[0].conv1.weight, dense.model.layer2[0].conv1.weight[expected])
    # A checkpoint that is already pruned with the same settings is not pruned again.
    _, _, pruned_ckpt = _fit_checkpoint(tmp_path / "pruned", [FilterPruning(target_sparsity=0.7)])
    replayed = _task(init_from=pruned_ckpt)
    _trainer(tmp_path, [FilterPruning(target_sparsity=0.7)]).fit(replayed, train_dataloaders=_loader())
    assert len(replayed.transforms) == 1 and replayed.model.layer2[0].conv1.out_channels == 9


def test_resume_an_interrupted_pruned_fit(tmp_path):
    _, _, ckpt = _fit_checkpoint(tmp_path, [FilterPruning(preset="moderate")])
    task = _task()
    trainer = _trainer(tmp_path, [FilterPruning(preset="moderate")], max_epochs=2)
    trainer.fit(task, train_dataloaders=_loader(), ckpt_path=ckpt)
    assert trainer.current_epoch == 2 and len(task.transforms) == 1


class HalfLogitNorm:
    base_weight = 0.5

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, ctx: LossContext) -> Tensor:
        self.calls += 1
        return ctx.logits.float().pow(2).mean()


def test_composes_with_a_loss_term_and_lightning_model_pruning(tmp_path):
    task = _task()
    term = HalfLogitNorm()
    task.add_loss_term("logit_norm", term)
    callbacks = [FilterPruning(preset="mild"), ModelPruning("l1_unstructured", amount=0.5, verbose=0)]
    task, trainer, ckpt = _fit_checkpoint(tmp_path, callbacks, task)
    assert term.calls == 2
    size = model_size(task.model)
    assert size["dense_weights"] == 227_296 - 64 * 7  # filter pruning's structural count (3 classes, not 10)
    assert size["nnz"] <= 0.5 * size["dense_weights"] + 10  # ModelPruning's zeros count as pruned
    expected = trainer.test(task, dataloaders=_loader())[0]
    reloaded = _trainer(tmp_path, [FilterPruning(preset="mild")]).test(_task(), dataloaders=_loader(), ckpt_path=ckpt)
    assert reloaded[0] == pytest.approx(expected)


class NoPrunableBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Linear(3, NUM_CLASSES)

    def prunable_blocks(self):
        return iter(())

    def forward_features(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))

    def forward_head(self, features: Tensor) -> Tensor:
        return self.classifier(features)


@pytest.mark.parametrize(
    ("callback", "model", "match"),
    [
        (FilterPruning(preset="severe"), NoPrunableBlocks(), "no prunable layers"),
        (FilterPruning(layer_fractions={"layer4.0": 0.5}), None, "unknown layers"),
        (FilterPruning(stage_fractions=[0.5, 0.5]), None, "3 stages"),
    ],
)
def test_bad_plans_fail_before_training(tmp_path, callback, model, match):
    task = _task()
    if model is not None:
        task.model = model
    with pytest.raises(ValueError, match=match):
        _trainer(tmp_path, [callback]).fit(task, train_dataloaders=_loader())
    assert task.transforms == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one"),
        ({"preset": "severe", "stage_fractions": [0.1, 0.1, 0.1]}, "exactly one"),
        ({"preset": "extreme"}, "preset='extreme'"),
        ({"target_sparsity": 1.0}, r"\[0, 1\)"),
        ({"layer_fractions": {"layer1.0": -0.2}}, "layer1.0"),
        ({"stage_fractions": [1.5, 0.0, 0.0]}, "stage 0"),
    ],
)
def test_bad_arguments_fail_in_init(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FilterPruning(**kwargs)


@pytest.mark.parametrize("level", ["mild", "moderate", "severe", "sparsity"])
def test_config_fragments_parse_and_instantiate(level):
    config = Path(__file__).parents[2] / "configs" / "compress" / f"prune_{level}.yaml"
    (item,) = yaml.safe_load(config.read_text())["trainer"]["callbacks+"]
    parser = ArgumentParser()
    parser.add_argument("--callback", type=Callback)
    callback = parser.instantiate(parser.parse_object({"callback": item})).callback
    assert isinstance(callback, FilterPruning)
    assert callback.preset == (None if level == "sparsity" else level)


def test_paper_flow_through_the_cli(tmp_path):
    """FP32 fit, then `fit` with the severe fragment and `init_from`, then `test --ckpt_path` with the saved config."""
    from cli_helpers import CONFIGS, QUIET, fake_data_args, fit
    from fakedata import make_fake_cifar

    from imbcompress.cli import run_cli

    root = make_fake_cifar(tmp_path / "cifar", train_per_class=8, test_per_class=3)
    base = [f"--config={CONFIGS / 'trainer/cpu.yaml'}", f"--config={CONFIGS / 'model/resnet20.yaml'}"]
    base += ["--data=imbcompress.data.ImbalancedDataModule", *fake_data_args(root), "--trainer.max_steps=2"]
    fit(base, tmp_path / "fp32")
    prune = [f"--config={CONFIGS / 'compress/prune_severe.yaml'}"]
    prune += [f"--model.init_args.init_from={tmp_path / 'fp32/checkpoints/last.ckpt'}"]
    metrics = fit([*base, *prune], tmp_path / "pruned")
    assert metrics["model_size"]["nnz"] == 6_688
    (record,) = metrics["compression"]
    assert record["method"] == "filter_pruning" and record["nnz_after"] == 6_688 and record["nnz_before"] == 268_336
    ckpt = tmp_path / "pruned/checkpoints/last.ckpt"
    config = tmp_path / "pruned/config.yaml"
    run_cli(["test", f"--config={config}", f"--ckpt_path={ckpt}", f"--run_dir={tmp_path / 'again'}", *QUIET])
    assert json.loads((tmp_path / "again/metrics.json").read_text())["test"] == metrics["test"]
