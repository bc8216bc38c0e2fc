"""Loss remedies against their formulas written out by hand (Cui 2019, Cao 2019, Menon 2021)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from imbcompress.remedies.losses import (
    ClassBalancedCriterion,
    LDAMCriterion,
    LogitAdjustedCriterion,
    class_balanced_weights,
    ldam_margins,
    log_priors,
    weighted_focal_loss,
)
from imbcompress.remedies.posthoc import logit_adjusted_bias, tau_normalized_weight

COUNTS = [5000, 1200, 300, 50]


def _batch(seed: int = 0, n: int = 12, k: int = 4) -> SimpleNamespace:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=generator) * 3
    targets = torch.arange(n) % k
    return SimpleNamespace(logits=logits, targets=targets)


def test_class_balanced_weights_equal_cuis_formula() -> None:
    beta = 0.999
    raw = [(1 - beta) / (1 - beta**n) for n in COUNTS]
    expected = torch.tensor([w / sum(raw) * len(COUNTS) for w in raw])
    weights = class_balanced_weights(COUNTS, beta)
    torch.testing.assert_close(weights, expected.float())
    assert weights.sum().item() == pytest.approx(4.0)
    assert torch.all(weights[1:] > weights[:-1])  # rarer classes weigh more
    assert torch.equal(class_balanced_weights(COUNTS, 0.0), torch.ones(4))  # beta = 0: no re-weighting
    torch.testing.assert_close(class_balanced_weights([70] * 4, 0.9999), torch.ones(4))  # balanced data: all 1


def test_ldam_margins_are_proportional_to_n_to_the_minus_quarter_with_largest_max_margin() -> None:
    margins = ldam_margins(COUNTS, 0.5)
    constant = 0.5 / 50**-0.25
    torch.testing.assert_close(margins, torch.tensor([constant * n**-0.25 for n in COUNTS]))
    assert margins.max().item() == pytest.approx(0.5) and margins.argmax().item() == 3


@pytest.mark.parametrize("reweighting", [False, True])
def test_ldam_loss_equals_cross_entropy_on_scaled_margin_shifted_logits(reweighting: bool) -> None:
    batch = _batch()
    margins, weights = ldam_margins(COUNTS, 0.5), class_balanced_weights(COUNTS, 0.9999)
    criterion = LDAMCriterion(margins, scale=30.0, drw_weights=weights)
    criterion.reweighting = reweighting
    shifted = batch.logits.clone()
    for i, y in enumerate(batch.targets.tolist()):
        shifted[i, y] -= margins[y]  # z - m_y e_y
    expected = F.cross_entropy(30.0 * shifted, batch.targets, weight=weights if reweighting else None)
    torch.testing.assert_close(criterion(batch), expected)


def test_logit_adjusted_loss_equals_cross_entropy_on_prior_shifted_logits() -> None:
    batch = _batch(1)
    prior = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
    expected = F.cross_entropy(batch.logits + 0.7 * prior.log().float(), batch.targets)
    torch.testing.assert_close(LogitAdjustedCriterion(log_priors(COUNTS), tau=0.7)(batch), expected)


def test_remedies_on_balanced_data_are_cross_entropy() -> None:
    batch = _batch(2)
    plain = F.cross_entropy(batch.logits, batch.targets)
    balanced = [64] * 4
    torch.testing.assert_close(LogitAdjustedCriterion(log_priors(balanced), tau=1.0)(batch), plain)  # constant shift
    torch.testing.assert_close(ClassBalancedCriterion(class_balanced_weights(balanced, 0.9999))(batch), plain)


def test_focal_and_weighted_losses_by_hand() -> None:
    batch = _batch(3)
    p_y = batch.logits.softmax(1).gather(1, batch.targets[:, None]).squeeze(1)
    focal = -((1 - p_y) ** 2) * p_y.log()
    torch.testing.assert_close(weighted_focal_loss(batch.logits, batch.targets, gamma=2.0), focal.mean())
    weights = torch.tensor([0.1, 0.5, 1.0, 2.4])
    w = weights[batch.targets]
    torch.testing.assert_close(ClassBalancedCriterion(weights, gamma=2.0)(batch), (w * focal).sum() / w.sum())
    torch.testing.assert_close(
        ClassBalancedCriterion(weights)(batch), F.cross_entropy(batch.logits, batch.targets, weight=weights)
    )


def test_losses_are_computed_in_fp32_from_bf16_logits() -> None:
    batch = _batch(4)
    low = SimpleNamespace(logits=batch.logits.bfloat16(), targets=batch.targets)
    upcast = SimpleNamespace(logits=low.logits.float(), targets=batch.targets)
    criteria = [
        ClassBalancedCriterion(class_balanced_weights(COUNTS, 0.99), gamma=1.0),
        LDAMCriterion(ldam_margins(COUNTS, 0.5), 30.0),
        LogitAdjustedCriterion(log_priors(COUNTS), 1.0),
    ]
    for criterion in criteria:
        value = criterion(low)
        assert value.dtype == torch.float32
        assert torch.equal(value, criterion(upcast))


def test_class_counts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="class_counts must list >= 2 classes with >= 1 training sample"):
        class_balanced_weights([10, 0, 3], 0.9)


def test_posthoc_arithmetic() -> None:
    weight = torch.randn(4, 6, generator=torch.Generator().manual_seed(5))
    assert torch.equal(tau_normalized_weight(weight, 0.0), weight)  # tau = 0: identity
    torch.testing.assert_close(tau_normalized_weight(weight, 1.0).norm(dim=1), torch.ones(4))
    torch.testing.assert_close(tau_normalized_weight(weight, 0.5), weight / weight.norm(dim=1, keepdim=True).sqrt())
    bias = torch.zeros(4)
    prior = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
    torch.testing.assert_close(logit_adjusted_bias(bias, log_priors(COUNTS), 1.0), -prior.log().float())
