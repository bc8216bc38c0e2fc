"""Base of the loss remedies: one callback installs one base criterion (``imbcompress.remedies.losses``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from typing_extensions import override

from imbcompress.callbacks.base import task_of, train_class_counts
from imbcompress.callbacks.climbq import ClimbQ

if TYPE_CHECKING:
    from collections.abc import Callable

    from imbcompress.task import LossContext


def replaces_base_loss(callback: Callback) -> str | None:
    """How ``callback`` names itself when it replaces the task's base criterion, else None."""
    if isinstance(callback, LossRemedy):
        return f"{type(callback).__name__} (loss remedy {callback.method!r})"
    if isinstance(callback, ClimbQ) and callback.homovar:
        return "ClimbQ with homovar=True (ClimbQ+'s HomoVar loss)"
    return None


def check_one_base_loss(trainer: Trainer) -> None:
    """Fail when two callbacks would both replace the base criterion (``task.set_criterion``)."""
    names = [name for name in map(replaces_base_loss, getattr(trainer, "callbacks", [])) if name is not None]
    if len(names) > 1:
        raise ValueError(
            f"{' and '.join(names)} both replace the task's base loss; only one base-loss remedy may be used in a "
            "run. Keep one of them (a sampler, a post-hoc adjustment or distillation combines with any)."
        )


class LossRemedy(Callback):
    """Base class of the loss remedies (``ClassBalancedLoss``, ``FocalLoss``, ``LDAMDRWLoss``, ``LogitAdjustedLoss``).

    At ``setup`` it checks that no other callback replaces the base loss, builds its criterion from the data
    module's training class counts and installs it with ``task.set_criterion`` (the task's loss-term extension point,
    so distillation keeps ``(1 - alpha) x`` this loss as its base). Evaluation losses stay plain cross-entropy. Its
    settings are saved with the checkpoint; testing or resuming a checkpoint with different settings, or one not
    trained with this remedy, is an error, so ``metrics.json["remedies"]`` says how the tested model was trained.
    """

    method: ClassVar[str] = ""
    metrics_section: ClassVar[str] = "remedies"  # RunReport lists metrics_record() there

    def __init__(self) -> None:
        self.criterion: Callable[[LossContext], Tensor] | None = None

    def settings(self) -> dict[str, Any]:
        """The constructor's settings (plain values)."""
        raise NotImplementedError

    def resolved(self) -> dict[str, Any]:
        """Values fixed at fit time from the trainer (e.g. the DRW epoch); plain values."""
        return {}

    def build_criterion(self, trainer: Trainer, class_counts: list[int]) -> Callable[[LossContext], Tensor]:
        """The criterion for these class counts (validating settings that depend on the trainer)."""
        raise NotImplementedError

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        check_one_base_loss(trainer)
        if stage != "fit":
            return
        counts = train_class_counts(trainer, type(self).__name__)
        if self.criterion is None:
            self.criterion = self.build_criterion(trainer, counts)
        task_of(pl_module, type(self).__name__).set_criterion(self.criterion)

    def metrics_record(self) -> dict[str, Any]:
        """The run-report hook (see ``RunReport``): this remedy's entry in ``metrics.json["remedies"]``."""
        return {"method": self.method, **self.settings(), **self.resolved()}

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"settings": self.settings(), "resolved": self.resolved()}

    @override
    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("callbacks")
        if saved is not None and self.state_key not in saved:  # (a weights-only checkpoint saves no callbacks)
            raise ValueError(
                f"{type(self).__name__} (loss remedy {self.method!r}) is configured, but the checkpoint was not "
                "trained with it. Test or resume a checkpoint with the configuration it was trained with (the run's "
                "config.yaml); to start a remedy from trained weights use --model.init_args.init_from."
            )

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("settings")
        if saved != self.settings():
            raise ValueError(
                f"the checkpoint was trained with {type(self).__name__} settings {saved}, but this configuration has "
                f"{self.settings()}; use the settings of the checkpoint's run"
            )
        self.load_resolved(dict(state_dict.get("resolved", {})))

    def load_resolved(self, resolved: dict[str, Any]) -> None:
        """Adopt fit-time values saved in a checkpoint (subclasses that have some override this)."""


def check_fraction_of_one(setting: str, value: float, closed_low: bool = True) -> None:
    """``value`` must lie in [0, 1) (or (0, 1) with ``closed_low=False``); the error names ``setting``."""
    low_ok = value >= 0 if closed_low else value > 0
    if isinstance(value, bool) or not isinstance(value, int | float) or not (low_ok and value < 1):
        allowed = "[0, 1)" if closed_low else "(0, 1)"
        raise ValueError(f"{setting} must be in {allowed}, got {value!r}")


def check_non_negative(setting: str, value: float) -> None:
    """``value`` must be a number >= 0; the error names ``setting``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{setting} must be a number >= 0, got {value!r}")


def check_positive(setting: str, value: float) -> None:
    """``value`` must be a number > 0; the error names ``setting``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{setting} must be a number > 0, got {value!r}")
