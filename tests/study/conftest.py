"""Shared fixtures: a tiny study on disk, the fake fit command, and a tiny study of real fits."""

import json
import sys
from pathlib import Path

import pytest
import yaml
from cli_helpers import host_precision
from fakedata import make_fake_cifar

FAKE_FIT = str(Path(__file__).with_name("fake_fit.py"))
REPO = Path(__file__).resolve().parents[2]


def write_real_study(folder: Path, name: str, methods: dict, **overrides) -> Path:
    """A study of real ``imbcompress fit`` runs small enough for a test: ResNet-20, one epoch of 2 batches of 16, on
    generated CIFAR-10 files (8 training and 2 test images per class) in ``folder/data``; returns its file."""
    make_fake_cifar(folder / "data", train_per_class=8, test_per_class=2)
    data = {
        "data": {"class_path": "imbcompress.data.ImbalancedDataModule", "init_args": {"root": str(folder / "data")}}
    }
    (folder / "data.yaml").write_text(yaml.safe_dump(data))
    study = {
        "name": name,
        "base": [str(REPO / "configs/trainer/cpu.yaml"), str(REPO / "configs/model/resnet20.yaml"), "data.yaml"],
        "args": [
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",  # "1" would parse as 1.0: every batch
            "--trainer.enable_progress_bar=false",
            "--data.init_args.batch_size=16",
            *host_precision([]),  # fp32 where bf16 would be emulated (cli_helpers.EMULATED_BF16)
        ],
        "methods": methods,
        "seeds": [0],
        **overrides,
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def write_study(folder: Path, **overrides) -> Path:
    """A study with two data variants, an FP32 reference, a pruned model and a distilled student."""
    (folder / "frags").mkdir(exist_ok=True)
    for name in ("base", "prune", "quant"):
        (folder / "frags" / f"{name}.yaml").write_text(f"# {name}\n")
    study = {
        "name": "tiny",
        "base": ["frags/base.yaml"],
        "args": ["--trainer.max_epochs=1"],
        "imbalance": [{"profile": "exponential", "ratio": [100]}],
        "methods": {
            "fp32": {},
            "prune": {"fragments": ["frags/prune.yaml"], "init_from": "fp32"},
            "kd": {"fragments": ["frags/quant.yaml"], "teacher": "fp32", "distill": {"alpha": 0.7, "temperature": 1}},
        },
        "reference": "fp32",
        "seeds": [0],
    }
    study.update(overrides)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    """Route the fake fit's call log into the test's directory; returns a reader of the recorded calls."""
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_FIT_LOG", str(log))
    for name in ("FAKE_FIT_FAIL", "FAKE_FIT_DIE", "FAKE_FIT_HANG", "FAKE_FIT_SECONDS", "FAKE_SMI_DIR"):
        monkeypatch.delenv(name, raising=False)

    def calls() -> list[dict]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return calls


@pytest.fixture
def fake_prefix() -> list[str]:
    return [sys.executable, FAKE_FIT]
