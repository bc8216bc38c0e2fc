"""Compression methods compose in one fit, in either order, and their checkpoints reload to the same metrics."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from cli_helpers import CONFIGS, QUIET, fake_data_args, fit, host_precision, run_ddp_fit
from fakedata import make_fake_cifar
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from imbcompress.callbacks import (
    ClassBalancedLoss,
    ClimbQ,
    FilterPruning,
    FocalLoss,
    KnowledgeDistillation,
    LDAMDRWLoss,
    LogitAdjustedLoss,
    PostHocAdjustment,
    QuantizationAwareTraining,
)
from imbcompress.cli import run_cli
from imbcompress.data import ImbalancedDataModule
from imbcompress.task import ImbalanceClassifier

METHODS: dict[str, Callable[[Path], Callback]] = {
    "prune": lambda teacher: FilterPruning(target_sparsity=0.5),
    "dorefa": lambda teacher: QuantizationAwareTraining(weight_bits=3, activation_bits=3),
    "distill": lambda teacher: KnowledgeDistillation(teacher_checkpoint=str(teacher), alpha=0.7, temperature=2.0),
    "climbq": lambda teacher: ClimbQ(bits=2, homovar=True),
}
QUANTIZERS = {"dorefa", "climbq"}
PAIRS = [pair for pair in itertools.permutations(METHODS, 2) if set(pair) != QUANTIZERS]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_cifar(tmp_path_factory.mktemp("data"), train_per_class=12, test_per_class=4)


def _datamodule(root: Path, sampler: str = "instance_balanced") -> ImbalancedDataModule:
    switch_epoch = 1 if sampler == "deferred" else None
    return ImbalancedDataModule(
        dataset="cifar10", root=str(root), profile="exponential", imbalance_ratio=3, batch_size=24,
        sampler=sampler, sampler_switch_epoch=switch_epoch,
    )  # fmt: skip


def _trainer(workdir: Path, callbacks: list[Callback], **kwargs: object) -> Trainer:
    return Trainer(
        accelerator="cpu",
        precision="bf16-mixed",
        callbacks=callbacks,
        default_root_dir=workdir,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        **kwargs,
    )


@pytest.fixture(scope="module")
def teacher(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("teacher")
    checkpoint = ModelCheckpoint(dirpath=workdir, save_last=True, save_top_k=0)
    _trainer(workdir, [checkpoint], max_steps=2).fit(
        ImbalanceClassifier(num_classes=10), datamodule=_datamodule(data_root)
    )
    return workdir / "last.ckpt"


@pytest.mark.parametrize("pair", PAIRS, ids="+".join)
def test_pair_fits_and_checkpoint_reloads_to_the_same_metrics(
    pair: tuple[str, str], data_root: Path, teacher: Path, tmp_path: Path
) -> None:
    callbacks = [METHODS[name](teacher) for name in pair]
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    task = ImbalanceClassifier(num_classes=10, init_from=str(teacher))
    trainer = _trainer(tmp_path, [*callbacks, checkpoint], max_steps=2)
    trainer.fit(task, datamodule=_datamodule(data_root))
    trainer.test(task, datamodule=_datamodule(data_root), verbose=False)
    at_fit_end = task.last_test_results
    assert at_fit_end is not None
    kinds = [record["kind"] for record in task.transforms]
    assert ("filter_pruning" in kinds) == ("prune" in pair)

    # 1. the Trainer with the run's callbacks, a fresh task and --ckpt_path (what `imbcompress test` does)
    fresh = ImbalanceClassifier(num_classes=10)
    _trainer(tmp_path, [METHODS[name](teacher) for name in pair]).test(
        fresh, datamodule=_datamodule(data_root), ckpt_path=str(tmp_path / "last.ckpt"), verbose=False
    )
    assert fresh.last_test_results == at_fit_end
    # 2. load_from_checkpoint in plain Python, no callbacks at all: compression is replayed from the checkpoint
    reloaded = ImbalanceClassifier.load_from_checkpoint(tmp_path / "last.ckpt")
    _trainer(tmp_path, []).test(reloaded, datamodule=_datamodule(data_root), verbose=False)
    assert reloaded.last_test_results == at_fit_end
    # the teacher never enters the student's checkpoint
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]
    assert not any("teacher" in key for key in state)


@pytest.mark.parametrize("order", [("dorefa", "climbq"), ("climbq", "dorefa")], ids="+".join)
def test_two_quantizers_on_the_same_layers_is_a_configuration_error(
    order: tuple[str, str], data_root: Path, teacher: Path, tmp_path: Path
) -> None:
    trainer = _trainer(tmp_path, [METHODS[name](teacher) for name in order], max_steps=1)
    with pytest.raises(ValueError, match="already quantized by"):
        trainer.fit(ImbalanceClassifier(num_classes=10), datamodule=_datamodule(data_root))


def test_compress_fragments_stack_through_the_cli(data_root: Path, teacher: Path, tmp_path: Path) -> None:
    fragments = ["prune_severe", "dorefa_a3w3", "distill"]
    args = [
        f"--config={CONFIGS / 'trainer/cpu.yaml'}",
        f"--config={CONFIGS / 'model/resnet20.yaml'}",
        f"--config={CONFIGS / 'data/cifar10_exp100.yaml'}",
        *fake_data_args(data_root),
        "--data.init_args.imbalance_ratio=3",
        *[f"--config={CONFIGS / f'compress/{name}.yaml'}" for name in fragments],
        f"--trainer.callbacks.init_args.teacher_checkpoint={teacher}",
        f"--model.init_args.init_from={teacher}",
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=0",
    ]
    metrics = fit(args, tmp_path / "run")
    assert [record["method"] for record in metrics["compression"]] == [
        "filter_pruning",
        "dorefa",
        "knowledge_distillation",
    ]
    assert metrics["model_size"]["nnz"] == 6_688  # severe: one filter in each pruned conv (SPEC §4.1)

    # Re-tested with a config that has none of the compression fragments: metrics.json still says what the
    # checkpoint is (its structural records, and the fit-only distillation saved with the run report's state).
    plain = [arg for arg in args if not any(key in arg for key in ("compress/", "teacher_checkpoint", "init_from"))]
    ckpt = tmp_path / "run/checkpoints/last.ckpt"
    again_args = [*plain, *host_precision(args), f"--ckpt_path={ckpt}", f"--run_dir={tmp_path / 'again'}", *QUIET]
    run_cli(["test", *again_args])  # the fit's precision (see cli_helpers.EMULATED_BF16)
    again = json.loads((tmp_path / "again/metrics.json").read_text())
    assert again["test"] == metrics["test"] and again["model_size"] == metrics["model_size"]
    assert again["compression"] == metrics["compression"]


# Long-tail remedies (docs/remedies.md) with compression: every remedy with each compression method at least once.
REMEDIES: dict[str, Callable[[], Callback]] = {
    "class_balanced": lambda: ClassBalancedLoss(beta=0.999, gamma=1.0),
    "focal": lambda: FocalLoss(gamma=2.0),
    "ldam_drw": lambda: LDAMDRWLoss(drw_epoch=1),
    "logit_adjusted": lambda: LogitAdjustedLoss(tau=1.0),
    "posthoc_la": lambda: PostHocAdjustment("logit_adjustment", tau=1.0),
}
REMEDY_COMBINATIONS = [
    ("class_balanced", "square_root", ("prune", "distill")),
    ("focal", "instance_balanced", ("dorefa",)),
    ("ldam_drw", "class_balanced", ("prune", "climbq_plain")),
    ("logit_adjusted", "progressive", ("prune", "dorefa", "distill")),
    ("posthoc_la", "deferred", ("climbq_plain", "distill")),
]


def _compression(name: str, teacher: Path) -> Callback:
    return ClimbQ(bits=2) if name == "climbq_plain" else METHODS[name](teacher)


@pytest.mark.parametrize(
    ("remedy", "sampler", "methods"), REMEDY_COMBINATIONS, ids=lambda v: "+".join(v) if isinstance(v, tuple) else v
)
def test_remedy_with_compression_fits_and_reloads_to_the_same_metrics(
    remedy: str, sampler: str, methods: tuple[str, ...], data_root: Path, teacher: Path, tmp_path: Path
) -> None:
    def callbacks() -> list[Callback]:
        return [*(_compression(name, teacher) for name in methods), REMEDIES[remedy]()]

    def datamodule() -> ImbalancedDataModule:
        return _datamodule(data_root, sampler)

    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    task = ImbalanceClassifier(num_classes=10, init_from=str(teacher))
    trainer = _trainer(tmp_path, [*callbacks(), checkpoint], max_epochs=2, limit_train_batches=1)
    trainer.fit(task, datamodule=datamodule())
    trainer.test(task, datamodule=datamodule(), verbose=False)
    at_fit_end = task.last_test_results
    assert at_fit_end is not None

    fresh = ImbalanceClassifier(num_classes=10)
    _trainer(tmp_path, callbacks()).test(
        fresh, datamodule=datamodule(), ckpt_path=str(tmp_path / "last.ckpt"), verbose=False
    )
    assert fresh.last_test_results == at_fit_end
    reloaded = ImbalanceClassifier.load_from_checkpoint(tmp_path / "last.ckpt")
    posthoc = [REMEDIES[remedy]()] if remedy.startswith("posthoc") else []  # a test-time remedy is in the test config
    _trainer(tmp_path, posthoc).test(reloaded, datamodule=datamodule(), verbose=False)
    assert reloaded.last_test_results == at_fit_end


def _ddp_data_args(data_root: Path) -> list[str]:
    return [
        f"--config={CONFIGS / 'data/cifar10_exp100.yaml'}",
        *fake_data_args(data_root),
        "--data.init_args.imbalance_ratio=3",
        "--data.init_args.batch_size=8",
        "--trainer.max_epochs=1",
    ]


@pytest.mark.slow
def test_two_process_cpu_ddp_with_pruning_and_climbq(data_root: Path, tmp_path: Path) -> None:
    fragments = [
        f"--config={CONFIGS / 'compress/prune_moderate.yaml'}",
        f"--config={CONFIGS / 'compress/climbqplus_w2.yaml'}",
    ]
    metrics = run_ddp_fit([*_ddp_data_args(data_root), *fragments], tmp_path / "run")
    assert metrics["world_size"] == 2 and metrics["test"]["num_samples"] == 40
    assert [record["method"] for record in metrics["compression"]] == ["filter_pruning", "climbq"]
    # both ranks pruned identically (else DDP would have failed on shape mismatch); the checkpoint reloads
    reloaded = ImbalanceClassifier.load_from_checkpoint(tmp_path / "run/checkpoints/last.ckpt")
    assert [r["kind"] for r in reloaded.transforms] == ["filter_pruning", "climbq"]


@pytest.mark.slow
def test_two_process_cpu_ddp_with_qat_and_distillation(data_root: Path, teacher: Path, tmp_path: Path) -> None:
    fragments = [
        f"--config={CONFIGS / 'compress/dorefa_a8w4.yaml'}",
        f"--config={CONFIGS / 'compress/distill.yaml'}",
        f"--trainer.callbacks.init_args.teacher_checkpoint={teacher}",
    ]
    metrics = run_ddp_fit([*_ddp_data_args(data_root), *fragments], tmp_path / "run")
    assert metrics["world_size"] == 2 and metrics["test"]["num_samples"] == 40
    assert [record["method"] for record in metrics["compression"]] == ["dorefa", "knowledge_distillation"]
