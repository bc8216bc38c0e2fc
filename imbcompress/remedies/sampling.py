"""Class-level sampling distributions for re-sampling remedies (Kang et al. 2020; Cao et al. 2019 for deferral).

A sampler draws a class k with probability p_k and then one of its n_k images uniformly, i.e. image i of class y_i
with probability p_{y_i} / n_{y_i}. With p_k proportional to n_k^q: q = 1 is instance-balanced (every image
equally likely), q = 0 class-balanced, q = 1/2 square-root. ``progressive`` moves linearly from instance- to
class-balanced over training, ``deferred`` is instance-balanced until a switch epoch and class-balanced after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor

Sampler = Literal["instance_balanced", "class_balanced", "square_root", "progressive", "deferred"]
SAMPLERS: tuple[str, ...] = get_args(Sampler)


def power_probabilities(class_counts: Sequence[int], power: float) -> Tensor:
    """p_k = n_k^q / sum_j n_j^q (float64 [K])."""
    weights = torch.as_tensor([float(c) for c in class_counts], dtype=torch.float64) ** power
    return weights / weights.sum()


def check_sampler(sampler: str, switch_epoch: int | None, max_epochs: int | None = None) -> None:
    """Validate a sampler setting; ``max_epochs`` (when known and > 0) bounds the switch epoch.

    Raises:
        ValueError: naming the setting, the value and what is allowed.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {sampler!r}")
    if sampler != "deferred":
        if switch_epoch is not None:
            raise ValueError(
                f"sampler_switch_epoch is only used by sampler='deferred'; got {switch_epoch} with {sampler!r}"
            )
        return
    if isinstance(switch_epoch, bool) or not isinstance(switch_epoch, int) or switch_epoch < 1:
        raise ValueError(f"sampler='deferred' needs sampler_switch_epoch, an epoch >= 1; got {switch_epoch!r}")
    if max_epochs is not None and max_epochs > 0 and switch_epoch >= max_epochs:
        raise ValueError(
            f"sampler_switch_epoch={switch_epoch} is past the end of training (trainer.max_epochs={max_epochs}); "
            f"allowed: 1..{max_epochs - 1}"
        )


def check_sampler_for_fit(sampler: str, switch_epoch: int | None, max_epochs: int | None) -> None:
    """:func:`check_sampler` once the trainer's ``max_epochs`` is known (None: the run is bounded by steps only)."""
    check_sampler(sampler, switch_epoch, max_epochs)
    if sampler == "progressive" and max_epochs is None:
        raise ValueError(
            "sampler='progressive' interpolates over the epochs of training and needs trainer.max_epochs >= 1; "
            "this run sets none (max_steps only)"
        )


def class_probabilities(
    sampler: str,
    class_counts: Sequence[int],
    epoch: int,
    max_epochs: int | None = None,
    switch_epoch: int | None = None,
) -> Tensor | None:
    """p_k of ``sampler`` at ``epoch`` (0-based), or None where the epoch is an instance-balanced permutation.

    Args:
        sampler: One of :data:`SAMPLERS`.
        class_counts: Training images per class n_k.
        epoch: The current epoch.
        max_epochs: Total epochs T (``progressive``: p = (1 - t/T) p_instance + (t/T) p_class).
        switch_epoch: First class-balanced epoch of ``deferred``.
    """
    if sampler == "instance_balanced" or (sampler == "deferred" and epoch < (switch_epoch or 0)):
        return None
    if sampler in ("class_balanced", "deferred"):
        return power_probabilities(class_counts, 0.0)
    if sampler == "square_root":
        return power_probabilities(class_counts, 0.5)
    if sampler == "progressive":
        if max_epochs is None or max_epochs < 1:
            raise ValueError(
                f"sampler='progressive' needs trainer.max_epochs >= 1 (it interpolates over epochs), got {max_epochs}"
            )
        progress = min(epoch, max_epochs) / max_epochs
        return (1 - progress) * power_probabilities(class_counts, 1.0) + progress * power_probabilities(
            class_counts, 0.0
        )
    raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {sampler!r}")


def sample_with_replacement(
    labels: Tensor, probabilities: Tensor, num_samples: int, generator: torch.Generator
) -> Tensor:
    """``num_samples`` indices into ``labels`` (CPU int64), image i drawn with probability p_{y_i} / n_{y_i}."""
    counts = torch.bincount(labels, minlength=probabilities.numel()).double()
    per_image = (probabilities / counts.clamp(min=1))[labels]
    return torch.multinomial(per_image, num_samples, replacement=True, generator=generator)
