"""Post-hoc logit adjustment at several tau, for trained runs: is what a model lost a shift of its class prior?

For each run directory (a fit's ``config.yaml`` and ``checkpoints/last.ckpt``) this predicts the whole test set once
on the CPU and scores ``argmax(log p - tau * log prior)`` for every tau given, where ``prior`` is the run's training
class frequencies. tau = 0 is the model as trained (the run's own test metrics); tau = 1 is what
``imbcompress test --config RUN/config.yaml --config configs/remedies/posthoc_logit_adjustment.yaml`` reports for
a model with a linear classifier. Unlike that remedy, which folds the adjustment into the classifier's bias, this
works for any classifier (LDAM-DRW's cosine classifier has no bias) and any tau, negative ones included (a model
already leaning to the tail). Prints one table row per run and tau: accuracy, macro-F1, F1 of the smallest class.

    python3 benchmarks/posthoc_tau_sweep.py RUN [RUN ...] [--taus 0 0.5 1]
"""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

import torch
import yaml
from lightning.pytorch import Trainer

from imbcompress.data import ImbalancedDataModule
from imbcompress.metrics import summarize_confusion
from imbcompress.remedies.losses import log_priors
from imbcompress.study.aggregate import smallest_class_f1
from imbcompress.task import ImbalanceClassifier


def predict_log_probabilities(run: Path) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The run's final model on its test set: log-probabilities [N, K], targets [N] and the training class counts."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    task = ImbalanceClassifier.load_from_checkpoint(run / "checkpoints/last.ckpt", map_location="cpu")
    data = ImbalancedDataModule(**config["data"]["init_args"])
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    with contextlib.redirect_stdout(io.StringIO()):  # the data module's class-count table: not part of the table
        batches = trainer.predict(task, datamodule=data)
    probabilities = torch.cat([batch["probabilities"] for batch in batches])  # type: ignore[index]
    targets = torch.cat([batch["target"] for batch in batches])  # type: ignore[index]
    return probabilities.clamp_min(torch.finfo(torch.float32).tiny).log(), targets, list(data.train_class_counts)


def sweep(log_p: torch.Tensor, targets: torch.Tensor, counts: list[int], taus: list[float]) -> list[dict]:
    """Accuracy, macro-F1 and the smallest class's F1 (fractions) of ``argmax(log_p - tau log prior)`` per tau.

    The prior is the post-hoc remedy's (``log_priors``); the smallest class's F1 is the study report's."""
    classes = log_p.shape[1]
    log_prior = log_priors(counts)
    rows = []
    for tau in taus:
        predictions = (log_p - tau * log_prior).argmax(dim=1)
        confusion = torch.bincount(targets * classes + predictions, minlength=classes**2).reshape(classes, classes)
        results = summarize_confusion(confusion)
        rows.append(
            {
                "tau": tau,
                "accuracy": results["accuracy"],
                "macro_f1": results["macro_f1"],
                "tail_f1": smallest_class_f1(results["per_class"]["f1"], counts),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run directories (config.yaml, checkpoints/last.ckpt)")
    parser.add_argument("--taus", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    args = parser.parse_args()
    for run in args.runs:
        if not (run / "config.yaml").is_file() or not (run / "checkpoints/last.ckpt").is_file():
            parser.error(f"run {str(run)!r} has no config.yaml and checkpoints/last.ckpt")
    print("| run | tau | accuracy | macro-F1 | F1 of the smallest class |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        for row in sweep(*predict_log_probabilities(run), args.taus):
            cells = (100 * row[key] for key in ("accuracy", "macro_f1", "tail_f1"))
            print(f"| {run} | {row['tau']:g} | " + " | ".join(f"{value:.2f}" for value in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
