"""Metrics from a confusion matrix against hand-computed values (SPEC §3)."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from imbcompress.metrics import per_class_scores, summarize_confusion


def test_macro_f1_hand_computed_with_a_class_never_predicted() -> None:
    # true \ predicted
    confusion = torch.tensor(
        [
            [3, 1, 0],  # class 0: 4 samples, 3 right
            [1, 2, 0],  # class 1: 3 samples, 2 right
            [2, 1, 0],  # class 2: never predicted -> P = R = F1 = 0
        ]
    )
    scores = per_class_scores(confusion)
    # class 0: P = 3/6, R = 3/4 -> F1 = 2*0.5*0.75/1.25 = 0.6
    # class 1: P = 2/4, R = 2/3 -> F1 = 2*(1/2)(2/3)/(7/6) = 4/7
    assert scores["precision"].tolist() == pytest.approx([0.5, 0.5, 0.0])
    assert scores["recall"].tolist() == pytest.approx([0.75, 2 / 3, 0.0])
    assert scores["f1"].tolist() == pytest.approx([0.6, 4 / 7, 0.0])
    summary = summarize_confusion(confusion)
    assert summary["macro_f1"] == pytest.approx((0.6 + 4 / 7 + 0.0) / 3)
    assert summary["accuracy"] == pytest.approx(5 / 10)
    assert summary["balanced_accuracy"] == pytest.approx((0.75 + 2 / 3 + 0.0) / 3)
    assert summary["num_samples"] == 10
    assert summary["confusion_matrix"] == confusion.tolist()


def test_f1_is_the_standard_form_not_the_papers_inverted_one() -> None:
    confusion = torch.tensor([[9, 1], [4, 6]])
    precision, recall = 9 / 13, 9 / 10
    expected = 2 * precision * recall / (precision + recall)
    assert summarize_confusion(confusion)["per_class"]["f1"][0] == pytest.approx(expected)


def test_accumulated_over_batches_equals_whole_set() -> None:
    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 4, (257,), generator=generator)
    preds = torch.where(
        torch.rand(257, generator=generator) < 0.6, targets, torch.randint(0, 4, (257,), generator=generator)
    )
    state = MulticlassConfusionMatrix(4)
    for start in range(0, 257, 50):  # uneven last batch
        state.update(preds[start : start + 50], targets[start : start + 50])
    whole = MulticlassConfusionMatrix(4)(preds, targets)
    assert torch.equal(state.compute(), whole)
    per_batch_mean = (
        sum(
            summarize_confusion(MulticlassConfusionMatrix(4)(preds[s : s + 50], targets[s : s + 50]))["macro_f1"]
            for s in range(0, 257, 50)
        )
        / 6
    )
    # The whole-set value is what we report; an average of batch values is a different (wrong) number.
    assert summarize_confusion(state.compute())["macro_f1"] != pytest.approx(per_batch_mean, abs=1e-6)
