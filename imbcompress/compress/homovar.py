"""HomoVar loss of ClimbQ+ ([CQ] Sec. 3.2-3.3, SPEC §4.4): class weights from Levene-test bounds on class sizes.

Stateless: every training batch's weights come from that batch alone (no estimates are carried between batches).
Two modes, plus an ablation:

- ``official``: the arithmetic of tinganchen/ClimbQ ``utils/lt_loss.py`` with its quirks (batch sums over dataset
  counts, an unweighted grand mean, F with dataset degrees of freedom); softmax + weighted binary cross-entropy.
- ``paper``: Levene's test on the batch (classes with >= 2 samples, small-sample-corrected spreads), Theorem 3.2's
  bounds on the batch class size, distances mapped back to dataset units; weighted cross-entropy.
- ``class_balanced``: not HomoVar. Cui et al.'s class-balanced weights (every distance 1) on cross-entropy, the
  ablation that tells whether HomoVar adds anything over plain re-weighting.

Weights are w_k = (1 - beta^(1/d_k)) / (1 - beta^(n_k/d_k)), normalised to sum to K, without gradient. The
derivation of the bounds is in docs/climbq.md.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, Literal

import scipy.stats
import torch
import torch.nn.functional as F
from torch import Tensor

LossMode = Literal["official", "paper", "class_balanced"]
LOSS_MODES: tuple[str, ...] = ("official", "paper", "class_balanced")
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


@functools.lru_cache(maxsize=4096)
def f_critical(alpha: float, num_classes: int, total: float) -> float:
    """F_{1-alpha}(K-1, N-K), the Levene test's rejection threshold (cached: batches repeat the same sizes)."""
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
    """BELOW / INSIDE / ABOVE the bounds, or UNDEFINED (no real bounds), per class (BELOW wins a tie)."""
    below = real & (counts < lower)
    above = real & (counts > upper) & ~below
    positions = torch.where(below, BELOW, torch.where(above, ABOVE, INSIDE))
    return torch.where(real, positions, UNDEFINED)


def class_balanced_weights(counts: Tensor, distance: Tensor, beta: float) -> Tensor:
    """w_k = (1 - beta^(1/d_k)) / (1 - beta^(n_k/d_k)), normalised to sum to K (d_k = 1: Cui et al.)."""
    weights = (1.0 - beta ** (1.0 / distance)) / (1.0 - beta ** (counts / distance))
    return weights / weights.sum() * counts.numel()


def official_weights(
    features: Tensor, labels: Tensor, class_counts: Tensor, f_crit: float, beta: float
) -> tuple[Tensor, Tensor]:
    """Class weights and positions by the arithmetic of the official ``lt_loss.py`` (SPEC §4.4 ``official``).

    m_k = (batch sum of x over class k) / n_k; z_i = sum_d |x_id - m_{y_i,d}| 1[x_id != 0]; zbar_k = S_k / n_k;
    zbar = unweighted mean of zbar_k over all K classes; MSW over the samples with z_i != 0, divided by N - K;
    roots |2 zbar S_k + C_k -/+ sqrt(D_k)| / (2 zbar^2); d_k the distance to the crossed bound, else 1.

    Args:
        features: Pooled features x_i, [B, D] (float64, no gradient).
        labels: Class of each sample, [B].
        class_counts: Training-set class sizes n_k, float64 [K] on the features' device.
        f_crit: F_{1-alpha}(K-1, N-K) with the dataset's K and N.
        beta: Class-balanced weighting factor.
    """
    counts, num_classes = class_counts, class_counts.numel()
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype, device=features.device)
    class_mean = sums.index_add(0, labels, features) / counts.unsqueeze(1)
    z = ((features - class_mean[labels]).abs() * (features != 0)).sum(1)
    spread_sum = torch.zeros_like(counts).index_add(0, labels, z)
    spread_mean = spread_sum / counts
    grand_mean = spread_mean.mean()
    mean_within = ((z - spread_mean[labels]) ** 2 * (z != 0)).sum() / (counts.sum() - num_classes)
    between = counts * (spread_mean - grand_mean) ** 2
    slack = (num_classes - 1) * f_crit * mean_within - (between.sum() - between)
    half_b = 2.0 * grand_mean * spread_sum + slack
    root = (half_b**2 - 4.0 * grand_mean**2 * spread_sum**2).sqrt()  # NaN when negative: no bounds
    lower = (half_b - root).abs() / (2.0 * grand_mean**2)
    upper = (half_b + root).abs() / (2.0 * grand_mean**2)
    real = torch.isfinite(lower) & torch.isfinite(upper)
    positions = class_positions(counts, lower, upper, real)
    distance = torch.where(positions == BELOW, lower - counts, torch.where(positions == ABOVE, counts - upper, 1.0))
    return class_balanced_weights(counts, distance, beta), positions


