"""Records never lie: re-testing never overwrites a fit's files, and metrics.json says where the weights came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import CONFIGS, QUIET, fake_data_args, fit
from fakedata import make_fake_cifar

from imbcompress.cli import run_cli
from imbcompress.host import code_revision

BASE = [f"--config={CONFIGS / 'trainer/cpu.yaml'}", f"--config={CONFIGS / 'model/resnet20.yaml'}"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A finished 1-epoch fit (its run dir) and the data arguments it used."""
    root = make_fake_cifar(tmp_path_factory.mktemp("data"), train_per_class=8, test_per_class=2, size=16)
    data = ["--data=imbcompress.data.ImbalancedDataModule", *fake_data_args(root), "--data.init_args.batch_size=40"]
    run = tmp_path_factory.mktemp("runs") / "fp32"
    fit([*BASE, *data, "--trainer.max_epochs=1", "--trainer.limit_val_batches=0"], run)
    return run, data


def test_retest_and_predict_never_touch_the_fits_files(fitted: tuple[Path, list[str]]) -> None:
    run, _ = fitted
    before = {name: (run / name).read_bytes() for name in ("config.yaml", "metrics.json")}
    ckpt = run / "checkpoints/last.ckpt"
    for _ in range(2):  # the saved config names run_dir=RUN; no --run_dir given
        run_cli(["test", f"--config={run / 'config.yaml'}", f"--ckpt_path={ckpt}", *QUIET])
    run_cli(["predict", f"--config={run / 'config.yaml'}", f"--ckpt_path={ckpt}", *QUIET])
    assert {name: (run / name).read_bytes() for name in before} == before
    first, second = (json.loads((run / f"test-{n}/metrics.json").read_text()) for n in (1, 2))
    assert first["test"] == second["test"] == json.loads(before["metrics.json"])["test"]
    assert first["ckpt_path"] == str(ckpt)
    saved = (run / "test-1/config.yaml").read_text()
    assert f"run_dir: {run / 'test-1'}" in saved  # the evaluation's own config says where it wrote
    assert (run / "predict-1/predictions.csv").read_text().startswith("index,target,prediction\n")


def test_a_resumed_fit_records_the_checkpoint_and_init_from(
    fitted: tuple[Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, data = fitted
    parent = str(run / "checkpoints/last.ckpt")
    args = [*BASE, *data, "--trainer.limit_val_batches=0", f"--model.init_args.init_from={parent}"]
    fit([*args, "--trainer.max_epochs=1"], tmp_path / "child")
    last = tmp_path / "child/checkpoints/last.ckpt"
    later = {"commit": "f" * 40, "dirty": True}  # the resuming command runs other code
    monkeypatch.setattr("imbcompress.callbacks.run_report.code_revision", lambda: later)
    resumed = fit([*args, "--trainer.max_epochs=2", f"--ckpt_path={last}"], tmp_path / "child")
    assert resumed["resumed_from"] == str(last) and resumed["init_from"] == parent
    assert resumed["ckpt_path"] is None  # the model tested is the one in memory at the end of the fit
    assert resumed["fit_code"] == [code_revision(), later]  # both commands' code, not only the last one's


def test_fit_code_lists_every_command_that_trained_the_weights(fitted: tuple[Path, list[str]], tmp_path: Path) -> None:
    run, data = fitted
    assert json.loads((run / "metrics.json").read_text())["fit_code"] == [code_revision()]
    ckpt = run / "checkpoints/last.ckpt"
    retest = run_cli(["test", f"--config={run / 'config.yaml'}", f"--ckpt_path={ckpt}", *QUIET])
    assert json.loads((Path(retest.trainer.log_dir) / "metrics.json").read_text())["fit_code"] == [code_revision()]
    # a checkpoint written before the list existed: its earlier commands' code is unknown, and the record says so
    checkpoint = torch.load(ckpt, weights_only=True)
    del checkpoint["callbacks"]["RunReport"]["fit"]["fit_code"]
    torch.save(checkpoint, tmp_path / "old.ckpt")
    args = [
        *BASE,
        *data,
        "--trainer.max_epochs=2",
        "--trainer.limit_val_batches=0",
        f"--ckpt_path={tmp_path / 'old.ckpt'}",
    ]
    assert fit(args, tmp_path / "resumed")["fit_code"] == [None, code_revision()]


def test_cli_reads_a_checkpoint_written_before_arch_was_renamed(fitted: tuple[Path, list[str]], tmp_path: Path) -> None:
    run, _ = fitted
    checkpoint = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["model"] = checkpoint["hyper_parameters"].pop("arch")
    torch.save(checkpoint, tmp_path / "old.ckpt")
    config = f"--config={run / 'config.yaml'}"
    run_cli(["test", config, f"--ckpt_path={tmp_path / 'old.ckpt'}", f"--run_dir={tmp_path / 'again'}", *QUIET])
    again = json.loads((tmp_path / "again/metrics.json").read_text())
    assert again["model"]["name"] == "resnet20"
    assert again["test"] == json.loads((run / "metrics.json").read_text())["test"]


def test_fine_tunes_of_one_parent_differ_by_seed_everything(fitted: tuple[Path, list[str]], tmp_path: Path) -> None:
    """Two seeds of a fine-tune (same parent, same subset) train on different batches: before, the training order
    and augmentation followed subset_seed only, and such runs came out identical bit for bit."""
    run, data = fitted
    args = [*BASE, *data, "--trainer.max_steps=2", "--trainer.limit_val_batches=0"]
    args += [f"--model.init_args.init_from={run / 'checkpoints/last.ckpt'}"]
    weights = {}
    for seed in (0, 1):
        metrics = fit([*args, f"--seed_everything={seed}"], tmp_path / f"s{seed}")
        assert metrics["data"]["shuffle_seed"] == seed and metrics["seed"] == seed
        weights[seed] = torch.load(tmp_path / f"s{seed}/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert any(not torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
