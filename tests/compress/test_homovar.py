"""HomoVar loss (ClimbQ+): Levene statistic, size bounds, class weights and the loss itself."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from torch import Tensor

from imbcompress.compress.homovar import (
    ABOVE,
    BELOW,
    INSIDE,
    UNDEFINED,
    HomoVarLoss,
    class_balanced_weights,
    f_critical,
    feature_spread,
    homovar_weights,
    levene_w,
    levene_w_class_size,
    levene_w_from_stats,
    size_bounds,
    weighted_loss,
)

F64 = torch.float64


def _stats(counts: list[float], means: list[float], variance: float = 0.3) -> tuple[Tensor, Tensor, Tensor]:
    n = torch.tensor(counts, dtype=F64)
    return n, torch.tensor(means, dtype=F64), (n * variance).sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_levene_w_equals_scipy(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    sizes = torch.randint(3, 40, (5,), generator=generator).tolist()
    groups = [torch.randn(n, generator=generator, dtype=F64) * (1 + k) + k for k, n in enumerate(sizes)]
    values = torch.cat(groups)
    labels = torch.cat([torch.full((n,), k) for k, n in enumerate(sizes)])
    expected = scipy.stats.levene(*[g.numpy() for g in groups], center="mean").statistic
    assert levene_w(values, labels).item() == pytest.approx(expected, rel=1e-10)


def test_class_size_form_agrees_with_w_at_the_actual_size() -> None:
    counts, means, within = _stats([500, 200, 50, 10, 5], [1.02, 1.0, 1.01, 0.9, 1.3])
    full = levene_w_from_stats(counts, means, within)
    for k in range(5):
        assert levene_w_class_size(counts, means, within, k, float(counts[k])).item() == pytest.approx(full.item())


def test_w_at_the_bounds_equals_the_f_critical_value_and_is_below_it_inside() -> None:
    counts, means, within = _stats([500, 200, 50, 10, 5], [1.02, 1.0, 1.01, 0.9, 1.3])
    f_crit = f_critical(0.05, 5, float(counts.sum()))
    assert f_crit == pytest.approx(scipy.stats.f.ppf(0.95, 4, 760))
    lower, upper, real = size_bounds(counts, means, within, f_crit)
    assert real.all() and (lower < upper).all()
    for k in range(5):
        w_of = lambda n, k=k: levene_w_class_size(counts, means, within, k, n).item()  # noqa: E731
        assert w_of(float(lower[k])) == pytest.approx(f_crit, rel=1e-9)
        assert w_of(float(upper[k])) == pytest.approx(f_crit, rel=1e-9)
        assert w_of(float(lower[k] + upper[k]) / 2) < f_crit
        assert w_of(float(lower[k]) * 0.9) > f_crit and w_of(float(upper[k]) * 1.1) > f_crit


def test_no_real_bounds_when_w_exceeds_f_whatever_one_class_does() -> None:
    counts, means, within = _stats([5000, 2000, 500, 100, 20], [3.0, 2.5, 2.0, 1.5, 1.0])
    lower, _, real = size_bounds(counts, means, within, f_critical(0.05, 5, float(counts.sum())))
    assert not real.any() and torch.isnan(lower).all()
    weights, positions = homovar_weights(counts, means, within, 0.05, 0.999)
    assert (positions == UNDEFINED).all()
    cui = (1 - 0.999) / (1 - 0.999**counts)  # d_k = 1
    torch.testing.assert_close(weights, cui / cui.sum() * 5)


def test_weights_equal_class_balanced_weights_when_every_class_is_inside() -> None:
    counts, means, within = _stats([500, 200, 50, 10, 5], [1.02, 1.0, 1.01, 0.9, 1.3])
    weights, positions = homovar_weights(counts, means, within, 0.05, 0.999)
    assert (positions == INSIDE).all()
    effective_number = (1 - 0.999**counts) / (1 - 0.999)  # Cui et al. 2019
    cui = 1 / effective_number
    torch.testing.assert_close(weights, cui / cui.sum() * 5)
    assert weights.sum().item() == pytest.approx(5.0) and not weights.requires_grad


@pytest.mark.parametrize(
    ("sizes", "means", "k", "position"),
    [
        ([40, 300, 300, 300], [1.5, 1.0, 1.0, 1.0], 0, BELOW),  # too few samples for its spread
        ([1000, 1000, 1000, 1000, 1500], [1.0, 1.0, 1.0, 1.0, 0.85], 4, ABOVE),  # too many
    ],
)
def test_a_class_outside_its_bounds_uses_the_distance_to_the_nearest_bound(
    sizes: list[float], means: list[float], k: int, position: int
) -> None:
    counts, class_means, within = _stats(sizes, means, variance=1.0 if position == ABOVE else 0.5)
    f_crit = f_critical(0.05, len(sizes), float(counts.sum()))
    lower, upper, real = size_bounds(counts, class_means, within, f_crit)
    weights, positions = homovar_weights(counts, class_means, within, 0.05, 0.999)
    assert positions[k] == position and real[k]
    bound = lower[k] if position == BELOW else upper[k]
    distance = torch.ones_like(counts)  # the other classes have no real bounds here: d = 1
    distance[k] = (counts[k] - bound).abs()
    assert distance[k] > 1  # far enough out that the weight differs from Cui et al.'s
    torch.testing.assert_close(weights, class_balanced_weights(counts, distance, 0.999))
    assert not torch.allclose(weights, class_balanced_weights(counts, torch.ones_like(counts), 0.999))


def test_feature_spread_is_l1_distance_from_the_class_batch_mean() -> None:
    features = torch.tensor([[0.0, 0.0], [2.0, 2.0], [1.0, 3.0], [5.0, 5.0]])
    counts, means, variances = feature_spread(features, torch.tensor([0, 0, 1, 0]), 3)
    z0 = torch.tensor([14 / 3, 2 / 3, 16 / 3], dtype=F64)  # class 0 center (7/3, 7/3)
    torch.testing.assert_close(counts, torch.tensor([3.0, 1.0, 0.0], dtype=F64))
    torch.testing.assert_close(means[0], z0.mean())
    torch.testing.assert_close(variances[0], z0.var(unbiased=False))
    assert means[1] == 0 and variances[2] == 0


def _ctx(features: Tensor, targets: Tensor, logits: Tensor, stage: str = "train") -> SimpleNamespace:
    return SimpleNamespace(features=features, targets=targets, logits=logits, stage=stage)


def test_loss_modes_match_their_definitions() -> None:
    logits = torch.randn(6, 3, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 0, 1, 1])
    weights = torch.tensor([0.5, 1.0, 1.5], dtype=F64)
    sample = weights.float()[targets]
    paper = (sample * F.cross_entropy(logits, targets, reduction="none")).mean()
    torch.testing.assert_close(weighted_loss(logits, targets, weights, "paper"), paper)
    p, one_hot = logits.softmax(1), F.one_hot(targets, 3).float()
    bce = -(one_hot * p.log() + (1 - one_hot) * (1 - p).log()) * sample[:, None]
    torch.testing.assert_close(weighted_loss(logits, targets, weights, "official"), bce.mean())
    weighted_loss(logits, targets, weights, "official").backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_absent_classes_keep_their_estimate_and_weigh_one_until_they_have_one() -> None:
    loss = HomoVarLoss([500, 200, 50, 10], mode="paper")
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(8, 4, generator=generator, requires_grad=True)
    logits = torch.randn(8, 4, requires_grad=True)
    first = torch.tensor([0, 0, 0, 1, 1, 1, 2, 3])  # classes 2 and 3 have a single sample: no estimate
    value = loss(_ctx(features, first, logits))
    assert value.requires_grad and not loss.last_weights.requires_grad
    assert loss.last_weights[2:].tolist() == [1.0, 1.0]
    assert loss.last_weights[:2].sum().item() == pytest.approx(2.0)
    assert loss.position_counts()["undefined"] >= 2
    estimate_of_1 = loss.estimates.means[1].item()
    second = torch.tensor([0, 0, 0, 0, 2, 2, 3, 3])  # class 1 absent now
    loss(_ctx(features * 2, second, logits))
    assert loss.estimates.means[1].item() == estimate_of_1
    assert not torch.isnan(loss.estimates.means).any()
    assert loss.last_weights.sum().item() == pytest.approx(4.0)


def test_evaluation_stages_get_plain_cross_entropy_and_do_not_update() -> None:
    loss = HomoVarLoss([50, 10])
    logits, targets = torch.randn(4, 2), torch.tensor([0, 0, 1, 1])
    value = loss(_ctx(torch.randn(4, 3), targets, logits, stage="eval"))
    torch.testing.assert_close(value, F.cross_entropy(logits, targets))
    assert torch.isnan(loss.estimates.means).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(class_counts=[10]), "class_counts"),
        (dict(class_counts=[10, 0]), "class_counts"),
        (dict(mode="other"), "mode"),
        (dict(alpha=0.0), "alpha"),
        (dict(beta=1.0), "beta"),
    ],
)
def test_bad_settings_are_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HomoVarLoss(**({"class_counts": [10, 5]} | kwargs))
