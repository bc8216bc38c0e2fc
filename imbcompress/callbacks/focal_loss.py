"""Focal loss (Lin et al. 2017) as a loss remedy callback."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning.pytorch import Trainer

from imbcompress.callbacks.loss_remedy import LossRemedy, check_positive
from imbcompress.remedies.losses import ClassBalancedCriterion

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch import Tensor

    from imbcompress.task import LossContext


class FocalLoss(LossRemedy):
    """Softmax focal loss -(1 - p_y)^gamma log p_y, unweighted (for the class-balanced focal loss use
    ``ClassBalancedLoss`` with ``gamma > 0``). Replaces the task's base loss (docs/remedies.md).

    Args:
        gamma: Focal exponent > 0 (down-weights well-classified samples; Lin et al. use 2).
    """

    method = "focal"

    def __init__(self, gamma: float = 2.0) -> None:
        super().__init__()
        check_positive("FocalLoss.gamma", gamma)
        self.gamma = gamma

    def settings(self) -> dict[str, Any]:
        return {"gamma": self.gamma}

    def build_criterion(self, trainer: Trainer, class_counts: list[int]) -> Callable[[LossContext], Tensor]:
        return ClassBalancedCriterion(None, self.gamma)
