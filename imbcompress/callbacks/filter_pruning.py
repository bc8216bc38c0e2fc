"""Lightning adapter for filter-rank pruning (``imbcompress.compress.pruning``)."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from typing_extensions import override

from imbcompress.callbacks.base import StructuralCompression, task_of
from imbcompress.compress.pruning import (
    ENGINES,
    Engine,
    plan_kept_filters,
    pruning_record,
    resolve_engine,
    validate_target,
)
from imbcompress.compress.size import dense_weight_count

METHOD = "filter_pruning"  # the structural record's kind (compress/pruning.py)


class FilterPruning(StructuralCompression):
    """Physically remove the weakest filters of every residual block's inner conv, once, before training.

    Filters are ranked by mean |w| (SPEC §4.1); the conv, its BatchNorm and the next conv's input channels shrink,
    so the pruned model is a smaller ordinary network. Pruning happens in ``setup()``, before the optimizer and
    DDP exist: with ``model.init_from`` it prunes the trained weights, otherwise the random initialisation. The
    plan (kept filters per layer) is computed on rank 0 and broadcast, and logged as a structural record so
    checkpoints reload with the pruned shapes. Give exactly one target. Any conv net (timm, torchvision) is pruned
    through Torch-Pruning's dependency graph with the same planner and ranking (docs/pruning.md, "Engines").

    Args:
        preset: [C24]'s levels: "mild" (15.3 % of the conv + linear weights removed), "moderate" (71.2 %) or
            "severe" (one filter kept per pruned conv, 97.5 % on ResNet-20).
        target_sparsity: Fraction in [0, 1) of the conv + linear weights (NNZ) to remove; per-layer filter counts
            are solved for (same kept fraction in every layer, then a greedy per-filter fix-up).
        layer_fractions: Fraction in [0, 1) of the filters to remove, per block or conv name (e.g. "layer1.0" or
            "layer1.0.conv1"); blocks not named are not pruned.
        stage_fractions: Fraction in [0, 1) of the filters to remove in each stage (ResNet: layer1, layer2,
            layer3; MobileNet-V2: the six groups of expanding blocks; other models: consecutive prunable convs whose
            consumer has the same output width).
        engine: What slices the model: "builtin" (the registry's CIFAR ResNets and MobileNet-V2), "torch_pruning"
            (any conv net: Torch-Pruning's dependency graph finds the prunable convs and what shrinks with them;
            the stem, the classifier and residual sums keep their width) or "auto" (built-in for the registry
            models, so [C24]'s counts do not move; Torch-Pruning otherwise).
    """

    method = METHOD

    def __init__(
        self,
        preset: Literal["mild", "moderate", "severe"] | None = None,
        target_sparsity: float | None = None,
        layer_fractions: dict[str, float] | None = None,
        stage_fractions: list[float] | None = None,
        engine: Engine = "auto",
    ) -> None:
        super().__init__()
        validate_target(preset, target_sparsity, layer_fractions, stage_fractions)
        if engine not in ENGINES:
            raise ValueError(f"FilterPruning.engine={engine!r} is unknown; allowed: {', '.join(ENGINES)}")
        self.engine = engine
        self.preset = preset
        self.target_sparsity = target_sparsity
        self.layer_fractions = dict(layer_fractions) if layer_fractions is not None else None
        self.stage_fractions = list(stage_fractions) if stage_fractions is not None else None

    @property
    def target(self) -> dict[str, Any]:
        """The pruning target (``plan_kept_filters``'s arguments)."""
        return {
            "preset": self.preset,
            "target_sparsity": self.target_sparsity,
            "layer_fractions": self.layer_fractions,
            "stage_fractions": self.stage_fractions,
        }

    @property
    def settings(self) -> dict[str, Any]:
        """The target and the engine as plain data (stored in the structural record; identifies an applied plan)."""
        return self.target | {"engine": self.engine}

    def _plan(self, trainer: pl.Trainer, model: nn.Module) -> dict[str, Any]:
        if resolve_engine(model, self.engine) == "builtin":
            return pruning_record(plan_kept_filters(model, **self.target))
        from imbcompress.compress.pruning_tp import plan_graph_record  # Torch-Pruning only when it is used

        shape = getattr(getattr(trainer, "datamodule", None), "image_shape", None)
        return plan_graph_record(model, input_size=shape, **self.target)

    def _plan_on_rank_zero(self, trainer: pl.Trainer, model: nn.Module) -> dict[str, Any]:
        # Rank 0 decides (kept filters and, for Torch-Pruning, their indices); an error is broadcast too, so every
        # rank raises instead of waiting for the plan.
        message: dict[str, Any] = {}
        if trainer.is_global_zero:
            try:
                # The dense count, not the nonzeros: the record must not depend on the weights (replay, resume).
                message = self._plan(trainer, model) | {"nnz_before": dense_weight_count(model)}
            except ValueError as err:
                message = {"error": str(err)}
        message = trainer.strategy.broadcast(message, src=0)
        if "error" in message:
            raise ValueError(f"FilterPruning({self._describe()}): {message['error']}")
        return message

    def _describe(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self.target.items() if value is not None)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        task = task_of(pl_module, "FilterPruning")
        self.apply_once(task, lambda: self._plan_on_rank_zero(trainer, task.model))

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        record = self.compression_record()
        rank_zero_info(
            f"FilterPruning({self._describe()}) with the {record['engine_used']} engine: NNZ {record['nnz_before']} "
            f"-> {record['nnz_after']} (sparsity {record['sparsity']:.4f}), kept filters {record['kept_filters']}"
        )

    @classmethod
    def describe(cls, record: dict[str, Any], model: nn.Module) -> dict[str, Any]:
        """Settings, the engine that pruned (``engine_used``), per-layer kept filter counts and NNZ before/after, for
        ``metrics.json["compression"]``.

        ``nnz_after`` is the pruned structure's conv + linear weight count (the [C24] NNZ of the pruned model).
        """
        before, after = record.get("nnz_before"), dense_weight_count(model)
        return {
            "method": METHOD,
            **cls.settings_of(record),
            "engine_used": record.get("engine", "builtin"),
            "kept_filters": record.get("kept_filters"),
            "nnz_before": before,
            "nnz_after": after,
            "sparsity": 1.0 - after / before if before else None,
        }
