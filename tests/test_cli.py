"""The `imbcompress` command end to end on generated CIFAR files: configs, metrics.json, test --ckpt_path, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_helpers import CONFIGS, QUIET, fake_data_args, fit, make_learnable_cifar
from fakedata import make_fake_cifar, make_fake_image_folder

from imbcompress.__main__ import main
from imbcompress.checkpoint import load_checkpoint_file
from imbcompress.cli import run_cli

BASE = [f"--config={CONFIGS / 'trainer/cpu.yaml'}", f"--config={CONFIGS / 'model/resnet20.yaml'}"]
METRICS_KEYS = {
    "schema_version",
    "dataset",
    "imbalance",
    "model",
    "compression",
    "class_names",
    "train_class_counts",
    "test_class_counts",
    "test",
    "model_size",
    "seed",
    "versions",
    "code",
    "fit_code",
    "host",
    "ckpt_path",
}


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_fake_cifar(tmp_path_factory.mktemp("cifar"), train_per_class=100, test_per_class=6)
    return make_fake_cifar(root, dataset="cifar100", train_per_class=100, test_per_class=1)  # rho up to 100


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_image_folder(
        tmp_path_factory.mktemp("folder"), num_classes=10, train_per_class=100, test_per_class=3
    )


def _committed_configs(folder: str) -> list[Path]:
    return sorted((CONFIGS / folder).glob("*.yaml"))


def _data_overrides(config: Path, cifar_root: Path, folder_root: Path) -> list[str]:
    data = yaml.safe_load(config.read_text()).get("data", {}).get("init_args", {})
    if data.get("dataset") == "image_folder":
        return [f"--data.init_args.root={folder_root}"]
    return fake_data_args(cifar_root, data.get("dataset", "cifar10"))


@pytest.mark.parametrize("config", _committed_configs("experiments"), ids=lambda p: p.stem)
def test_every_experiment_config_runs(config: Path, cifar_root: Path, folder_root: Path, tmp_path: Path) -> None:
    extra = []
    model_args = yaml.safe_load(config.read_text())["model"]["init_args"]
    if model_args.get("init_from"):  # a compress-after-training experiment: an FP32 checkpoint of the same data
        fp32 = tmp_path / "fp32"
        fit(
            [
                *BASE,
                f"--model.init_args.shortcut={model_args.get('shortcut', 'A')}",  # the same model as the experiment
                "--data=imbcompress.data.ImbalancedDataModule",
                *fake_data_args(cifar_root),
                "--trainer.max_steps=1",
                "--trainer.limit_val_batches=0",
            ],
            fp32,
        )
        extra = [f"--model.init_args.init_from={fp32 / 'checkpoints/last.ckpt'}"]
    args = [f"--config={config}", *_data_overrides(config, cifar_root, folder_root), *extra]
    metrics = fit([*args, "--trainer.fast_dev_run=true"], tmp_path / "run")
    assert metrics["test"]["num_samples"] > 0


@pytest.fixture(scope="module")
def teacher_ckpt(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("teacher")
    fit(
        [*BASE, "--data=imbcompress.data.ImbalancedDataModule", *fake_data_args(cifar_root), "--trainer.max_steps=1"],
        run,
    )
    return run / "checkpoints/last.ckpt"


@pytest.mark.parametrize(
    "config",
    sum((_committed_configs(folder) for folder in ("trainer", "model", "data", "compress")), []),
    ids=lambda p: f"{p.parent.name}/{p.stem}",
)
def test_every_fragment_runs(
    config: Path, cifar_root: Path, folder_root: Path, teacher_ckpt: Path, tmp_path: Path
) -> None:
    base = {"trainer": CONFIGS / "trainer/cpu.yaml", "model": CONFIGS / "model/resnet20.yaml", "data": None}
    if config.parent.name == "compress":  # appended on top of a full run, as users combine them
        base["compress"] = config
    else:
        base[config.parent.name] = config
    args = [f"--config={path}" for path in base.values() if path is not None]
    if "teacher_checkpoint" in config.read_text():
        args.append(f"--trainer.callbacks.init_args.teacher_checkpoint={teacher_ckpt}")
    if base["data"] is None:
        args += ["--data=imbcompress.data.ImbalancedDataModule", *fake_data_args(cifar_root)]
    else:
        args += _data_overrides(config, cifar_root, folder_root)
    if config.parent.name == "trainer":  # run GPU / multi-process fragments on one CPU process here
        args += ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto"]
    # one small batch is all a fragment needs to show it runs (ResNet-110 on a full batch took over a minute here)
    metrics = fit([*args, "--trainer.fast_dev_run=true", "--data.init_args.batch_size=8"], tmp_path / "run")
    assert metrics["test"]["num_samples"] > 0


def test_metrics_json_complete_and_test_ckpt_path_reproduces(
    cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = ["--config", str(CONFIGS / "data/cifar10_exp100.yaml"), *fake_data_args(cifar_root)]
    data += ["--data.init_args.imbalance_ratio=12", "--data.init_args.batch_size=32"]
    metrics = fit([*BASE, *data, "--trainer.max_epochs=2", "--seed_everything=3"], tmp_path / "run")
    assert set(metrics) >= METRICS_KEYS
    assert metrics["host"]["cpu_count"] == os.cpu_count() and metrics["host"]["gpu"] is None  # a CPU run
    assert metrics["imbalance"] == {
        "profile": "exponential",
        "ratio": 12.0,
        "minority_classes": None,
        "head": "first",
        "seed": 0,
    }
    assert metrics["train_class_counts"] == [int(100 * 12 ** (-i / 9)) for i in range(10)]
    assert metrics["test"]["num_samples"] == 60 == sum(metrics["test_class_counts"])
    assert len(metrics["test"]["per_class"]["f1"]) == 10 and len(metrics["test"]["confusion_matrix"]) == 10
    assert metrics["seed"] == 3 and metrics["model"]["name"] == "resnet20"
    assert metrics["model_size"]["nnz"] == 268_336
    assert (tmp_path / "run/config.yaml").is_file()

    # Re-test the saved checkpoint with the run's saved config: the same numbers, the file read once by the checks.
    ckpt = tmp_path / "run/checkpoints/last.ckpt"
    reads: list[str] = []

    def counted(path: str | Path, setting: str) -> dict:
        reads.append(str(path))
        return load_checkpoint_file(path, setting)

    monkeypatch.setattr("imbcompress.checkpoint.load_checkpoint_file", counted)
    monkeypatch.setattr("imbcompress.cli.load_checkpoint_file", counted)
    run_cli(
        [
            "test",
            f"--config={tmp_path / 'run/config.yaml'}",
            f"--ckpt_path={ckpt}",
            f"--run_dir={tmp_path / 'again'}",
            *QUIET,
        ]
    )
    again = json.loads((tmp_path / "again/metrics.json").read_text())
    assert again["test"] == metrics["test"]
    assert reads == [str(ckpt)]  # checked, then its hyperparameters and restore check reuse what was read


def test_a_command_without_a_seed_does_not_report_an_earlier_commands_seed(cifar_root: Path, tmp_path: Path) -> None:
    # two commands in one process (a notebook, this test): seed_everything keeps its seed in PL_GLOBAL_SEED
    args = [*BASE, "--data=imbcompress.data.ImbalancedDataModule", *fake_data_args(cifar_root), "--trainer.max_steps=2"]
    assert fit([*args, "--seed_everything=3"], tmp_path / "seeded")["seed"] == 3
    unseeded = fit([*args, "--seed_everything=false"], tmp_path / "unseeded")
    assert unseeded["seed"] is None  # was 3, the earlier command's
    assert fit([*args, "--seed_everything=4"], tmp_path / "again")["seed"] == 4


def test_predict_writes_predictions(cifar_root: Path, tmp_path: Path) -> None:
    fit(
        [*BASE, "--data=imbcompress.data.ImbalancedDataModule", *fake_data_args(cifar_root), "--trainer.max_steps=1"],
        tmp_path / "run",
    )
    run_cli(
        [
            "predict",
            f"--config={tmp_path / 'run/config.yaml'}",
            f"--ckpt_path={tmp_path / 'run/checkpoints/last.ckpt'}",
            f"--run_dir={tmp_path / 'pred'}",
            *QUIET,
        ]
    )
    lines = (tmp_path / "pred/predictions.csv").read_text().splitlines()
    assert lines[0] == "index,target,prediction" and len(lines) == 61


def test_bf16_training_learns_the_task_as_fp32_does(tmp_path: Path) -> None:
    root = make_learnable_cifar(tmp_path / "data")
    common = [
        *BASE,
        "--data=imbcompress.data.ImbalancedDataModule",
        *fake_data_args(root),
        "--data.init_args.batch_size=50",
        "--trainer.max_epochs=4",
        "--trainer.limit_val_batches=0",
        "--model.init_args.lr=0.05",
    ]
    bf16 = fit(common, tmp_path / "bf16", keep_precision=True)["test"]["accuracy"]
    fp32 = fit([*common, f"--config={CONFIGS / 'trainer/fp32.yaml'}"], tmp_path / "fp32")["test"]["accuracy"]
    assert fp32 > 0.8, "the generated task should be learnable in a few steps"
    # bf16 learns it too (chance is 0.1). With 2-4 threads it lands within 0.1 of fp32; with 1 thread it trained
    # to 0.88 against 0.995, so a tighter band would test the machine's thread count rather than bf16.
    assert bf16 > 0.75, (bf16, fp32)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--data.init_args.imbalance_ratio=0.5", "imbalance_ratio"),
        ("--data.init_args.profile=step", "minority_classes"),
        ("--data.init_args.minority_classes=10", "minority_classes"),
    ],
)
def test_bad_data_settings_fail_before_training(override: str, message: str, cifar_root: Path, tmp_path: Path) -> None:
    args = [
        "fit",
        *BASE,
        "--data=imbcompress.data.ImbalancedDataModule",
        *fake_data_args(cifar_root),
        "--data.init_args.profile=step",
        override,
        f"--run_dir={tmp_path / 'run'}",
    ]
    with pytest.raises(ValueError) as error:
        run_cli(args)
    assert message in str(error.value)
    assert not (tmp_path / "run/checkpoints").exists()


def test_empty_tail_class_is_an_error(cifar_root: Path, tmp_path: Path) -> None:
    args = [
        "fit",
        *BASE,
        "--data=imbcompress.data.ImbalancedDataModule",
        *fake_data_args(cifar_root),
        "--data.init_args.profile=exponential",
        "--data.init_args.imbalance_ratio=1000",
        f"--run_dir={tmp_path}",
    ]
    with pytest.raises(ValueError, match="0 images|zero|empty"):
        run_cli(args)


def test_unknown_model_and_missing_data_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run_cli(["fit", *BASE, "--model.init_args.arch=resnet7", "--data=imbcompress.data.ImbalancedDataModule"])
    assert "resnet20" in capsys.readouterr().err  # the allowed values are listed
    # jsonargparse re-raises errors of __init__ as ValueError, with the original message inside
    with pytest.raises((FileNotFoundError, ValueError), match="cifar10 not found: expected .*nowhere"):
        run_cli(
            [
                "fit",
                *BASE,
                "--data=imbcompress.data.ImbalancedDataModule",
                f"--data.init_args.root={tmp_path / 'nowhere'}",
            ]
        )


def test_study_subcommand_dispatch(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "--help"])
    assert exit_info.value.code == 0
    assert "run" in capsys.readouterr().out


def test_study_commands_do_not_import_torch() -> None:
    code = (
        "import sys\nfrom imbcompress.__main__ import main\n"
        "try:\n    main(['study', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'lightning' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "False False"
