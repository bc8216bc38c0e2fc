"""Knowledge distillation loss (SPEC §4.3, Hinton et al. 2015), pure torch."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def check_distillation_settings(alpha: float, temperature: float, prefix: str = "") -> None:
    """Raise a ``ValueError`` unless ``alpha`` is in [0, 1] and ``temperature`` > 0."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{prefix}alpha must be in [0, 1], got {alpha!r}")
    if not temperature > 0:
        raise ValueError(f"{prefix}temperature must be > 0, got {temperature!r}")


def distillation_term(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``, batch mean, in fp32.

    The ``T^2`` factor keeps the gradient's scale independent of ``T``.
    """
    student = F.log_softmax(student_logits.float() / temperature, dim=1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return temperature**2 * F.kl_div(student, teacher, reduction="batchmean", log_target=True)


def distillation_loss(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, alpha: float, temperature: float
) -> Tensor:
    """The full SPEC §4.3 loss: ``alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE(z_s, y)``, batch mean, fp32."""
    hard = F.cross_entropy(student_logits.float(), targets)
    return alpha * distillation_term(student_logits, teacher_logits, temperature) + (1 - alpha) * hard


def freeze(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode (running BN statistics) with no parameter requiring a gradient."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


class DistillationTerm:
    """A loss term ``alpha * T^2 * KL`` on a frozen teacher's logits for the same inputs.

    Follows the task's loss-term protocol: ``term(ctx)`` returns the scalar, and ``base_weight = 1 - alpha``
    scales the base criterion (cross-entropy). The teacher is moved to the inputs' device and memory format on
    first use and is evaluated under ``torch.no_grad()`` and whatever autocast the caller runs in.

    Args:
        teacher: The frozen teacher model (kept out of the student's module tree).
        alpha: Weight of the distillation term.
        temperature: Softmax temperature T.
    """

    def __init__(self, teacher: nn.Module, alpha: float, temperature: float) -> None:
        check_distillation_settings(alpha, temperature)
        self.teacher = freeze(teacher)
        self.alpha = alpha
        self.temperature = temperature
        self.base_weight = 1.0 - alpha
        self._placement: tuple[torch.device, bool] | None = None

    def teacher_logits(self, inputs: Tensor) -> Tensor:
        """The teacher's logits for ``inputs``, without gradient."""
        self._follow(inputs)
        if self.teacher.training:  # something called .train() on it: keep the running BN statistics frozen
            self.teacher.eval()
        with torch.no_grad():
            return self.teacher(inputs)

    def _follow(self, inputs: Tensor) -> None:
        channels_last = inputs.dim() == 4 and inputs.is_contiguous(memory_format=torch.channels_last)
        placement = (inputs.device, channels_last)
        if placement != self._placement:
            self.teacher.to(inputs.device)
            if channels_last:
                self.teacher.to(memory_format=torch.channels_last)
            self._placement = placement

    def __call__(self, ctx: Any) -> Tensor:
        """``alpha * T^2 * KL`` for a ``LossContext``; zero outside the training stage."""
        if ctx.stage != "train" or self.alpha == 0.0:
            return ctx.logits.new_zeros((), dtype=torch.float32)
        teacher = self.teacher_logits(ctx.inputs)
        return self.alpha * distillation_term(ctx.logits, teacher, self.temperature)
