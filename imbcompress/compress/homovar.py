"""HomoVar loss of ClimbQ+ ([CQ] Sec. 3.2-3.3, SPEC §4.4): class weights from Levene-test size bounds.

Per training batch: z_i = L1 distance of sample i's pooled feature vector from its class's batch mean; the
dataset-level Levene quantities are estimated from the batch (SPEC "Scale:"); Theorem 3.2's bounds
[n_L,k, n_U,k] on each class size follow from W <= F_{1-alpha}(K-1, N-K); the expected size and the distance
d_k = |n_k - n_e,k| give the class-balanced weight w_k = (1 - beta^(1/d_k)) / (1 - beta^(n_k/d_k)), normalised to
sum to K. The derivation of the bounds is in docs/climbq.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import scipy.stats
import torch
import torch.nn.functional as F
from torch import Tensor

LossMode = Literal["official", "paper"]
BELOW, INSIDE, ABOVE, UNDEFINED = -1, 0, 1, 2
POSITION_NAMES = {BELOW: "below", INSIDE: "inside", ABOVE: "above", UNDEFINED: "undefined"}


def levene_w(values: Tensor, labels: Tensor) -> Tensor:
    """Textbook Levene statistic (center = mean) of ``values`` grouped by ``labels`` (equals scipy's).

    Args:
        values: Observations, shape [N].
        labels: Group of each observation, shape [N]; every group id present counts as a group.
    """
    spreads = [(group - group.mean()).abs() for group in (values[labels == g] for g in torch.unique(labels))]
    counts = torch.tensor([len(z) for z in spreads], dtype=values.dtype)
    means = torch.stack([z.mean() for z in spreads])
    within = torch.stack([((z - z.mean()) ** 2).sum() for z in spreads]).sum()
    return levene_w_from_stats(counts, means, within)


def levene_w_from_stats(counts: Tensor, means: Tensor, within_ss: Tensor) -> Tensor:
    """W = [(N-K)/(K-1)] sum_k n_k (zbar_k - zbar)^2 / SSW from per-class sizes, means of z and SSW."""
    num_classes, total = counts.numel(), counts.sum()
    grand_mean = (counts * means).sum() / total
    between = (counts * (means - grand_mean) ** 2).sum()
    return (total - num_classes) / (num_classes - 1) * between / within_ss


def levene_w_class_size(counts: Tensor, means: Tensor, within_ss: Tensor, k: int, size: float) -> Tensor:
    """W as a function of class ``k``'s size alone (Theorem 3.2): zbar_k = S_k / size, everything else fixed.

    Equals :func:`levene_w_from_stats` at ``size = counts[k]``; equals the F critical value at the bounds.
    """
    num_classes, total = counts.numel(), counts.sum()
    grand_mean = (counts * means).sum() / total
    between = counts * (means - grand_mean) ** 2
    class_sum = counts[k] * means[k]
    between_k = size * (class_sum / size - grand_mean) ** 2
    mean_within = within_ss / (total - num_classes)
    return (between.sum() - between[k] + between_k) / (num_classes - 1) / mean_within


def f_critical(alpha: float, num_classes: int, total: float) -> float:
    """F_{1-alpha}(K-1, N-K), the Levene test's rejection threshold."""
    return float(scipy.stats.f.ppf(1.0 - alpha, num_classes - 1, total - num_classes))


def size_bounds(counts: Tensor, means: Tensor, within_ss: Tensor, f_crit: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class bounds (n_L, n_U) on the class size that keep W <= F, and whether they exist.

    With zbar_k = S_k / n: n (S_k/n - zbar)^2 <= C_k, C_k = (K-1) F MSW - sum_{j != k} n_j (zbar_j - zbar)^2,
    i.e. zbar^2 n^2 - (2 S_k zbar + C_k) n + S_k^2 <= 0. Real non-negative roots exist iff C_k >= 0 and zbar > 0.

    Returns:
        lower, upper (NaN where undefined) and a bool mask of the classes with real bounds.
    """
    num_classes, total = counts.numel(), counts.sum()
    grand_mean = (counts * means).sum() / total
    between = counts * (means - grand_mean) ** 2
    mean_within = within_ss / (total - num_classes)
    slack = (num_classes - 1) * f_crit * mean_within - (between.sum() - between)
    class_sum = counts * means
    a = grand_mean**2
    b = 2.0 * class_sum * grand_mean + slack
    discriminant = b**2 - 4.0 * a * class_sum**2
    real = (slack >= 0) & (a > 0) & (discriminant >= 0)
    root = discriminant.clamp_min(0.0).sqrt()
    nan = torch.full_like(b, float("nan"))
    lower = torch.where(real, (b - root) / (2.0 * a), nan)
    upper = torch.where(real, (b + root) / (2.0 * a), nan)
    return lower, upper, real


def class_positions(counts: Tensor, lower: Tensor, upper: Tensor, real: Tensor) -> Tensor:
    """BELOW / INSIDE / ABOVE the bounds, or UNDEFINED (no real bounds), per class."""
    positions = torch.full(counts.shape, INSIDE, dtype=torch.long)
    positions[real & (counts < lower)] = BELOW
    positions[real & (counts > upper)] = ABOVE
    positions[~real] = UNDEFINED
    return positions


def expected_sizes(counts: Tensor, lower: Tensor, upper: Tensor, real: Tensor) -> Tensor:
    """n_e,k: the nearest bound outside [n_L, n_U], else n_k - 1 (also n_k - 1 without real bounds, so d_k = 1)."""
    expected = counts - 1.0
    expected = torch.where(real & (counts < lower), lower, expected)
    return torch.where(real & (counts > upper), upper, expected)


def class_balanced_weights(counts: Tensor, distance: Tensor, beta: float) -> Tensor:
    """w_k = (1 - beta^(1/d_k)) / (1 - beta^(n_k/d_k)), normalised to sum to K (d_k = 1: Cui et al.)."""
    weights = (1.0 - beta ** (1.0 / distance)) / (1.0 - beta ** (counts / distance))
    return weights / weights.sum() * counts.numel()


def homovar_weights(
    counts: Tensor, means: Tensor, within_ss: Tensor, alpha: float, beta: float
) -> tuple[Tensor, Tensor]:
    """Class weights and positions (BELOW/INSIDE/ABOVE/UNDEFINED) from dataset-level Levene statistics.

    Args:
        counts: Training-set class sizes n_k, float64 [K].
        means: Mean of z per class, [K].
        within_ss: Within-class sum of squares of z (scalar).
        alpha: Significance level of the Levene test.
        beta: Class-balanced weighting factor in (0, 1).
    """
    f_crit = f_critical(alpha, counts.numel(), float(counts.sum()))
    lower, upper, real = size_bounds(counts, means, within_ss, f_crit)
    expected = expected_sizes(counts, lower, upper, real)
    distance = (counts - expected).abs()
    return class_balanced_weights(counts, distance, beta), class_positions(counts, lower, upper, real)


def feature_spread(features: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class batch count, mean and (population) variance of z_i = ||f_i - mean of f over i's class||_1."""
    features = features.detach().to(torch.float64)
    counts = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    centers = torch.zeros(num_classes, features.shape[1], dtype=torch.float64, device=features.device)
    centers = centers.index_add(0, labels, features) / counts.clamp_min(1.0).unsqueeze(1)
    z = (features - centers[labels]).abs().sum(1)
    means = torch.zeros_like(counts).index_add(0, labels, z) / counts.clamp_min(1.0)
    squares = torch.zeros_like(counts).index_add(0, labels, (z - means[labels]) ** 2)
    return counts, means, squares / counts.clamp_min(1.0)


def weighted_loss(logits: Tensor, targets: Tensor, class_weights: Tensor, mode: LossMode) -> Tensor:
    """``paper``: mean_i w_{y_i} CE_i; ``official``: softmax + BCE weighted by w_{y_i}, mean over batch x classes."""
    logits = logits.float()
    sample_weights = class_weights.to(logits.device, logits.dtype)[targets]
    if mode == "paper":
        return (sample_weights * F.cross_entropy(logits, targets, reduction="none")).mean()
    one_hot = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
    weight = sample_weights.unsqueeze(1).expand_as(one_hot)
    return F.binary_cross_entropy(logits.softmax(dim=1), one_hot, weight=weight)


@dataclass
class _Estimates:
    """Last batch estimate of each class's mean and variance of z (NaN until the class had >= 2 samples)."""

    means: Tensor
    variances: Tensor

    @property
    def known(self) -> Tensor:
        return ~torch.isnan(self.means)


class HomoVarLoss:
    """ClimbQ+'s HomoVar loss, usable as the task's criterion (``loss(ctx) -> scalar``).

    Estimates are updated from training batches only; other stages get plain cross-entropy so evaluation losses do
    not depend on the training history. Not an ``nn.Module``: it holds no trainable or checkpointed state.

    Args:
        class_counts: Training-set size of every class (from the data module).
        mode: "official" (softmax + weighted BCE) or "paper" (weighted cross-entropy).
        alpha: Significance level of the Levene test, in (0, 1).
        beta: Class-balanced weighting factor, in (0, 1).
    """

    def __init__(
        self, class_counts: Sequence[int], mode: LossMode = "official", alpha: float = 0.05, beta: float = 0.999
    ) -> None:
        _validate(class_counts, mode, alpha, beta)
        self.class_counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
        self.mode = mode
        self.alpha = alpha
        self.beta = beta
        num_classes = self.class_counts.numel()
        nan = torch.full((num_classes,), float("nan"), dtype=torch.float64)
        self.estimates = _Estimates(nan.clone(), nan.clone())
        self.last_weights = torch.ones(num_classes, dtype=torch.float64)
        self.last_positions = torch.full((num_classes,), UNDEFINED, dtype=torch.long)

    @property
    def num_classes(self) -> int:
        return self.class_counts.numel()

    def position_counts(self) -> dict[str, int]:
        """How many classes were below / inside / above their bounds (or had none) at the last update."""
        return {name: int((self.last_positions == code).sum()) for code, name in POSITION_NAMES.items()}

    def update(self, features: Tensor, targets: Tensor) -> Tensor:
        """Update the estimates from one batch and return the new class weights (no gradient)."""
        with torch.no_grad():
            batch_counts, means, variances = feature_spread(features, targets, self.num_classes)
            seen = (batch_counts >= 2).cpu()  # one sample has z = 0 by construction: no spread estimate
            self.estimates.means[seen] = means.cpu()[seen]
            self.estimates.variances[seen] = variances.cpu()[seen]
            self.last_weights, self.last_positions = self._weights()
        return self.last_weights

    def _weights(self) -> tuple[Tensor, Tensor]:
        known = self.estimates.known
        weights = torch.ones(self.num_classes, dtype=torch.float64)
        positions = torch.full((self.num_classes,), UNDEFINED, dtype=torch.long)
        if int(known.sum()) < 2:
            return weights, positions
        counts = self.class_counts[known]
        within_ss = (counts * self.estimates.variances[known]).sum()
        if within_ss <= 0:
            return weights, positions
        weights[known], positions[known] = homovar_weights(
            counts, self.estimates.means[known], within_ss, self.alpha, self.beta
        )
        return weights, positions

    def __call__(self, ctx: Any) -> Tensor:
        if ctx.stage not in ("train", "fit"):
            return F.cross_entropy(ctx.logits.float(), ctx.targets)
        weights = self.update(ctx.features, ctx.targets)
        return weighted_loss(ctx.logits, ctx.targets, weights, self.mode)


def _validate(class_counts: Sequence[int], mode: str, alpha: float, beta: float) -> None:
    counts = list(class_counts)
    if len(counts) < 2 or any(int(c) < 1 for c in counts):
        raise ValueError(f"HomoVar class_counts must list >= 2 classes with >= 1 sample each, got {counts}")
    check_settings(mode, alpha, beta, prefix="HomoVar ")


def check_settings(mode: str, alpha: float, beta: float, prefix: str) -> None:
    """Validate ``mode``, ``alpha`` and ``beta``; ``prefix`` names the setting in the message (e.g. "ClimbQ.")."""
    if mode not in ("official", "paper"):
        raise ValueError(f"{prefix}mode must be 'official' or 'paper', got {mode!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"{prefix}alpha must be in (0, 1), got {alpha!r}")
    if not 0.0 < beta < 1.0:
        raise ValueError(f"{prefix}beta must be in (0, 1), got {beta!r}")
