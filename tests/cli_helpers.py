"""Helpers for tests that drive the real `imbcompress` CLI on generated data."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from imbcompress.cli import run_cli
from imbcompress.host import cpu_has_native_bf16

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
# On a CPU without native bf16, PyTorch emulates it: the committed bf16 fragments then run several times slower than
# fp32 (the one-batch MobileNet-V2 fragment test: 274 s in bf16, 2.7 s in fp32 on an AVX2 EPYC; docs/performance.md).
# The CLI tests run those fits in fp32 there, unless a test names a precision itself or is about bf16
# (keep_precision=True); the bf16 arithmetic keeps its own tests (test_bf16_training_learns_the_task_as_fp32_does
# and the autocast unit tests).
EMULATED_BF16 = cpu_has_native_bf16() is False


def host_precision(args: list[str], keep_precision: bool = False) -> list[str]:
    """``--trainer.precision=32-true`` when bf16 would be emulated here and the test does not choose the precision."""
    chosen = keep_precision or any("precision" in arg for arg in args)
    return ["--trainer.precision=32-true"] if EMULATED_BF16 and not chosen else []


def fake_data_args(root: Path, dataset: str = "cifar10") -> list[str]:
    """CLI overrides that point any data fragment at generated files."""
    return [f"--data.init_args.root={root}", f"--data.init_args.dataset={dataset}", "--data.init_args.download=false"]


def fit(args: list[str], run_dir: Path, keep_precision: bool = False) -> dict[str, Any]:
    """Run `imbcompress fit` in-process and return the run's metrics.json (see EMULATED_BF16 for the precision)."""
    run_cli(["fit", *args, *QUIET, *host_precision(args, keep_precision), f"--run_dir={run_dir}"])
    return json.loads((run_dir / "metrics.json").read_text())


def make_learnable_cifar(root: Path, train_per_class: int = 60, test_per_class: int = 20, seed: int = 0) -> Path:
    """CIFAR-10 pickles whose classes are separable (a class-specific colour + noise), so a few steps learn them."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(40, 216, size=(10, 3))

    def batch(per_class: int) -> dict:
        labels = np.repeat(np.arange(10), per_class)
        rng.shuffle(labels)
        noise = rng.normal(0, 30, size=(len(labels), 3, 32, 32))
        images = np.clip(centres[labels][:, :, None, None] + noise, 0, 255).astype(np.uint8)
        return {"data": images.reshape(len(labels), -1), "labels": labels.tolist()}

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train = batch(train_per_class)
    for index, part in enumerate(np.array_split(np.arange(len(train["labels"])), 5), start=1):
        chunk = {"data": train["data"][part], "labels": [train["labels"][i] for i in part]}
        (folder / f"data_batch_{index}").write_bytes(pickle.dumps(chunk))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(test_per_class)))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    return root


def ddp_fit_process(args: list[str], run_dir: Path) -> subprocess.CompletedProcess[str]:
    """`imbcompress fit` with 2 CPU processes (DDP over gloo) as a real subprocess, finished or failed."""
    command = [
        sys.executable, "-m", "imbcompress", "fit", f"--config={CONFIGS / 'trainer/ddp_cpu.yaml'}",
        f"--config={CONFIGS / 'model/resnet20.yaml'}", *args, *host_precision(args), f"--run_dir={run_dir}", *QUIET,
    ]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def run_ddp_fit(args: list[str], run_dir: Path) -> dict[str, Any]:
    """`imbcompress fit` with 2 CPU processes (DDP over gloo) as a real subprocess; returns its metrics.json."""
    result = ddp_fit_process(args, run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "metrics.json").read_text())
