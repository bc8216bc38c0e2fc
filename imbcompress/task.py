"""The one LightningModule: an image classifier trained on (imbalanced) data and evaluated per class."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassConfusionMatrix

from imbcompress.compress.transforms import TRANSFORMS_KEY, TransformLog
from imbcompress.metrics import summarize_confusion
from imbcompress.models.heads import ClassifierKind, classifier_kind, set_classifier
from imbcompress.models.registry import ArchName, build_model
from imbcompress.schedule import lr_factor, lr_lambda, plan_steps

__all__ = [
    "CompressibleTask",
    "ImbalanceClassifier",
    "LossContext",
    "LossTerm",
    "cross_entropy",
    "is_compressible_task",
    "lr_factor",
]


@dataclass
class LossContext:
    """What a loss term sees of one batch.

    Attributes:
        inputs: The normalised input images, as the model received them.
        targets: Integer class labels.
        features: Pooled features (the classifier's input).
        logits: The model's output.
        stage: "train", "val" or "test".
    """

    inputs: Tensor
    targets: Tensor
    features: Tensor
    logits: Tensor
    stage: str


class LossTerm(Protocol):
    """An extra loss term registered by a callback (see ``ImbalanceClassifier.add_loss_term``)."""

    base_weight: float

    def __call__(self, ctx: LossContext) -> Tensor: ...


def cross_entropy(ctx: LossContext) -> Tensor:
    """The default base criterion: mean cross-entropy, computed in fp32."""
    return F.cross_entropy(ctx.logits.float(), ctx.targets)


class CompressibleTask(Protocol):
    """What callbacks may use of the task (``ImbalanceClassifier`` implements it); see docs/architecture.md.

    Attributes:
        model: The plain ``nn.Module`` being trained (``forward_features`` / ``forward_head``).
        num_classes: Number of classes.
        transforms: The structural records applied to ``model``, in order.
        loss_terms: The registered extra loss terms by name.
        last_test_results: The whole-test-set results of the last test (set on every rank), or None.
        init_from: The checkpoint the weights were initialised from, or None.
    """

    model: Any
    num_classes: int
    init_from: str | None
    transforms: TransformLog
    loss_terms: dict[str, LossTerm]
    last_test_results: dict[str, Any] | None

    @property
    def class_names(self) -> list[str]: ...

    def apply_transform(self, record: dict[str, Any]) -> None: ...

    def add_loss_term(self, name: str, term: LossTerm) -> None: ...

    def set_criterion(self, criterion: Callable[[LossContext], Tensor]) -> None: ...


TASK_ATTRIBUTES = tuple(CompressibleTask.__annotations__)
"""The data members of :class:`CompressibleTask`, looked up on the instance."""
TASK_METHODS = tuple(
    name
    for name, member in vars(CompressibleTask).items()
    if not name.startswith("_") and (callable(member) or isinstance(member, property))
)
"""The methods and properties of :class:`CompressibleTask`, looked up on the class."""


def is_compressible_task(obj: object) -> bool:
    """Whether ``obj`` has every member of :class:`CompressibleTask`.

    Not ``isinstance`` with a ``runtime_checkable`` Protocol: from Python 3.12 that looks members up statically
    (``inspect.getattr_static``), which cannot see an ``nn.Module``'s submodules, parameters and buffers (they live
    in ``_modules``, ``_parameters`` and ``_buffers``), so it rejected the task itself (``model`` is a submodule).
    Here data members go through normal attribute lookup, and methods and properties are looked up on the class,
    so a property is never evaluated.
    """
    return all(hasattr(type(obj), name) for name in TASK_METHODS) and all(hasattr(obj, n) for n in TASK_ATTRIBUTES)


class ImbalanceClassifier(LightningModule):
    """Classifier task: cross-entropy training, per-class evaluation, and hooks for compression callbacks.

    Args:
        arch: Architecture: a registry name (resnet20/32/44/56/110, mobilenetv2), ``timm:<name>`` or
            ``torchvision:<name>`` (random initialisation; docs/models.md). Checkpoints written before this option was
            renamed store it as ``model``; they still load.
        num_classes: Number of classes; linked from the data module by the CLI, never typed in a config.
        shortcut: ResNet shortcut on a width/stride change: "A" (zero padding) or "B" (1x1 conv + BN). Leave unset
            for MobileNet-V2; ResNets default to "A".
        optimizer: "sgd" (with ``momentum`` and ``nesterov``) or "adamw".
        lr: Peak learning rate.
        momentum: SGD momentum.
        nesterov: Use Nesterov momentum (SGD only).
        weight_decay: Weight decay (L2 for SGD, decoupled for AdamW).
        scheduler: "multistep" (multiply by ``gamma`` at each of ``milestones``), "cosine" (to 0 at the last step)
            or "constant". Updated every optimisation step.
        milestones: Epochs at which "multistep" decays the rate; default: after 50 % and 75 % of the training steps.
        gamma: Decay factor of "multistep".
        warmup_epochs: Linear warm-up length in epochs (fractions allowed), before the schedule proper.
        channels_last: Use the channels-last memory format for the model and batches (faster with bf16 on CPUs with
            AMX and with mixed precision on GPUs).
        init_from: Checkpoint file to initialise the weights from (an imbcompress/Lightning checkpoint, whose
            compression is replayed first, or a plain ``state_dict`` of the model). Used by compress-after-training
            flows; not stored in the hyperparameters, since a checkpoint of this task carries its own weights.
        weights: A state-dict file of the bare architecture (e.g. ImageNet weights of a timm model, saved with
            ``torch.save(model.state_dict())``) to start from instead of the random initialisation; a classifier with
            another number of classes stays random. Not stored in the hyperparameters either.
        classifier: "linear" (the model's own ``nn.Linear``) or "cosine": cosine-similarity logits in [-1, 1], no bias
            (LDAM-DRW's normalised classifier; ``configs/remedies/ldam_drw.yaml`` sets it).
    """

    def __init__(
        self,
        arch: ArchName = "resnet20",  # type: ignore[assignment]  # a plain str; the parser checks the name
        num_classes: int = 10,
        shortcut: Literal["A", "B"] | None = None,
        optimizer: Literal["sgd", "adamw"] = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 1e-4,
        scheduler: Literal["multistep", "cosine", "constant"] = "multistep",
        milestones: list[int] | None = None,
        gamma: float = 0.1,
        warmup_epochs: float = 0.0,
        channels_last: bool = True,
        init_from: str | None = None,
        weights: str | None = None,
        classifier: ClassifierKind = "linear",
    ) -> None:
        super().__init__()
        _validate_hparams(lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs, gamma=gamma)
        self.save_hyperparameters(ignore=["init_from", "weights"])
        self.model: Any = build_model(arch, num_classes, shortcut, weights)  # has forward_features / forward_head
        set_classifier(self.model, classifier)
        self.channels_last = channels_last
        self.num_classes = num_classes
        self.transforms = TransformLog()
        self.loss_terms: dict[str, LossTerm] = {}
        self.criterion: Callable[[LossContext], Tensor] = cross_entropy
        self.val_confusion = MulticlassConfusionMatrix(num_classes)
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.last_test_results: dict[str, Any] | None = None
        self.init_from = init_from
        if init_from is not None:
            self.load_weights(init_from)

    # ----------------------------------------------------------------- extension points for callbacks
    def add_loss_term(self, name: str, term: LossTerm) -> None:
        """Register an extra loss term (the documented extension point; see docs/architecture.md).

        The training loss is ``prod(base_weight of all terms) * criterion(ctx) + sum(term(ctx))``.
        """
        if name in self.loss_terms:
            raise ValueError(f"a loss term named {name!r} is already registered; names: {sorted(self.loss_terms)}")
        self.loss_terms[name] = term

    def set_criterion(self, criterion: Callable[[LossContext], Tensor]) -> None:
        """Replace the base criterion (default: cross-entropy), e.g. with a class-reweighted loss."""
        if self.criterion is not cross_entropy and self.criterion is not criterion:
            raise ValueError(f"the base criterion was already replaced by {self.criterion!r}; only one may replace it")
        self.criterion = criterion

    def on_fit_start(self) -> None:
        # After every callback's setup, so the base criterion is the one the fit trains with.
        if classifier_kind(self.model) == "cosine" and getattr(self.criterion, "logit_scale", 1.0) <= 1.0:
            k = self.num_classes
            rank_zero_warn(
                f"model.classifier=cosine with a base loss that does not scale the logits ({_name(self.criterion)}): "
                f"cosine logits lie in [-1, 1], so the softmax gives the true class at most "
                f"e^2 / (e^2 + {k - 1}) = {math.exp(2) / (math.exp(2) + k - 1):.2f}. The cosine classifier is meant "
                "for the LDAM loss with its scale s (configs/remedies/ldam_drw.yaml); otherwise use "
                "model.classifier=linear"
            )

    def apply_transform(self, record: dict[str, Any]) -> None:
        """Apply a structural compression record to the model and log it for checkpoint replay."""
        self.transforms.apply(self.model, record)

    def load_weights(self, path: str) -> None:
        """Initialise the model from a checkpoint file, replaying its structural compression first."""
        self.transforms.load_weights(self.model, path, self.num_classes, arch=self.hparams["arch"])

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[TRANSFORMS_KEY] = self.transforms.saved()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._match_architecture(checkpoint.get("hyper_parameters") or {})
        self.transforms.replay(self.model, checkpoint.get(TRANSFORMS_KEY, []))
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def _match_architecture(self, saved: dict[str, Any]) -> None:
        """Rebuild the model for a checkpoint written when ``arch`` was called ``model``; refuse another arch.

        ``load_from_checkpoint`` drops hyperparameters the constructor does not know, so such a checkpoint arrives
        here with the default architecture.
        """
        hp: Any = self.hparams
        arch = saved.get("arch", saved.get("model"))
        if not isinstance(arch, str) or arch == hp.arch:
            return
        if "arch" in saved or self.transforms:
            raise ValueError(
                f"the checkpoint holds a {arch!r} model but model.arch={hp.arch!r}; "
                "use the configuration the checkpoint was trained with (the run's config.yaml)"
            )
        self.model = build_model(arch, self.num_classes, saved.get("shortcut", hp.shortcut))  # type: ignore[arg-type]
        hp.arch = arch

    # ----------------------------------------------------------------- steps
    def setup(self, stage: str) -> None:
        # Runs after the callbacks' setup, i.e. after any structural compression.
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def _forward(self, batch: tuple[Tensor, Tensor], stage: str) -> LossContext:
        inputs, targets = batch
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        features = self.model.forward_features(inputs)
        logits = self.model.forward_head(features)
        return LossContext(inputs, targets, features, logits, stage)

    def forward(self, inputs: Tensor) -> Tensor:
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return self.model(inputs)

    def compute_loss(self, ctx: LossContext) -> tuple[Tensor, dict[str, Tensor]]:
        """Base criterion scaled by the terms' base weights, plus every registered term."""
        base_weight = math.prod(term.base_weight for term in self.loss_terms.values())
        parts = {"base": self.criterion(ctx)}
        total = base_weight * parts["base"]
        for name, term in self.loss_terms.items():
            parts[name] = term(ctx)
            total = total + parts[name]
        return total, parts

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        ctx = self._forward(batch, "train")
        loss, parts = self.compute_loss(ctx)
        batch_size = ctx.targets.numel()
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        if self.loss_terms:
            for name, value in parts.items():
                self.log(f"train/loss_{name}", value, batch_size=batch_size)
        return loss

    def _eval_step(
        self, batch: tuple[Tensor, Tensor], confusion: MulticlassConfusionMatrix, mean_loss: MeanMetric
    ) -> None:
        ctx = self._forward(batch, "eval")
        mean_loss.update(F.cross_entropy(ctx.logits.float(), ctx.targets), weight=ctx.targets.numel())
        confusion.update(ctx.logits.argmax(dim=1), ctx.targets)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_confusion, self.val_loss)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_confusion, self.test_loss)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        logits = self._forward(batch, "predict").logits.float()
        return {"prediction": logits.argmax(dim=1), "probabilities": logits.softmax(dim=1), "target": batch[1]}

    def _finish_eval(self, stage: str, confusion: MulticlassConfusionMatrix, mean_loss: MeanMetric) -> dict[str, Any]:
        # compute() sums the matrices of all DDP ranks, so every rank logs the same whole-set values.
        results = summarize_confusion(confusion.compute())
        results["loss"] = float(mean_loss.compute())
        confusion.reset()
        mean_loss.reset()
        for key in ("accuracy", "macro_f1", "balanced_accuracy", "loss"):
            self.log(f"{stage}/{key}", results[key], prog_bar=key in ("accuracy", "macro_f1"), sync_dist=False)
        for name, value in zip(self.class_names, results["per_class"]["f1"]):
            self.log(f"{stage}/f1/{name}", value)
        return results

    def on_validation_epoch_end(self) -> None:
        self._finish_eval("val", self.val_confusion, self.val_loss)

    def on_test_epoch_end(self) -> None:
        # Every rank holds the whole-set results; the RunReport callback writes them (metrics.json) on rank 0.
        self.last_test_results = self._finish_eval("test", self.test_confusion, self.test_loss)

    @property
    def class_names(self) -> list[str]:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(datamodule, "class_names", None)
        return list(names) if names else [str(index) for index in range(self.num_classes)]

    # ----------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> Any:
        hp: Any = self.hparams
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for param in self.parameters():
            if param.requires_grad:
                (no_decay if param.ndim <= 1 and hp.optimizer == "adamw" else decay).append(param)
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if hp.optimizer == "sgd":
            optimizer: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov
            )
        else:
            optimizer = torch.optim.AdamW(groups, lr=hp.lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor_fn())
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _steps_per_epoch(self) -> int:
        """Optimisation steps per epoch, without touching the fit loop's own training loader.

        ``trainer.estimated_stepping_batches`` would build the fit loop's loader here, before a checkpoint is
        restored, and Lightning then never loads the saved loader position into it: a mid-epoch resume would
        restart the epoch's data. A throwaway loader from the data module gives the same count.
        """
        trainer = self.trainer
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None:
            max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
            return max(1, int(trainer.estimated_stepping_batches) // max_epochs)
        batches = len(datamodule.train_dataloader())
        limit = trainer.limit_train_batches
        batches = (
            min(batches, limit) if isinstance(limit, int) else int(batches * (limit if limit is not None else 1.0))
        )
        return max(1, math.ceil(batches / trainer.accumulate_grad_batches))

    def _lr_factor_fn(self) -> Callable[[int], float]:
        hp: Any = self.hparams
        trainer = self.trainer
        plan = plan_steps(
            self._steps_per_epoch(), trainer.max_epochs, trainer.max_steps, hp.warmup_epochs, hp.milestones
        )
        return lr_lambda(hp.scheduler, plan, hp.gamma)


def _name(criterion: Callable[..., Any]) -> str:
    """A criterion's name for a message: its class, or the function's name (cross_entropy)."""
    return getattr(criterion, "__name__", type(criterion).__name__)


def _validate_hparams(**values: float) -> None:
    for name, value in values.items():
        if name == "gamma" and not 0 < value <= 1:
            raise ValueError(f"model.gamma must be in (0, 1], got {value}")
        if name != "gamma" and value < 0:
            raise ValueError(f"model.{name} must be >= 0, got {value}")
    if values["lr"] <= 0:
        raise ValueError(f"model.lr must be > 0, got {values['lr']}")