def paper_weights(
    features: Tensor, labels: Tensor, class_counts: Tensor, alpha: float, beta: float
) -> tuple[Tensor, Tensor]:
    """Class weights and positions from Levene's test on the batch (SPEC §4.4 ``paper``).

    Only classes with b_k >= 2 batch samples take part: z_i = ||x_i - xbar_{y_i}||_1 sqrt(b_k / (b_k - 1)), the
    n-weighted grand mean, F_{1-alpha}(K_b - 1, B - K_b); Theorem 3.2's bounds on b_k give b_e,k (the nearest bound
    outside them, b_k - 1 inside) and d_k = |b_k - b_e,k| n_k / b_k. Other classes, and all when fewer than two
    classes take part or the bounds are not real, get d_k = 1 and position UNDEFINED.

    Args:
        features: Pooled features x_i, [B, D] (float64, no gradient).
        labels: Class of each sample, [B].
        class_counts: Training-set class sizes n_k, float64 [K] on the features' device.
        alpha: Significance level of the test.
        beta: Class-balanced weighting factor.
    """
    num_classes = class_counts.numel()
    batch_counts = torch.bincount(labels, minlength=num_classes).to(features.dtype)
    usable = batch_counts >= 2
    distance = torch.ones_like(class_counts)
    positions = torch.full((num_classes,), UNDEFINED, dtype=torch.long, device=features.device)
    taking_part = int(usable.sum())
    if taking_part < 2:
        return class_balanced_weights(class_counts, distance, beta), positions
    sizes = batch_counts.clamp_min(1.0)
    centers = torch.zeros(num_classes, features.shape[1], dtype=features.dtype, device=features.device)
    centers = centers.index_add(0, labels, features) / sizes.unsqueeze(1)
    correction = (sizes / (sizes - 1.0).clamp_min(1.0)).sqrt()
    z = (features - centers[labels]).abs().sum(1) * correction[labels]
    spread_mean = torch.zeros_like(sizes).index_add(0, labels, z) / sizes
    within = torch.zeros_like(sizes).index_add(0, labels, (z - spread_mean[labels]) ** 2)
    b = batch_counts[usable]
    f_crit = f_critical(alpha, taking_part, float(b.sum()))
    lower, upper, real = size_bounds(b, spread_mean[usable], within[usable].sum(), f_crit)
    class_position = class_positions(b, lower, upper, real)
    expected = torch.where(class_position == BELOW, lower, torch.where(class_position == ABOVE, upper, b - 1.0))
    in_dataset_units = (b - expected).abs() * class_counts[usable] / b
    distance[usable] = torch.where(real, in_dataset_units, 1.0)
    positions[usable] = class_position
    return class_balanced_weights(class_counts, distance, beta), positions


