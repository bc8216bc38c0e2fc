"""Lightning adapter for DoReFa quantization-aware training (``imbcompress.compress.dorefa``)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from typing_extensions import override

from imbcompress.callbacks.base import StructuralCompression, task_of
from imbcompress.compress.dorefa import METHOD, check_settings, dorefa_record
from imbcompress.compress.size import model_size


class QuantizationAwareTraining(StructuralCompression):
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

    method = METHOD
    legacy_setting_keys = ("weight_bits", "activation_bits")

    def __init__(self, weight_bits: int = 4, activation_bits: int = 8, exclude: list[str] | None = None) -> None:
        super().__init__()
        check_settings(weight_bits, activation_bits, exclude, prefix="QuantizationAwareTraining.")
        self.weight_bits = weight_bits
        self.activation_bits = activation_bits
        self.exclude = None if exclude is None else list(exclude)

    @property
    def settings(self) -> dict[str, Any]:
        """Bit widths and the configured ``exclude`` (None: the model's default)."""
        return {"weight_bits": self.weight_bits, "activation_bits": self.activation_bits, "exclude": self.exclude}

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        task = task_of(pl_module, "QuantizationAwareTraining")
        build = lambda: dorefa_record(task.model, self.weight_bits, self.activation_bits, self.exclude)  # noqa: E731
        if self.apply_once(task, build):
            assert self.record is not None
            size = model_size(task.model, activation_bits=self.activation_bits)
            rank_zero_info(
                f"DoReFa (A{self.activation_bits}, W{self.weight_bits}) on {len(self.record['layers'])} layers and "
                f"{len(self.record['activations'])} activations: weights {size['weight_storage_mib']:.3f} MiB, "
                f"[C24] column {size['paper_mibit']:.2f} Mib"
            )

    @classmethod
    def describe(cls, record: dict[str, Any], model: nn.Module) -> dict[str, Any]:
        """Bit widths, the resolved ``exclude`` and the quantized modules, for ``metrics.json``."""
        return {
            "method": METHOD,
            "weight_bits": record["weight_bits"],
            "activation_bits": record["activation_bits"],
            "exclude": record.get("exclude"),
            "layers": record.get("layers"),
            "activations": record.get("activations"),
        }
