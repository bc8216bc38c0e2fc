"""Logit-adjusted loss (Menon et al. 2021; balanced softmax, Ren et al. 2020) as a loss remedy callback."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning.pytorch import Trainer

from imbcompress.callbacks.loss_remedy import LossRemedy, check_non_negative
from imbcompress.remedies.losses import LogitAdjustedCriterion, log_priors

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch import Tensor

    from imbcompress.task import LossContext


class LogitAdjustedLoss(LossRemedy):
    """Cross-entropy on z + tau log(pi), pi_k = n_k / N the training prior (Menon et al. 2021).

    tau = 1 is the balanced softmax of Ren et al. (2020). The model's own logits z (what is tested) then estimate
    the balanced posterior. On balanced data the adjustment is a constant shift: plain cross-entropy. Replaces the
    task's base loss (docs/remedies.md).

    Args:
        tau: Adjustment strength >= 0 (0: plain cross-entropy).
    """

    method = "logit_adjusted"

    def __init__(self, tau: float = 1.0) -> None:
        super().__init__()
        check_non_negative("LogitAdjustedLoss.tau", tau)
        self.tau = tau

    def settings(self) -> dict[str, Any]:
        return {"tau": self.tau}

    def build_criterion(self, trainer: Trainer, class_counts: list[int]) -> Callable[[LossContext], Tensor]:
        return LogitAdjustedCriterion(log_priors(class_counts), self.tau)
