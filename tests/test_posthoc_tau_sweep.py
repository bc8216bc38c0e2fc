"""benchmarks/posthoc_tau_sweep.py: tau 0 is the run's own test result, tau 1 is the post-hoc remedy's."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import CONFIGS, QUIET, fake_data_args, fit
from fakedata import make_fake_cifar

from imbcompress.cli import run_cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from posthoc_tau_sweep import predict_log_probabilities, sweep  # noqa: E402


def test_tau_moves_the_decision_by_the_log_prior_as_by_hand() -> None:
    counts = [90, 10]
    # at tau 1 sample 0 scores log(0.6/0.9) < log(0.4/0.1) and flips to class 1; sample 1 scores log(0.95/0.9) >
    # log(0.05/0.1) and stays
    log_p = torch.tensor([[math.log(0.6), math.log(0.4)], [math.log(0.95), math.log(0.05)]])
    targets = torch.tensor([1, 0])
    rows = sweep(log_p, targets, counts, [0.0, 1.0])
    assert rows[0]["accuracy"] == 0.5 and rows[0]["tail_f1"] == 0.0  # tau 0: both predicted class 0
    assert rows[1]["accuracy"] == 1.0 and rows[1]["tail_f1"] == 1.0


def test_tau_0_and_1_reproduce_the_run_and_the_posthoc_remedy(tmp_path: Path) -> None:
    root = make_fake_cifar(tmp_path / "data", train_per_class=12, test_per_class=4, size=16)
    data = ["--data=imbcompress.data.ImbalancedDataModule", *fake_data_args(root), "--data.init_args.batch_size=40"]
    data += ["--data.init_args.profile=exponential", "--data.init_args.imbalance_ratio=4"]
    base = [f"--config={CONFIGS / 'trainer/cpu.yaml'}", f"--config={CONFIGS / 'model/resnet20.yaml'}", *data]
    run = tmp_path / "run"
    trained = fit([*base, "--trainer.max_epochs=1", "--trainer.limit_val_batches=0"], run)["test"]
    args = ["test", f"--config={run / 'config.yaml'}", f"--config={CONFIGS / 'remedies/posthoc_logit_adjustment.yaml'}"]
    args += [f"--ckpt_path={run / 'checkpoints/last.ckpt'}", f"--run_dir={tmp_path / 'posthoc'}", *QUIET]
    run_cli(args)
    adjusted = json.loads((tmp_path / "posthoc/metrics.json").read_text())["test"]
    rows = sweep(*predict_log_probabilities(run), [0.0, 1.0])
    for row, expected in zip(rows, (trained, adjusted), strict=True):
        assert row["accuracy"] == pytest.approx(expected["accuracy"]) and row["macro_f1"] == pytest.approx(
            expected["macro_f1"]
        )
