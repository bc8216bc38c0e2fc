"""Lightning adapter for ClimbQ / ClimbQ+ (``imbcompress.compress.climbq`` and ``imbcompress.compress.homovar``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, cast

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from imbcompress.compress.climbq import (
    check_bits,
    clear_class_labels,
    climbq_record,
    set_class_labels,
)
from imbcompress.compress.homovar import HomoVarLoss, check_settings

if TYPE_CHECKING:
    from imbcompress.task import ImbalanceClassifier

METHOD = "climbq"


class ClimbQ(Callback):
    """ClimbQ class-imbalanced quantization ([CQ], SPEC §4.4), and ClimbQ+ with ``homovar=True``.

    Quantizes the weights of every convolution and its features (the BatchNorm output before the ReLU) to ``bits``
    bits; the classifier stays in full precision. During training the feature quantizers see the batch labels
    (set before each training step and cleared after it); validation, test and predict use the label-free rule,
    so a checkpoint gives the same metrics with or without this callback. Class counts come from the data module's
    ``train_class_counts``.

    Args:
        bits: Bit width of weights and features, 2..8.
        mode: "official" (the published code, which produced [CQ]'s tables) or "paper" (the text's per-class
            normal CDF with c_k = 2 - n_k / N).
        homovar: Add the HomoVar loss (ClimbQ+), replacing the task's cross-entropy.
        alpha: Significance level of HomoVar's Levene test, in (0, 1).
        beta: HomoVar's class-balanced weighting factor, in (0, 1).
        exclude: Module names (or prefixes such as "layer1") kept in full precision, e.g. ``[stem.conv]``.
    """

    def __init__(
        self,
        bits: int = 4,
        mode: Literal["official", "paper"] = "official",
        homovar: bool = False,
        alpha: float = 0.05,
        beta: float = 0.999,
        exclude: list[str] | None = None,
    ) -> None:
        _validate(bits, mode, alpha, beta, exclude)
        self.bits = bits
        self.mode = mode
        self.homovar = homovar
        self.alpha = alpha
        self.beta = beta
        self.exclude = None if exclude is None else list(exclude)
        self.record: dict[str, Any] | None = None
        self.class_counts: list[int] | None = None
        self.loss: HomoVarLoss | None = None

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        task = _task(pl_module)
        if stage == "fit":
            self.class_counts = _class_counts(trainer)
        self.record = self._existing_record(task)
        if self.record is None:
            self.record = climbq_record(task.model, self.bits, self.mode, self.exclude)
            task.apply_transform(self.record)
            rank_zero_info(
                f"ClimbQ ({self.mode}, {self.bits} bits): {len(self.record['weight_layers'])} conv weights and "
                f"{len(self.record['activation_layers'])} feature maps quantized"
            )
        if self.homovar and stage == "fit":
            if self.loss is None:
                assert self.class_counts is not None
                self.loss = HomoVarLoss(self.class_counts, self.mode, self.alpha, self.beta)
            task.set_criterion(self.loss)

    def _existing_record(self, task: ImbalanceClassifier) -> dict[str, Any] | None:
        """The ClimbQ record already applied to the model (e.g. replayed from ``init_from``), if its settings match."""
        for record in task.transforms:
            if record.get("kind") != METHOD:
                continue
            if (record["bits"], record["mode"]) != (self.bits, self.mode):
                raise ValueError(
                    f"the model is already quantized by ClimbQ with bits={record['bits']}, mode={record['mode']!r}; "
                    f"this ClimbQ callback asks for bits={self.bits}, mode={self.mode!r}"
                )
            return record
        return None

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        set_class_labels(_task(pl_module).model, batch[1], self.class_counts)

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        clear_class_labels(_task(pl_module).model)
        if self.loss is not None:
            self._log_homovar(pl_module, batch[1].numel())

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        clear_class_labels(_task(pl_module).model)  # also when a step was skipped or raised

    def _log_homovar(self, pl_module: LightningModule, batch_size: int) -> None:
        assert self.loss is not None
        names = getattr(pl_module, "class_names", None) or [str(k) for k in range(self.loss.num_classes)]
        log = {f"train/homovar_weight/{name}": float(w) for name, w in zip(names, self.loss.last_weights)}
        log |= {f"train/homovar_classes_{key}": float(n) for key, n in self.loss.position_counts().items()}
        pl_module.log_dict(log, on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=True)

    def compression_record(self) -> dict[str, Any]:
        """Plain-data summary of the settings and the quantized modules (for ``metrics.json``)."""
        record = self.record or {}
        return {
            "method": METHOD,
            "mode": self.mode,
            "weight_bits": self.bits,
            "activation_bits": self.bits,
            "homovar": self.homovar,
            "alpha": self.alpha if self.homovar else None,
            "beta": self.beta if self.homovar else None,
            "exclude": self.exclude,
            "layers": record.get("weight_layers"),
            "activations": record.get("activation_layers"),
        }


def _task(pl_module: LightningModule) -> ImbalanceClassifier:
    # The callback works with the project's task (model, transforms, set_criterion); typed for mypy only.
    return cast("ImbalanceClassifier", pl_module)


def _class_counts(trainer: Trainer) -> list[int]:
    datamodule = getattr(trainer, "datamodule", None)
    counts = getattr(datamodule, "train_class_counts", None)
    if not counts:
        raise ValueError(
            "ClimbQ needs the training-set class counts from trainer.datamodule.train_class_counts, but "
            f"{type(datamodule).__name__ if datamodule is not None else 'no data module'} provides none; "
            "fit with an imbcompress ImbalancedDataModule (or a data module exposing train_class_counts)"
        )
    return [int(count) for count in counts]


def _validate(bits: int, mode: str, alpha: float, beta: float, exclude: list[str] | None) -> None:
    check_bits(bits, setting="ClimbQ.bits")
    check_settings(mode, alpha, beta, prefix="ClimbQ.")
    if exclude is not None and not all(isinstance(name, str) and name for name in exclude):
        raise ValueError(f"ClimbQ.exclude must be a list of module names, got {exclude!r}")
