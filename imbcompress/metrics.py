"""Classification metrics from a confusion matrix (SPEC §3), as pure functions.

Every metric is derived from one accumulated confusion matrix, so it is computed once from the whole evaluation
set (never an average of per-batch values) and is exact under DDP, where the matrices of all ranks are summed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """Elementwise division that gives 0 where the denominator is 0."""
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1e-12), torch.zeros_like(numerator))


def per_class_scores(confusion: Tensor) -> dict[str, Tensor]:
    """Per-class precision, recall and F1 from ``confusion[true, predicted]``.

    F1_c = 2 P_c R_c / (P_c + R_c), and 0 when P_c + R_c = 0 (a class never predicted correctly).
    """
    confusion = confusion.double()
    true_positive = confusion.diagonal()
    predicted = confusion.sum(dim=0)
    actual = confusion.sum(dim=1)
    precision = _safe_divide(true_positive, predicted)
    recall = _safe_divide(true_positive, actual)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1}


def summarize_confusion(confusion: Tensor) -> dict[str, Any]:
    """All SPEC §3 metrics as plain Python values (JSON-ready).

    Balanced accuracy is the mean per-class recall over classes present in the evaluation set.
    """
    confusion = confusion.detach().cpu().long()
    scores = per_class_scores(confusion)
    total = int(confusion.sum())
    present = confusion.sum(dim=1) > 0
    accuracy = float(confusion.diagonal().sum()) / total if total else 0.0
    return {
        "accuracy": accuracy,
        "macro_f1": float(scores["f1"].mean()),
        "balanced_accuracy": float(scores["recall"][present].mean()) if bool(present.any()) else 0.0,
        "num_samples": total,
        "per_class": {name: [float(v) for v in values] for name, values in scores.items()},
        "confusion_matrix": confusion.tolist(),
    }
