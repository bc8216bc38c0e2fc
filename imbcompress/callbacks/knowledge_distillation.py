"""Lightning adapter for knowledge distillation (``imbcompress.compress.distillation``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from typing_extensions import override

from imbcompress.callbacks.base import CompressionCallback, task_of
from imbcompress.checkpoint import module_from_checkpoint
from imbcompress.compress.distillation import DistillationTerm, check_distillation_settings
from imbcompress.models.heads import classifier_kind
from imbcompress.task import CompressibleTask, ImbalanceClassifier

TERM_NAME = "distill"
METHOD = "knowledge_distillation"
SETTING = "KnowledgeDistillation.teacher_checkpoint"


class KnowledgeDistillation(CompressionCallback):
    """Distil a trained teacher into the student (SPEC §4.3).

    Loss: ``alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)``, through the task's
    loss-term extension point, in the training stage only. The teacher's architecture and compression come from its
    checkpoint (any trained imbcompress model can teach). It is frozen (eval mode, no gradients), runs on the
    student's device under the same autocast, and is held by this callback, so it is neither trained nor saved in
    the student's checkpoints. It changes no structure: its ``metrics.json`` entry comes from this callback during fit
    (and, through ``RunReport``, from the checkpoints that fit writes).

    Args:
        teacher_checkpoint: Path of the teacher's checkpoint (an ``ImbalanceClassifier`` ``.ckpt`` file trained on
            the same classes).
        alpha: Weight of the distillation term, in [0, 1]; cross-entropy gets ``1 - alpha``.
        temperature: Softmax temperature T (> 0).
    """

    method = METHOD

    def __init__(self, teacher_checkpoint: str, alpha: float = 0.7, temperature: float = 1.0) -> None:
        super().__init__()
        check_distillation_settings(alpha, temperature, prefix="KnowledgeDistillation.")
        if not Path(teacher_checkpoint).is_file():
            raise ValueError(
                f"KnowledgeDistillation.teacher_checkpoint={teacher_checkpoint!r}: no such file; give the .ckpt of "
                "a trained model, e.g. --trainer.callbacks.init_args.teacher_checkpoint=runs/fp32/checkpoints/last.ckpt"
            )
        self.teacher_checkpoint = teacher_checkpoint
        self.alpha = alpha
        self.temperature = temperature
        self.term: DistillationTerm | None = None
        self.teacher_model_name: str | None = None

    @property
    def settings(self) -> dict[str, Any]:
        """The arguments as plain data."""
        return {"teacher_checkpoint": self.teacher_checkpoint, "alpha": self.alpha, "temperature": self.temperature}

    @property
    def teacher(self) -> nn.Module | None:
        """The frozen teacher model, once loaded in ``setup``."""
        return None if self.term is None else self.term.teacher

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        task = task_of(pl_module, "KnowledgeDistillation")
        if self.term is None:
            self.term = DistillationTerm(self._load_teacher(task), self.alpha, self.temperature)
        if task.loss_terms.get(TERM_NAME) is not self.term:
            task.add_loss_term(TERM_NAME, self.term)

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        task = task_of(pl_module, "KnowledgeDistillation")
        if stage == "fit" and self.term is not None and task.loss_terms.get(TERM_NAME) is self.term:
            del task.loss_terms[TERM_NAME]

    def _load_teacher(self, student: CompressibleTask) -> nn.Module:
        teacher_task = module_from_checkpoint(ImbalanceClassifier, self.teacher_checkpoint, SETTING)
        if teacher_task.num_classes != student.num_classes:
            raise ValueError(
                f"KnowledgeDistillation.teacher_checkpoint={self.teacher_checkpoint!r} has {teacher_task.num_classes} "
                f"classes but the student has {student.num_classes}; the teacher must be trained on the same classes"
            )
        self.teacher_model_name = str(teacher_task.hparams.get("arch"))
        kinds = classifier_kind(getattr(student, "model", None)), classifier_kind(teacher_task.model)
        if kinds[0] != kinds[1]:
            rank_zero_warn(
                f"KnowledgeDistillation: the student's classifier is {kinds[0]} and the teacher's "
                f"({self.teacher_checkpoint}) is {kinds[1]}: the KL term compares cosine logits in [-1, 1] with "
                "unbounded ones, so it cannot reach zero (the student's softmax cannot be as sharp). Distil from a "
                "teacher with the same classifier (e.g. the FP32 model trained with the same remedy)"
            )
        return teacher_task.model

    def compression_record(self) -> dict[str, Any]:
        """Plain-data summary of the settings (for ``metrics.json``)."""
        return {
            "method": METHOD,
            "teacher_checkpoint": self.teacher_checkpoint,
            "teacher_model": self.teacher_model_name,
            "alpha": self.alpha,
            "temperature": self.temperature,
        }