def weighted_loss(logits: Tensor, targets: Tensor, class_weights: Tensor, mode: LossMode) -> Tensor:
    """``official``: softmax + BCE weighted by w_{y_i}, mean over batch x classes; otherwise mean_i w_{y_i} CE_i."""
    logits = logits.float()
    sample_weights = class_weights.to(logits.device, logits.dtype)[targets]
    if mode != "official":
        return (sample_weights * F.cross_entropy(logits, targets, reduction="none")).mean()
    one_hot = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
    weight = sample_weights.unsqueeze(1).expand_as(one_hot)
    return F.binary_cross_entropy(logits.softmax(dim=1), one_hot, weight=weight)


class HomoVarLoss:
    """ClimbQ+'s HomoVar loss, usable as the task's criterion (``loss(ctx) -> scalar``).

    Weights are recomputed from every training batch alone; other stages get plain cross-entropy so evaluation
    losses do not depend on the batch. Not an ``nn.Module``: it holds no trainable or checkpointed state, so an
    interrupted fit resumes exactly. ``last_weights`` and ``last_positions`` keep the latest batch's result for
    logging only.

    Args:
        class_counts: Training-set size of every class (from the data module).
        mode: "official" (the published code), "paper" (Levene's test on the batch) or "class_balanced" (the
            ablation: Cui et al.'s weights on cross-entropy, no test).
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
        self._official_f = f_critical(alpha, num_classes, float(self.class_counts.sum()))
        self._balanced = class_balanced_weights(self.class_counts, torch.ones_like(self.class_counts), beta)
        self._device_counts: dict[torch.device, Tensor] = {}
        self.last_weights = torch.ones(num_classes, dtype=torch.float64)
        self.last_positions = torch.full((num_classes,), UNDEFINED, dtype=torch.long)

    @property
    def num_classes(self) -> int:
        return self.class_counts.numel()

    def position_counts(self) -> dict[str, int]:
        """How many classes were below / inside / above their bounds (or had none) in the last batch."""
        return {name: int((self.last_positions == code).sum()) for code, name in POSITION_NAMES.items()}

    def weights(self, features: Tensor, targets: Tensor) -> Tensor:
        """The class weights of one batch (no gradient); also kept, with the positions, for logging."""
        if self.mode == "class_balanced":
            self.last_weights = self._balanced
            return self._balanced
        with torch.no_grad():
            x = features.detach().to(torch.float64)
            counts = self._counts_on(x.device)
            if self.mode == "official":
                weights, positions = official_weights(x, targets, counts, self._official_f, self.beta)
            else:
                weights, positions = paper_weights(x, targets, counts, self.alpha, self.beta)
        self.last_weights, self.last_positions = weights.cpu(), positions.cpu()
        return weights

    def _counts_on(self, device: torch.device) -> Tensor:
        if device not in self._device_counts:
            self._device_counts[device] = self.class_counts.to(device)
        return self._device_counts[device]

    def __call__(self, ctx: Any) -> Tensor:
        if ctx.stage not in ("train", "fit"):
            return F.cross_entropy(ctx.logits.float(), ctx.targets)
        return weighted_loss(ctx.logits, ctx.targets, self.weights(ctx.features, ctx.targets), self.mode)


def _validate(class_counts: Sequence[int], mode: str, alpha: float, beta: float) -> None:
    counts = list(class_counts)
    if len(counts) < 2 or any(int(c) < 1 for c in counts):
        raise ValueError(f"HomoVar class_counts must list >= 2 classes with >= 1 sample each, got {counts}")
    check_settings(mode, alpha, beta, prefix="HomoVar ")


def check_settings(mode: str, alpha: float, beta: float, prefix: str, mode_name: str = "mode") -> None:
    """Validate the loss ``mode``, ``alpha`` and ``beta``; ``prefix`` + ``mode_name`` name the setting in messages."""
    if mode not in LOSS_MODES:
        raise ValueError(f"{prefix}{mode_name} must be one of {LOSS_MODES}, got {mode!r}")
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 < value < 1.0):
            raise ValueError(f"{prefix}{name} must be a number in (0, 1), got {value!r}")
