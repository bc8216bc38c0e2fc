"""Lightning adapter for DoReFa quantization-aware training (``imbcompress.compress.dorefa``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from imbcompress.compress.dorefa import METHOD, check_bits, dorefa_record
from imbcompress.compress.size import model_size

if TYPE_CHECKING:
    from imbcompress.task import ImbalanceClassifier


class QuantizationAwareTraining(Callback):
    """DoReFa quantization-aware training (SPEC §4.2): k-bit weights and activations, straight-through gradients.

    The quantizers are inserted once in ``setup()`` through the task's structural-transform log, so checkpoints,
    resume, ``test --ckpt_path`` and other compression callbacks (pruning, distillation) keep working. The
    optimizer updates the full-precision master weights; biases and BatchNorm stay in full precision.

    Args:
        weight_bits: Bit width of the conv/linear weights, 1..8, or 32 for full precision.
        activation_bits: Bit width of the activations after quantized layers, 1..8, or 32 for full precision.
        exclude: Module names kept in full precision (a name covers its submodules); it replaces the default,
            which is the stem conv, the stem ReLU, the classifier and the activation feeding the pooling (ResNet-20:
            ``[stem.conv, stem.relu, classifier, layer3.2.relu2]``; MobileNet-V2: ``head.relu`` for the last).
    """

    def __init__(self, weight_bits: int = 4, activation_bits: int = 8, exclude: list[str] | None = None) -> None:
        check_bits("QuantizationAwareTraining.weight_bits", weight_bits)
        check_bits("QuantizationAwareTraining.activation_bits", activation_bits)
        if exclude is not None and not all(isinstance(name, str) and name for name in exclude):
            raise ValueError(f"QuantizationAwareTraining.exclude must be a list of module names, got {exclude!r}")
        self.weight_bits = weight_bits
        self.activation_bits = activation_bits
        self.exclude = None if exclude is None else list(exclude)
        self.record: dict[str, Any] | None = None

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        task = cast("ImbalanceClassifier", pl_module)
        if self.record is None:
            self.record = self._existing_record(task) or dorefa_record(
                task.model, self.weight_bits, self.activation_bits, self.exclude
            )
        if self.record not in task.transforms:
            task.apply_transform(self.record)
            size = model_size(task.model, activation_bits=self.activation_bits)
            rank_zero_info(
                f"DoReFa (A{self.activation_bits}, W{self.weight_bits}) on {len(self.record['layers'])} layers and "
                f"{len(self.record['activations'])} activations: weights {size['weight_storage_mib']:.3f} MiB, "
                f"[C24] column {size['paper_mibit']:.2f} Mib"
            )

    def _existing_record(self, task: ImbalanceClassifier) -> dict[str, Any] | None:
        """A DoReFa record with these settings already applied (e.g. replayed from ``init_from``), if any."""
        for record in task.transforms:
            same_bits = (record.get("weight_bits"), record.get("activation_bits")) == (
                self.weight_bits,
                self.activation_bits,
            )
            if record.get("kind") == METHOD and same_bits:
                return record
        return None

    def compression_record(self) -> dict[str, Any]:
        """Plain-data summary of the settings and the quantized modules (for ``metrics.json``)."""
        record = self.record or {}
        return {
            "method": METHOD,
            "weight_bits": self.weight_bits,
            "activation_bits": self.activation_bits,
            "exclude": record.get("exclude", self.exclude),
            "layers": record.get("layers"),
            "activations": record.get("activations"),
        }
