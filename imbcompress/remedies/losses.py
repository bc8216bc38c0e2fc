"""Re-weighted, margin and logit-adjusted losses for long-tailed training (docs/remedies.md).

Every criterion is ``criterion(ctx) -> scalar`` over a batch context with ``logits`` and ``targets`` (the task's
``LossContext``), computed in fp32 whatever the autocast dtype of the logits. Class statistics come from the
training-set class counts ``n_k``; weighted losses use PyTorch's weighted mean ``sum_i w_{y_i} l_i / sum_i w_{y_i}``
(as the LDAM-DRW code does), so the normalisation of the weights does not change the loss scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from imbcompress.compress.homovar import class_balanced_weights as _effective_number_weights


def _counts(class_counts: Sequence[int]) -> Tensor:
    counts = torch.as_tensor([int(c) for c in class_counts], dtype=torch.float64)
    if counts.numel() < 2 or bool((counts < 1).any()):
        raise ValueError(
            f"class_counts must list >= 2 classes with >= 1 training sample each, got {list(class_counts)}"
        )
    return counts


def class_balanced_weights(class_counts: Sequence[int], beta: float) -> Tensor:
    """Cui et al. (2019): w_k = (1 - beta) / (1 - beta^n_k), normalised so that sum_k w_k = K (float32 [K]).

    ``beta = 0`` gives all ones; ``beta -> 1`` approaches inverse class frequency.
    """
    counts = _counts(class_counts)
    if beta == 0:
        return torch.ones(counts.numel())
    return _effective_number_weights(counts, torch.ones_like(counts), beta).float()


def log_priors(class_counts: Sequence[int]) -> Tensor:
    """log(pi_k) with pi_k = n_k / N, the training-set class prior (float32 [K])."""
    counts = _counts(class_counts)
    return (counts / counts.sum()).log().float()


def ldam_margins(class_counts: Sequence[int], max_margin: float) -> Tensor:
    """Cao et al. (2019): m_k = C / n_k^(1/4), C chosen so that the largest (the smallest class's) is ``max_margin``."""
    inverse_root = _counts(class_counts) ** -0.25
    return (inverse_root * (max_margin / inverse_root.max())).float()


def weighted_focal_loss(logits: Tensor, targets: Tensor, weights: Tensor | None = None, gamma: float = 0.0) -> Tensor:
    """Softmax focal loss -(1 - p_y)^gamma log p_y (cross-entropy at gamma = 0), weighted mean over the batch."""
    log_p = F.log_softmax(logits.float(), dim=1).gather(1, targets[:, None]).squeeze(1)
    losses = -log_p if gamma == 0 else -((1.0 - log_p.exp()).clamp(min=0.0) ** gamma) * log_p
    if weights is None:
        return losses.mean()
    sample_weights = weights.to(losses.device)[targets]
    return (sample_weights * losses).sum() / sample_weights.sum()


class ClassBalancedCriterion:
    """Class-weighted cross-entropy or focal loss; with ``weights=None`` plain focal loss (or cross-entropy).

    Args:
        weights: Per-class weights [K] (e.g. :func:`class_balanced_weights`), or None.
        gamma: Focal exponent (0: cross-entropy).
    """

    def __init__(self, weights: Tensor | None, gamma: float = 0.0) -> None:
        self.weights = weights
        self.gamma = gamma

    def __call__(self, ctx: Any) -> Tensor:
        return weighted_focal_loss(ctx.logits, ctx.targets, self.weights, self.gamma)


class LDAMCriterion:
    """LDAM loss: cross-entropy on s (z - m_y e_y), optionally class-weighted (the DRW phase).

    Args:
        margins: Per-class margins m_k [K] (:func:`ldam_margins`).
        scale: The logit scale s (also :attr:`logit_scale`: the task reads it to tell that this loss is meant for
            the cosine classifier's logits in [-1, 1]).
        drw_weights: Class weights used once :attr:`reweighting` is switched on (deferred re-weighting).
    """

    def __init__(self, margins: Tensor, scale: float, drw_weights: Tensor | None = None) -> None:
        self.margins = margins
        self.scale = self.logit_scale = scale
        self.drw_weights = drw_weights
        self.reweighting = False

    def __call__(self, ctx: Any) -> Tensor:
        logits = ctx.logits.float()
        margin = self.margins.to(logits.device)[ctx.targets]
        shifted = logits.scatter_add(1, ctx.targets[:, None], -margin[:, None])
        weights = self.drw_weights if self.reweighting else None
        return weighted_focal_loss(self.scale * shifted, ctx.targets, weights)


class LogitAdjustedCriterion:
    """Logit-adjusted cross-entropy (Menon et al. 2021): CE on z + tau log(pi); tau = 1 is balanced softmax.

    Args:
        log_prior: log(pi_k) [K] (:func:`log_priors`).
        tau: Adjustment strength (>= 0).
    """

    def __init__(self, log_prior: Tensor, tau: float) -> None:
        self.log_prior = log_prior
        self.tau = tau

    def __call__(self, ctx: Any) -> Tensor:
        logits = ctx.logits.float()
        return F.cross_entropy(logits + self.tau * self.log_prior.to(logits.device), ctx.targets)
