"""Lightning adapter for ClimbQ / ClimbQ+ (``imbcompress.compress.climbq`` and ``imbcompress.compress.homovar``)."""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

from imbcompress.callbacks.base import StructuralCompression, task_of, train_class_counts
from imbcompress.compress.climbq import check_settings, clear_class_labels, climbq_record, set_class_labels
from imbcompress.compress.homovar import HomoVarLoss

METHOD = "climbq"


class ClimbQ(StructuralCompression):
    """ClimbQ class-imbalanced quantization ([CQ], SPEC §4.4), and ClimbQ+ with ``homovar=True``.

    Quantizes the weights of every convolution and its features (the BatchNorm output before the ReLU) to ``bits``
    bits; the classifier stays in full precision. During training the feature quantizers see the batch labels
    (set before each training step and cleared after it); validation, test and predict use the label-free rule,
    so a checkpoint gives the same metrics with or without this callback. Class counts come from the data module's
    ``train_class_counts``. HomoVar is stateless (recomputed from each batch), so a ClimbQ+ run resumed mid-epoch
    continues exactly with nothing to save.

    Args:
        bits: Bit width of weights and features, 2..8.
        mode: "official" (the published code, which produced [CQ]'s tables) or "paper" (the text's per-class
            normal CDF with c_k = 2 - n_k / N).
        homovar: Add the HomoVar loss (ClimbQ+), replacing the task's cross-entropy.
        homovar_mode: How HomoVar weighs classes, per batch: "official" (the published ``lt_loss.py``: softmax +
            weighted BCE), "paper" (Levene's test on the batch, weighted cross-entropy) or "class_balanced" (the
            ablation: Cui et al.'s class-balanced cross-entropy, no test). Independent of ``mode``.
        alpha: Significance level of HomoVar's Levene test, in (0, 1).
        beta: HomoVar's class-balanced weighting factor, in (0, 1).
        exclude: Module names (or prefixes such as "layer1") kept in full precision, e.g. ``[stem.conv]``.
    """

    method = METHOD
    legacy_setting_keys = ("bits", "mode")

    def __init__(
        self,
        bits: int = 4,
        mode: Literal["official", "paper"] = "official",
        homovar: bool = False,
        homovar_mode: Literal["official", "paper", "class_balanced"] = "official",
        alpha: float = 0.05,
        beta: float = 0.999,
        exclude: list[str] | None = None,
    ) -> None:
        super().__init__()
        check_settings(bits, mode, exclude, homovar_mode, alpha, beta, prefix="ClimbQ.")
        self.bits = bits
        self.mode = mode
        self.homovar = homovar
        self.homovar_mode = homovar_mode
        self.alpha = alpha
        self.beta = beta
        self.exclude = None if exclude is None else list(exclude)
        self.class_counts: list[int] | None = None
        self.loss: HomoVarLoss | None = None

    @property
    def settings(self) -> dict[str, Any]:
        """All arguments: a ClimbQ+ checkpoint is not continued as plain ClimbQ, nor the reverse."""
        return {
            "bits": self.bits,
            "mode": self.mode,
            "homovar": self.homovar,
            "homovar_mode": self.homovar_mode,
            "alpha": self.alpha,
            "beta": self.beta,
            "exclude": self.exclude,
        }

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        task = task_of(pl_module, "ClimbQ")
        if stage == "fit":
            self.class_counts = train_class_counts(trainer, "ClimbQ")
            if self.mode == "paper":
                rank_zero_warn(
                    "ClimbQ mode='paper' standardises each training image's features with the batch statistics of "
                    "its own class, so the forward pass carries its label, which a network learns to read and the "
                    "label-free test rule cannot give it: 3 epochs of 2-bit fine-tuning on CIFAR-10-LT reached 89 % "
                    "training accuracy with the true labels, 19 % with them shuffled and 0.7 % under the test rule "
                    "(docs/climbq.md, benchmarks/climbq_thresholds.py). Use mode='official' for results"
                )
        if self.apply_once(task, lambda: climbq_record(task.model, self.bits, self.mode, self.exclude)):
            assert self.record is not None
            rank_zero_info(
                f"ClimbQ ({self.mode}, {self.bits} bits): {len(self.record['weight_layers'])} conv weights and "
                f"{len(self.record['activation_layers'])} feature maps quantized"
            )
        if self.homovar and stage == "fit":
            if self.loss is None:
                assert self.class_counts is not None
                self.loss = HomoVarLoss(self.class_counts, self.homovar_mode, self.alpha, self.beta)
            task.set_criterion(self.loss)

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        set_class_labels(task_of(pl_module, "ClimbQ").model, batch[1], self.class_counts)

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        clear_class_labels(task_of(pl_module, "ClimbQ").model)
        if self.loss is not None:
            self._log_homovar(pl_module, batch[1].numel())

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        clear_class_labels(task_of(pl_module, "ClimbQ").model)  # also when a step was skipped or raised

    def _log_homovar(self, pl_module: LightningModule, batch_size: int) -> None:
        assert self.loss is not None
        names = getattr(pl_module, "class_names", None) or [str(k) for k in range(self.loss.num_classes)]
        log = {f"train/homovar_weight/{name}": float(w) for name, w in zip(names, self.loss.last_weights)}
        log |= {f"train/homovar_classes_{key}": float(n) for key, n in self.loss.position_counts().items()}
        pl_module.log_dict(log, on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=True)

    @classmethod
    def describe(cls, record: dict[str, Any], model: nn.Module) -> dict[str, Any]:
        """Settings and the quantized modules, for ``metrics.json`` (``None`` where an older record is silent)."""
        settings = cls.settings_of(record)
        homovar = settings.get("homovar")
        return {
            "method": METHOD,
            "mode": record["mode"],
            "weight_bits": record["bits"],
            "activation_bits": record["bits"],
            "homovar": homovar,
            "homovar_mode": settings.get("homovar_mode") if homovar else None,
            "alpha": settings.get("alpha") if homovar else None,
            "beta": settings.get("beta") if homovar else None,
            "exclude": settings.get("exclude"),
            "layers": record.get("weight_layers"),
            "activations": record.get("activation_layers"),
        }
