"""HomoVar loss (ClimbQ+): Levene statistic, size bounds, class weights and the loss itself."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from torch import Tensor

from imbcompress.compress.homovar import (
    UNDEFINED,
    HomoVarLoss,
    class_balanced_weights,
    f_critical,
    levene_w,
    levene_w_class_size,
    levene_w_from_stats,
    official_weights,
    paper_weights,
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

    torch.testing.assert_close(weighted_loss(logits, targets, weights, "class_balanced"), paper)


# Fixed batches: 14 pooled (post-ReLU, so some zero) feature vectors of 4 classes; training-set sizes COUNTS.
COUNTS = [400.0, 100.0, 30.0, 8.0]
LABELS = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 3]
BATCH_A = [[0, 4, 2], [0, 3, 1], [1, 0, 5], [1, 5, 0], [3, 4, 4], [5, 1, 4], [4, 3, 4],
           [3, 1, 1], [5, 1, 2], [1, 2, 0], [4, 5, 2], [1, 5, 2], [1, 4, 2], [0, 4, 4]]  # fmt: skip
BATCH_B = [[3, 1, 1], [0, 3, 3], [4, 1, 3], [5, 5, 1], [0, 0, 0], [5, 4, 0], [2, 3, 4],
           [4, 1, 1], [2, 3, 0], [5, 2, 5], [5, 2, 5], [2, 4, 5], [4, 3, 5], [0, 5, 0]]  # fmt: skip
# Every class spreads alike: the batch test accepts and every class is inside its bounds.
BATCH_C = [[1, 2, 3], [3, 2, 1], [2, 2, 2], [1, 2, 3], [3, 2, 1], [2, 2, 2], [1, 2, 3],
           [3, 2, 1], [2, 2, 2], [1, 2, 3], [3, 2, 1], [2, 2, 2], [1, 1, 1], [2, 2, 2]]  # fmt: skip
NAMES = {-1: "below", 0: "inside", 1: "above", 2: "undefined"}


def _normalised(betas: list[float], counts: list[float]) -> list[float]:
    raw = [(1 - b) / (1 - b**n) for b, n in zip(betas, counts)]
    return [w / sum(raw) * len(raw) for w in raw]


def _official_by_hand(x: list[list[float]], y: list[int], n: list[float], alpha: float, beta: float):
    """The official lt_loss.py formulas re-derived from SPEC §4.4 with plain loops (batch sums over n_k, ...)."""
    size, k_all, dims, total = len(x), len(n), len(x[0]), sum(n)
    mean = [[sum(x[i][d] for i in range(size) if y[i] == k) / n[k] for d in range(dims)] for k in range(k_all)]
    z = [sum(abs(x[i][d] - mean[y[i]][d]) for d in range(dims) if x[i][d] != 0) for i in range(size)]
    s = [sum(z[i] for i in range(size) if y[i] == k) for k in range(k_all)]
    zk = [s[k] / n[k] for k in range(k_all)]
    zbar = sum(zk) / k_all
    msw = sum((z[i] - zk[y[i]]) ** 2 for i in range(size) if z[i] != 0) / (total - k_all)
    f = scipy.stats.f.ppf(1 - alpha, k_all - 1, total - k_all)
    between = [n[k] * (zk[k] - zbar) ** 2 for k in range(k_all)]
    betas, positions = [], []
    for k in range(k_all):
        c = (k_all - 1) * f * msw - (sum(between) - between[k])
        disc = (2 * zbar * s[k] + c) ** 2 - 4 * zbar**2 * s[k] ** 2
        if disc < 0:
            betas.append(beta), positions.append("undefined")
            continue
        low = abs(2 * zbar * s[k] + c - math.sqrt(disc)) / (2 * zbar**2)
        high = abs(2 * zbar * s[k] + c + math.sqrt(disc)) / (2 * zbar**2)
        if n[k] < low:
            betas.append(beta ** (1 / (low - n[k]))), positions.append("below")
        elif n[k] > high:
            betas.append(beta ** (1 / (n[k] - high))), positions.append("above")
        else:
            betas.append(beta), positions.append("inside")
    return _normalised(betas, n), positions


def _paper_by_hand(x: list[list[float]], y: list[int], n: list[float], alpha: float, beta: float):
    """Levene's test on the batch's classes with >= 2 samples, Theorem 3.2 bounds, distances in dataset units."""
    b = [y.count(k) for k in range(len(n))]
    kept = [k for k in range(len(n)) if b[k] >= 2]
    center = {k: [sum(x[i][d] for i in range(len(x)) if y[i] == k) / b[k] for d in range(len(x[0]))] for k in kept}
    z = {k: [] for k in kept}
    for xi, k in zip(x, y):
        if k in kept:
            z[k].append(sum(abs(v - c) for v, c in zip(xi, center[k])) * math.sqrt(b[k] / (b[k] - 1)))
    size, groups = sum(b[k] for k in kept), len(kept)
    zk = {k: sum(z[k]) / b[k] for k in kept}
    zbar = sum(b[k] * zk[k] for k in kept) / size
    msw = sum((v - zk[k]) ** 2 for k in kept for v in z[k]) / (size - groups)
    f = scipy.stats.f.ppf(1 - alpha, groups - 1, size - groups)
    distance, positions = [1.0] * len(n), ["undefined"] * len(n)
    for k in kept:
        c = (groups - 1) * f * msw - sum(b[j] * (zk[j] - zbar) ** 2 for j in kept if j != k)
        s = sum(z[k])
        disc = (2 * zbar * s + c) ** 2 - 4 * zbar**2 * s**2
        if c < 0 or disc < 0:
            continue
        low = (2 * zbar * s + c - math.sqrt(disc)) / (2 * zbar**2)
        high = (2 * zbar * s + c + math.sqrt(disc)) / (2 * zbar**2)
        if b[k] < low:
            expected, positions[k] = low, "below"
        elif b[k] > high:
            expected, positions[k] = high, "above"
        else:
            expected, positions[k] = b[k] - 1, "inside"
        distance[k] = abs(b[k] - expected) * n[k] / b[k]
    return _normalised([beta ** (1 / d) for d in distance], n), positions


@pytest.mark.parametrize(
    ("batch", "official", "paper"),
    [
        (BATCH_A, {"above", "below"}, {"below", "above", "undefined"}),
        (BATCH_B, {"above", "below", "undefined"}, {"below", "above", "undefined"}),
        (BATCH_C, {"above", "below", "undefined"}, {"inside", "undefined"}),
    ],
)
def test_both_modes_equal_their_hand_computation_on_a_fixed_batch(batch, official: set, paper: set) -> None:
    x, y, n = torch.tensor(batch, dtype=F64), torch.tensor(LABELS), torch.tensor(COUNTS, dtype=F64)
    for mode, by_hand, expected_positions in (
        ("official", _official_by_hand, official),
        ("paper", _paper_by_hand, paper),
    ):
        loss = HomoVarLoss([int(c) for c in COUNTS], mode=mode)
        weights = loss.weights(x, y)
        hand_weights, hand_positions = by_hand(batch, LABELS, COUNTS, 0.05, 0.999)
        torch.testing.assert_close(weights, torch.tensor(hand_weights, dtype=F64), rtol=1e-10, atol=0)
        assert [NAMES[int(p)] for p in loss.last_positions] == hand_positions
        assert set(hand_positions) == expected_positions  # the batch exercises these branches
        assert sum(loss.position_counts().values()) == 4
        assert not torch.allclose(weights, class_balanced_weights(n, torch.ones(4, dtype=F64), 0.999))
    official_w = official_weights(x, y, n, f_critical(0.05, 4, 538.0), 0.999)[0]
    assert not torch.allclose(official_w, paper_weights(x, y, n, 0.05, 0.999)[0])


def test_paper_bounds_put_the_batch_levene_statistic_at_f() -> None:
    # Where the batch's classes (>= 2 samples, corrected z) have real bounds, W(b_L) = W(b_U) = F.
    x, y = torch.tensor(BATCH_C, dtype=F64), torch.tensor(LABELS)
    kept = [0, 1, 2]
    sizes = torch.tensor([6.0, 4.0, 3.0], dtype=F64)
    groups = [x[y == k] for k in kept]
    z = [(g - g.mean(0)).abs().sum(1) * math.sqrt(len(g) / (len(g) - 1)) for g in groups]
    means = torch.stack([v.mean() for v in z])
    within = sum(((v - v.mean()) ** 2).sum() for v in z)
    f_crit = scipy.stats.f.ppf(0.95, 2, 10)
    lower, upper, real = size_bounds(sizes, means, within, f_crit)
    assert real.all()
    for k in range(3):
        for bound in (lower[k], upper[k]):
            assert levene_w_class_size(sizes, means, within, k, float(bound)).item() == pytest.approx(f_crit)
    assert (levene_w_from_stats(sizes, means, within) < f_crit).item()


def test_paper_mode_with_fewer_than_two_testable_classes_gives_class_balanced_weights() -> None:
    n = torch.tensor(COUNTS, dtype=F64)
    weights, positions = paper_weights(torch.rand(5, 3, dtype=F64), torch.tensor([0, 0, 1, 2, 3]), n, 0.05, 0.999)
    torch.testing.assert_close(weights, class_balanced_weights(n, torch.ones_like(n), 0.999))
    assert (positions == UNDEFINED).all()


def test_official_mode_without_real_roots_keeps_beta() -> None:
    # All-zero features (a dead ReLU): every z is 0, so zbar = 0 and the roots are not finite: beta_k = beta.
    n = torch.tensor(COUNTS, dtype=F64)
    weights, positions = official_weights(torch.zeros(14, 3, dtype=F64), torch.tensor(LABELS), n, 2.6, 0.999)
    torch.testing.assert_close(weights, class_balanced_weights(n, torch.ones_like(n), 0.999))
    assert (positions == UNDEFINED).all()


def test_class_balanced_mode_is_cui_weighted_cross_entropy() -> None:
    loss = HomoVarLoss([500, 50], mode="class_balanced")
    logits, targets = torch.randn(4, 2), torch.tensor([0, 0, 1, 1])
    cui = torch.tensor([(1 - 0.999) / (1 - 0.999**500), (1 - 0.999) / (1 - 0.999**50)])
    cui = cui / cui.sum() * 2
    expected = (cui[targets] * F.cross_entropy(logits, targets, reduction="none")).mean()
    torch.testing.assert_close(loss(_ctx(torch.randn(4, 3), targets, logits)), expected)


@pytest.mark.parametrize("mode", ["official", "paper"])
def test_weights_depend_on_the_current_batch_alone(mode: str) -> None:
    # Stateless: the weights of a batch are the same whatever batches came before (so a resume is exact).
    x, y = torch.tensor(BATCH_A, dtype=F64), torch.tensor(LABELS)
    fresh = HomoVarLoss([int(c) for c in COUNTS], mode=mode).weights(x, y)
    used = HomoVarLoss([int(c) for c in COUNTS], mode=mode)
    used.weights(torch.tensor(BATCH_B, dtype=F64), y)
    used.weights(torch.rand(14, 3, dtype=F64), y.flip(0))
    assert torch.equal(used.weights(x, y), fresh)
    fresh_float = HomoVarLoss([int(c) for c in COUNTS], mode=mode).weights(x.float(), y)
    assert torch.equal(used.weights(x.float(), y), fresh_float)


def test_loss_is_differentiable_and_weights_are_not() -> None:
    features = torch.tensor(BATCH_A, dtype=torch.float32, requires_grad=True)
    logits = torch.randn(14, 4, requires_grad=True)
    loss = HomoVarLoss([int(c) for c in COUNTS])
    value = loss(_ctx(features, torch.tensor(LABELS), logits))
    value.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0 and features.grad is None
    assert not loss.last_weights.requires_grad and loss.last_weights.sum().item() == pytest.approx(4.0)


def test_evaluation_stages_get_plain_cross_entropy() -> None:
    loss = HomoVarLoss([50, 10])
    logits, targets = torch.randn(4, 2), torch.tensor([0, 0, 1, 1])
    value = loss(_ctx(torch.randn(4, 3), targets, logits, stage="eval"))
    torch.testing.assert_close(value, F.cross_entropy(logits, targets))
    assert loss.position_counts()["undefined"] == 2  # nothing computed


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(class_counts=[10]), "class_counts"),
        (dict(class_counts=[10, 0]), "class_counts"),
        (dict(mode="other"), r"HomoVar mode must be one of \('official', 'paper', 'class_balanced'\), got 'other'"),
        (dict(alpha=0.0), r"HomoVar alpha must be a number in \(0, 1\), got 0.0"),
        (dict(beta=1.0), "HomoVar beta"),
        (dict(beta=float("nan")), "HomoVar beta"),
    ],
)
def test_bad_settings_are_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HomoVarLoss(**({"class_counts": [10, 5]} | kwargs))
