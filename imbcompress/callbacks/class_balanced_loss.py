"""Class-balanced loss (Cui et al. 2019) as a loss remedy callback."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning.pytorch import Trainer

from imbcompress.callbacks.loss_remedy import LossRemedy, check_fraction_of_one, check_non_negative
from imbcompress.remedies.losses import ClassBalancedCriterion, class_balanced_weights

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch import Tensor

    from imbcompress.task import LossContext


class ClassBalancedLoss(LossRemedy):
    """Class-balanced cross-entropy or focal loss: class k weighted by (1 - beta) / (1 - beta^n_k) (Cui et al. 2019).

    The weights use the training-set class counts n_k of the data module and are normalised to sum to K; the loss is
    their weighted mean over the batch. Replaces the task's base loss (docs/remedies.md).

    Args:
        beta: Effective-number factor in [0, 1): 0 gives equal weights, values near 1 approach inverse frequency
            (Cui et al. use 0.9999 on CIFAR-10-LT).
        gamma: Focal exponent >= 0 (0: class-balanced cross-entropy, > 0: class-balanced focal loss).
    """

    method = "class_balanced"

    def __init__(self, beta: float = 0.9999, gamma: float = 0.0) -> None:
        super().__init__()
        check_fraction_of_one("ClassBalancedLoss.beta", beta)
        check_non_negative("ClassBalancedLoss.gamma", gamma)
        self.beta = beta
        self.gamma = gamma

    def settings(self) -> dict[str, Any]:
        return {"beta": self.beta, "gamma": self.gamma}

    def build_criterion(self, trainer: Trainer, class_counts: list[int]) -> Callable[[LossContext], Tensor]:
        return ClassBalancedCriterion(class_balanced_weights(class_counts, self.beta), self.gamma)
