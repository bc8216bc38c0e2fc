"""LDAM loss with deferred re-weighting (Cao et al. 2019) as a loss remedy callback."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from imbcompress.callbacks.loss_remedy import LossRemedy, check_fraction_of_one, check_positive
from imbcompress.models.heads import classifier_kind
from imbcompress.remedies.losses import LDAMCriterion, class_balanced_weights, ldam_margins

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch import Tensor

    from imbcompress.task import LossContext

DEFAULT_DRW_FRACTION = 0.8  # LDAM-DRW's schedule: re-weight from epoch 160 of 200


class LDAMDRWLoss(LossRemedy):
    """LDAM-DRW: cross-entropy on s (z - m_y e_y) with m_k proportional to n_k^(-1/4), class-balanced weights from a
    chosen epoch on (Cao et al. 2019). Replaces the task's base loss (docs/remedies.md).

    The margins use the data module's training class counts, scaled so the smallest class's margin is
    ``max_margin``. Deferred re-weighting (DRW) switches the class-balanced weights (effective number, ``drw_beta``)
    on at the first step of the start epoch and not before; the epoch comes from the trainer, so a resumed run
    switches at the same step.

    Args:
        max_margin: The largest margin (of the smallest class), > 0.
        scale: Logit scale s > 0. Cao et al.'s s = 30 goes with a cosine (normalised) classifier,
            ``model.init_args.classifier: cosine`` (set by configs/remedies/ldam_drw.yaml); on a plain linear
            classifier s multiplies unnormalised logits, and the fit warns.
        drw_epoch: First re-weighted epoch (0-based, 0..max_epochs-1; 0 re-weights from the start).
        drw_fraction: First re-weighted epoch as a fraction of ``trainer.max_epochs``, in [0, 1) (the epoch is
            ``int(drw_fraction * max_epochs)``). Give at most one of ``drw_epoch`` and ``drw_fraction``; with neither,
            0.8 (LDAM-DRW's epoch 160 of 200).
        drw_beta: Effective-number factor of the DRW class weights, in [0, 1).
    """

    method = "ldam_drw"

    def __init__(
        self,
        max_margin: float = 0.5,
        scale: float = 30.0,
        drw_epoch: int | None = None,
        drw_fraction: float | None = None,
        drw_beta: float = 0.9999,
    ) -> None:
        super().__init__()
        check_positive("LDAMDRWLoss.max_margin", max_margin)
        check_positive("LDAMDRWLoss.scale", scale)
        check_fraction_of_one("LDAMDRWLoss.drw_beta", drw_beta)
        if drw_epoch is not None and drw_fraction is not None:
            raise ValueError(
                f"give at most one of LDAMDRWLoss.drw_epoch ({drw_epoch}) and LDAMDRWLoss.drw_fraction ({drw_fraction})"
            )
        if drw_epoch is not None and (isinstance(drw_epoch, bool) or not isinstance(drw_epoch, int) or drw_epoch < 0):
            raise ValueError(f"LDAMDRWLoss.drw_epoch must be an epoch >= 0, got {drw_epoch!r}")
        if drw_fraction is not None:
            check_fraction_of_one("LDAMDRWLoss.drw_fraction", drw_fraction)
        self.max_margin = max_margin
        self.scale = scale
        self.drw_epoch = drw_epoch
        self.drw_fraction = drw_fraction
        self.drw_beta = drw_beta
        self.drw_start_epoch: int | None = None
        self.classifier: str | None = None  # the model's classifier kind, found at setup
        self._announced = False

    def settings(self) -> dict[str, Any]:
        return {
            "max_margin": self.max_margin,
            "scale": self.scale,
            "drw_epoch": self.drw_epoch,
            "drw_fraction": self.drw_fraction,
            "drw_beta": self.drw_beta,
        }

    def resolved(self) -> dict[str, Any]:
        return {"drw_start_epoch": self.drw_start_epoch, "classifier": self.classifier}

    def load_resolved(self, resolved: dict[str, Any]) -> None:
        if resolved.get("drw_start_epoch") is not None:
            self.drw_start_epoch = int(resolved["drw_start_epoch"])

    def start_epoch(self, max_epochs: int | None) -> int:
        """The first re-weighted epoch for a run of ``max_epochs`` epochs (None: bounded by steps only)."""
        if self.drw_epoch is not None:
            if max_epochs is not None and self.drw_epoch >= max_epochs:
                raise ValueError(
                    f"LDAMDRWLoss.drw_epoch={self.drw_epoch} is past the end of training (trainer.max_epochs="
                    f"{max_epochs}); allowed: 0..{max_epochs - 1}"
                )
            return self.drw_epoch
        if max_epochs is None:
            raise ValueError(
                "LDAMDRWLoss.drw_fraction needs trainer.max_epochs >= 1 to name an epoch; this run is bounded by "
                "max_steps only: set LDAMDRWLoss.drw_epoch instead"
            )
        fraction = DEFAULT_DRW_FRACTION if self.drw_fraction is None else self.drw_fraction
        return int(fraction * max_epochs)

    def build_criterion(self, trainer: Trainer, class_counts: list[int]) -> Callable[[LossContext], Tensor]:
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
        self.drw_start_epoch = self.start_epoch(max_epochs)
        self.classifier = classifier_kind(getattr(trainer.lightning_module, "model", None))
        if self.classifier == "linear" and self.scale > 1:
            rank_zero_warn(
                f"LDAMDRWLoss.scale={self.scale} multiplies the unnormalised logits of a plain linear classifier; "
                "Cao et al.'s s = 30 and margins are for cosine logits: set model.init_args.classifier=cosine "
                "(configs/remedies/ldam_drw.yaml does)"
            )
        return LDAMCriterion(
            ldam_margins(class_counts, self.max_margin),
            self.scale,
            class_balanced_weights(class_counts, self.drw_beta),
        )

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        assert isinstance(self.criterion, LDAMCriterion) and self.drw_start_epoch is not None
        self.criterion.reweighting = trainer.current_epoch >= self.drw_start_epoch
        if self.criterion.reweighting and not self._announced:
            self._announced = True
            rank_zero_info(f"LDAM-DRW: class-balanced re-weighting on from epoch {trainer.current_epoch}")
