"""Shared fixtures: a tiny study on disk and the fake fit command."""

import json
import sys
from pathlib import Path

import pytest
import yaml

FAKE_FIT = str(Path(__file__).with_name("fake_fit.py"))


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
