"""The CUDA paths, end to end on one GPU (``pytest -m gpu``; skipped without CUDA; run by benchmarks/gpu_check.sh).

Each test mirrors a CPU test of the suite on the device a study runs on: a bf16 fit with the data resident on the
GPU, resume equivalence, prune + DoReFa + distillation reloading to equal metrics, ClimbQ's quantizers against
their CPU result, and the study runner launching real fits on one GPU.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import CONFIGS, QUIET, fake_data_args, make_learnable_cifar
from fakedata import make_fake_cifar
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from imbcompress.callbacks import FilterPruning, KnowledgeDistillation, QuantizationAwareTraining
from imbcompress.cli import run_cli
from imbcompress.compress.climbq import ClimbQActivationQuantizer, ClimbQWeightQuantizer, set_class_labels
from imbcompress.data import ImbalancedDataModule
from imbcompress.task import ImbalanceClassifier

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before the first cuBLAS call: reproducible matmuls
GPU_TRAINER = [f"--config={CONFIGS / 'trainer/cpu.yaml'}", "--trainer.accelerator=gpu", "--trainer.devices=1"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_cifar(tmp_path_factory.mktemp("data"), train_per_class=24, test_per_class=6)


def _datamodule(root: Path, **kwargs: object) -> ImbalancedDataModule:
    settings: dict = dict(dataset="cifar10", root=str(root), profile="exponential", imbalance_ratio=3, batch_size=16)
    return ImbalancedDataModule(**(settings | kwargs))  # type: ignore[arg-type]


def _trainer(workdir: Path, callbacks: list[Callback], precision: str = "bf16-mixed", **kwargs: object) -> Trainer:
    return Trainer(
        accelerator="gpu",
        devices=1,
        precision=precision,  # type: ignore[arg-type]
        callbacks=callbacks,
        default_root_dir=workdir,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        **kwargs,  # type: ignore[arg-type]
    )


def test_bf16_fit_on_cuda_with_the_data_resident_on_the_device(tmp_path: Path) -> None:
    root = make_learnable_cifar(tmp_path / "data", train_per_class=64, test_per_class=16)
    args = ["fit", *GPU_TRAINER, f"--config={CONFIGS / 'model/resnet20.yaml'}"]
    args += ["--data=imbcompress.data.ImbalancedDataModule", *fake_data_args(root), "--data.init_args.batch_size=64"]
    args += ["--trainer.max_epochs=3", "--model.init_args.lr=0.05", *QUIET, f"--run_dir={tmp_path / 'run'}"]
    cli = run_cli(args)
    assert cli.datamodule._train.images.device.type == "cuda"  # moved once, no host-to-device copy per batch
    # (not the model's device: Lightning's teardown after the test moves the module back to the CPU)
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["precision"] == "bf16-mixed" and metrics["host"]["gpu"]
    assert metrics["test"]["accuracy"] > 0.5  # separable colours: a working GPU step learns them in 3 epochs


class _Interrupt(Callback):
    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer: Trainer, *args: object) -> None:
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated interruption")


def _resume_run(root: Path, workdir: Path, interrupt_at: int | None = None, ckpt: str | None = None) -> dict:
    torch.manual_seed(0)
    task = ImbalanceClassifier(arch="resnet20", num_classes=10, lr=0.05, scheduler="cosine")
    callbacks: list[Callback] = [ModelCheckpoint(dirpath=workdir, save_last=True, save_top_k=0, every_n_train_steps=3)]
    callbacks += [_Interrupt(interrupt_at)] if interrupt_at is not None else []
    # "warn", not True: AdaptiveAvgPool2d's CUDA backward has no deterministic kernel and would raise (with a
    # 1x1 output every input gets one gradient write, so it is reproducible all the same).
    trainer = _trainer(workdir, callbacks, precision="32-true", max_epochs=2, deterministic="warn")
    trainer.fit(task, datamodule=_datamodule(root), ckpt_path=ckpt)
    trainer.test(task, datamodule=_datamodule(root), verbose=False)
    assert task.last_test_results is not None
    return {"state": {k: v.cpu() for k, v in task.state_dict().items()}, "test": task.last_test_results}


def test_resume_on_cuda_matches_the_uninterrupted_run(data_root: Path, tmp_path: Path) -> None:
    reference = _resume_run(data_root, tmp_path / "reference")
    with pytest.raises(RuntimeError, match="simulated interruption"):
        _resume_run(data_root, tmp_path / "interrupted", interrupt_at=8)
    resumed = _resume_run(data_root, tmp_path / "interrupted", ckpt=str(tmp_path / "interrupted/last.ckpt"))
    for name, value in reference["state"].items():
        assert torch.allclose(value.float(), resumed["state"][name].float(), rtol=1e-4, atol=1e-5), name
    assert resumed["test"]["confusion_matrix"] == reference["test"]["confusion_matrix"]


def test_prune_dorefa_distillation_fit_and_reload_on_cuda(data_root: Path, tmp_path: Path) -> None:
    teacher_dir = tmp_path / "teacher"
    _trainer(teacher_dir, [ModelCheckpoint(dirpath=teacher_dir, save_last=True, save_top_k=0)], max_steps=3).fit(
        ImbalanceClassifier(num_classes=10), datamodule=_datamodule(data_root)
    )
    teacher = str(teacher_dir / "last.ckpt")

    def callbacks() -> list[Callback]:
        return [FilterPruning(target_sparsity=0.5), QuantizationAwareTraining(3, 3), KnowledgeDistillation(teacher)]

    task = ImbalanceClassifier(num_classes=10, init_from=teacher)
    fit_dir = tmp_path / "student"
    checkpoint = ModelCheckpoint(dirpath=fit_dir, save_last=True, save_top_k=0)
    trainer = _trainer(fit_dir, [*callbacks(), checkpoint], max_steps=3)
    trainer.fit(task, datamodule=_datamodule(data_root))
    trainer.test(task, datamodule=_datamodule(data_root), verbose=False)
    assert {"filter_pruning", "dorefa"} <= {r["kind"] for r in task.transforms}
    fresh = ImbalanceClassifier(num_classes=10)
    _trainer(fit_dir, callbacks()).test(
        fresh, datamodule=_datamodule(data_root), ckpt_path=str(fit_dir / "last.ckpt"), verbose=False
    )
    assert fresh.last_test_results == task.last_test_results
    reloaded = ImbalanceClassifier.load_from_checkpoint(fit_dir / "last.ckpt", weights_only=True)
    _trainer(fit_dir, []).test(reloaded, datamodule=_datamodule(data_root), verbose=False)
    assert reloaded.last_test_results == task.last_test_results


@pytest.mark.parametrize("mode", ["official", "paper"])
def test_climbq_quantizers_on_cuda_match_their_cpu_result(mode: str) -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(64, 16, 8, 8, generator=generator)
    labels = torch.randint(0, 10, (64,), generator=generator)
    weight = torch.randn(16, 16, 3, 3, generator=generator)
    results = {}
    for device in ("cpu", "cuda"):
        quantizer = ClimbQActivationQuantizer(bits=2, mode=mode).train()
        holder = torch.nn.Sequential(quantizer)
        set_class_labels(holder, labels.to(device), torch.bincount(labels, minlength=10).to(device))
        x = features.detach().to(device).requires_grad_(True)  # a leaf on each device, so x.grad is filled
        out = quantizer(x)
        out.sum().backward()
        w = ClimbQWeightQuantizer(bits=2)(weight.to(device))
        results[device] = (out.detach().cpu(), x.grad.cpu(), w.cpu())  # type: ignore[union-attr]
    (out_cpu, grad_cpu, w_cpu), (out_gpu, grad_gpu, w_gpu) = results["cpu"], results["cuda"]
    # erf differs in the last ulp between devices: a value exactly on a level boundary may round the other way
    assert (out_cpu == out_gpu).float().mean() > 0.999
    assert torch.allclose(grad_cpu, grad_gpu, rtol=1e-4, atol=1e-6)
    assert (w_cpu == w_gpu).float().mean() > 0.999


def test_study_runner_on_one_gpu(tmp_path: Path) -> None:
    from imbcompress.study.cli import main as study_main
    from imbcompress.study.plan import load_plan
    from imbcompress.study.state import LOG_FILE, plan_states

    make_fake_cifar(tmp_path / "data", train_per_class=8, test_per_class=2)
    data = {
        "data": {"class_path": "imbcompress.data.ImbalancedDataModule", "init_args": {"root": str(tmp_path / "data")}}
    }
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(data))
    qat = {"class_path": "imbcompress.callbacks.QuantizationAwareTraining", "init_args": {"weight_bits": 3}}
    study = {
        "name": "gpu",
        "base": [str(CONFIGS / "trainer/gpu.yaml"), str(CONFIGS / "model/resnet20.yaml"), "data.yaml"],
        "args": ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.enable_progress_bar=false"],
        "methods": {"fp32": {}, "student": {"callbacks": [qat], "init_from": "fp32", "teacher": "fp32"}},
        "seeds": [0],
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    out = tmp_path / "out"
    command = f"{sys.executable} -m imbcompress"
    status = study_main(["run", str(tmp_path / "study.yaml"), "--out", str(out), "--command", command])
    logs = {p.relative_to(out): p.read_text()[-3000:] for p in sorted(out.glob(f"runs/**/{LOG_FILE}"))}
    assert status == 0, "\n".join(f"--- {name}\n{text}" for name, text in logs.items())
    assert set(plan_states(load_plan(out)).values()) == {"done"}
    metrics = json.loads((out / "runs/balanced/student/seed0/metrics.json").read_text())
    assert metrics["host"]["gpu"] and metrics["precision"] == "bf16-mixed"
    assert [c["method"] for c in metrics["compression"]] == ["dorefa", "knowledge_distillation"]
