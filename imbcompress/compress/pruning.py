"""Filter-rank pruning with physical removal (SPEC §4.1, [C24] Sec. 4.4, Distiller's L1-ranked filter pruner).

A *prunable layer* is the inner conv of a residual block: ``conv1`` of every CIFAR-ResNet ``BasicBlock`` and
``expand_conv`` of every MobileNet-V2 inverted-residual block with an expansion (``model.prunable_blocks()``).
The importance of an output filter is the mean |w| over its (C_in, k, k) weights. Pruning keeps the top-n filters
of each layer and slices, in place, the conv's output channels, its BatchNorm, (MobileNet-V2) the depthwise conv
and its BatchNorm, and the consumer conv's input channels (``conv2`` / ``project_conv``). The residual stream
width, the stem and the classifier never change; every layer keeps at least one filter.

How many filters each layer keeps (a *plan*, ``{block name: kept filters}``) comes from one target:

- ``preset``: ``severe`` keeps one filter per layer ([C24]'s 97.5 %: exactly 6,688 NNZ on ResNet-20 option A and
  21,344 on ResNet-56 option B); ``mild`` and ``moderate`` are ``target_sparsity`` 0.153 and 0.712.
- ``target_sparsity`` (fraction of the model's conv + linear weights removed). The solver keeps the same fraction
  f of the filters in every layer (``max(1, round(f * n))``), finds by bisection the largest f that removes at
  least the target, then greedily adds or removes single filters (any layer, the move that brings the removed
  count closest to the target, first layer on ties) while that gets closer. The result depends only on the
  architecture, never on the weights, so every rank and every replay computes the same plan.
- ``layer_fractions`` ({block or conv name: fraction pruned}; layers not named are not pruned) or
  ``stage_fractions`` (one fraction per stage: consecutive blocks with the same output width, i.e. ``layer1..3``
  of a ResNet and the six expanding groups of MobileNet-V2). A fraction p removes ``floor(p * n)`` filters.

The structural record ``{"kind": "filter_pruning", "kept_filters": {...}}`` replays a plan: it ranks by the current
weights (the shapes do not depend on them; the weights come from the state dict afterwards).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from imbcompress.compress.size import dense_weight_count
from imbcompress.compress.transforms import register_transform

Preset = Literal["mild", "moderate", "severe"]
Engine = Literal["auto", "builtin", "torch_pruning"]
ENGINES = ("auto", "builtin", "torch_pruning")
PRESET_SPARSITY: dict[str, float] = {"mild": 0.153, "moderate": 0.712}
PRESETS = ("mild", "moderate", "severe")
_OUT_NAMES = ("weight", "weight_orig", "weight_mask", "bias", "bias_orig", "bias_mask")
_IN_NAMES = ("weight", "weight_orig", "weight_mask")
_BN_NAMES = ("weight", "bias", "running_mean", "running_var")


@dataclass(frozen=True)
class PrunableLayer:
    """One prunable conv and the modules whose channels shrink with its filters."""

    name: str
    conv_name: str
    conv: nn.Conv2d
    bn: nn.BatchNorm2d
    consumer: nn.Conv2d
    depthwise: nn.Conv2d | None = None
    depthwise_bn: nn.BatchNorm2d | None = None

    @property
    def filters(self) -> int:
        return self.conv.out_channels

    @property
    def nnz_per_filter(self) -> int:
        """Conv + linear weights removed with one filter."""
        count = self.conv.weight[0].numel() + self.consumer.weight[:, 0].numel()
        return count + (self.depthwise.weight[0].numel() if self.depthwise is not None else 0)

    @property
    def stream_width(self) -> int:
        return self.consumer.out_channels

    @property
    def overlaps(self) -> tuple[tuple[str, int], ...]:
        """Weights shared with another layer's filters (none: a block's inner conv feeds only its own block)."""
        return ()


class PlanUnit(Protocol):
    """What the planner needs of a prunable layer (a :class:`PrunableLayer` or a Torch-Pruning graph unit).

    ``overlaps`` lists ``(other unit, weights per (filter, other filter) pair)`` for weight tensors whose output
    channels shrink with this unit and input channels with the other: the planner counts them once.
    """

    @property
    def name(self) -> str: ...

    @property
    def conv_name(self) -> str: ...

    @property
    def filters(self) -> int: ...

    @property
    def nnz_per_filter(self) -> int: ...

    @property
    def stream_width(self) -> int: ...

    @property
    def overlaps(self) -> tuple[tuple[str, int], ...]: ...


def _layer_of(name: str, block: Any) -> PrunableLayer:
    if getattr(block, "expand_conv", None) is not None:
        if block.dw_conv.groups != block.dw_conv.in_channels:
            raise ValueError(f"block {name!r}: dw_conv is not depthwise (groups={block.dw_conv.groups})")
        conv_name = f"{name}.expand_conv"
        return PrunableLayer(
            name, conv_name, block.expand_conv, block.expand_bn, block.project_conv, block.dw_conv, block.dw_bn
        )
    if all(isinstance(getattr(block, attr, None), nn.Module) for attr in ("conv1", "bn1", "conv2")):
        return PrunableLayer(name, f"{name}.conv1", block.conv1, block.bn1, block.conv2)
    raise ValueError(f"block {name!r} ({type(block).__name__}) has neither conv1/bn1/conv2 nor an expand_conv")


def prunable_layers(model: nn.Module) -> list[PrunableLayer]:
    """The model's prunable layers, in module order; raises if there are none."""
    blocks = getattr(model, "prunable_blocks", None)
    if blocks is None:
        raise ValueError(
            f"filter pruning needs a model with prunable_blocks() (imbcompress.models); got {type(model).__name__}"
        )
    layers = [_layer_of(name, block) for name, block in blocks()]
    if not layers:
        raise ValueError(f"model {type(model).__name__} has no prunable layers (no residual block can shrink)")
    return layers


def filter_importance(conv: nn.Conv2d) -> Tensor:
    """Mean |w| of each output filter over its (C_in, k, k) weights."""
    return conv.weight.detach().abs().flatten(1).mean(dim=1)


def top_filters(conv: nn.Conv2d, keep: int) -> Tensor:
    """Indices (ascending) of the ``keep`` most important filters; ties go to the lower index."""
    order = torch.sort(filter_importance(conv).float().cpu(), descending=True, stable=True).indices
    return order[:keep].sort().values


# ---------------------------------------------------------------------------------------------- physical slicing
def _take(module: nn.Module, names: Sequence[str], dim: int, index: Tensor) -> None:
    """Slice the named parameters, buffers and (torch.nn.utils.prune) plain tensors of ``module`` along ``dim``."""
    for name in names:
        param, buffer = module._parameters.get(name), module._buffers.get(name)
        if param is not None:
            # Same Parameter object: references held elsewhere (quantizers, ModelPruning) stay valid.
            param.data = param.data.index_select(dim, index.to(param.device)).clone()
            param.grad = None  # a gradient of the old shape would break the next optimizer step
        elif buffer is not None:
            module._buffers[name] = buffer.index_select(dim, index.to(buffer.device)).clone()
        elif isinstance(module.__dict__.get(name), Tensor):
            tensor = module.__dict__[name]
            module.__dict__[name] = tensor.index_select(dim, index.to(tensor.device))


def _slice_bn(bn: nn.BatchNorm2d, index: Tensor) -> None:
    _take(bn, _BN_NAMES, 0, index)
    bn.num_features = len(index)


def _slice_layer(layer: PrunableLayer, index: Tensor) -> None:
    _take(layer.conv, _OUT_NAMES, 0, index)
    layer.conv.out_channels = len(index)
    _slice_bn(layer.bn, index)
    if layer.depthwise is not None and layer.depthwise_bn is not None:
        _take(layer.depthwise, _OUT_NAMES, 0, index)
        layer.depthwise.in_channels = layer.depthwise.out_channels = layer.depthwise.groups = len(index)
        _slice_bn(layer.depthwise_bn, index)
    _take(layer.consumer, _IN_NAMES, 1, index)
    layer.consumer.in_channels = len(index)


def _check_kept(layers: Sequence[PrunableLayer], kept: Mapping[str, int]) -> None:
    by_name = {layer.name: layer for layer in layers}
    unknown = sorted(set(kept) - set(by_name))
    if unknown:
        raise ValueError(f"kept_filters names unknown layers {unknown}; prunable layers: {sorted(by_name)}")
    for name, count in kept.items():
        if not isinstance(count, int) or not 1 <= count <= by_name[name].filters:
            raise ValueError(f"kept_filters[{name!r}] = {count!r}; allowed: an int in [1, {by_name[name].filters}]")


@torch.no_grad()
def prune_filters(model: nn.Module, kept: Mapping[str, int]) -> dict[str, list[int]]:
    """Physically keep the ``kept[name]`` most important filters of each named prunable layer, in place.

    Args:
        model: A model with ``prunable_blocks()``.
        kept: Block name -> number of filters to keep (>= 1, <= current count); unnamed layers are untouched.

    Returns:
        Block name -> indices (into the layer's filters before pruning) of the filters kept.
    """
    layers = prunable_layers(model)
    _check_kept(layers, kept)  # validate everything before changing anything
    chosen = {}
    for layer in layers:
        if layer.name in kept:
            index = top_filters(layer.conv, kept[layer.name])
            _slice_layer(layer, index)
            chosen[layer.name] = index.tolist()
    return chosen


def pruning_record(kept: Mapping[str, int], settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The structural record of a plan (plain data; ``settings`` only documents where the plan came from)."""
    record: dict[str, Any] = {"kind": "filter_pruning", "kept_filters": {name: int(n) for name, n in kept.items()}}
    if settings is not None:
        record["settings"] = dict(settings)
    return record


def resolve_engine(model: nn.Module, engine: str) -> Literal["builtin", "torch_pruning"]:
    """The engine that prunes ``model``: ``auto`` is the built-in one for the registry models (their exact [C24]
    counts), Torch-Pruning for every other model."""
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is unknown; allowed: {', '.join(ENGINES)}")
    has_blocks = hasattr(model, "prunable_blocks")
    if engine == "builtin" and not has_blocks:
        raise ValueError(
            f"engine='builtin' prunes only the registry models (they have prunable_blocks()); "
            f"{type(model).__name__} needs engine='torch_pruning' (or 'auto')"
        )
    if engine == "builtin" or (engine == "auto" and has_blocks):
        return "builtin"
    return "torch_pruning"


@register_transform("filter_pruning")
def _replay_filter_pruning(model: nn.Module, record: dict[str, Any]) -> None:
    if record.get("engine", "builtin") == "torch_pruning":
        from imbcompress.compress.pruning_tp import replay_graph_record  # Torch-Pruning only when it is used

        replay_graph_record(model, record)
        return
    prune_filters(model, record["kept_filters"])


# ---------------------------------------------------------------------------------------------- planning
def _removed(layers: Sequence[PlanUnit], kept: Mapping[str, int]) -> int:
    """Conv + linear weights a plan removes (exact: weights tied to two units' filters are counted once)."""
    removed = sum((layer.filters - kept[layer.name]) * layer.nnz_per_filter for layer in layers)
    filters = {layer.name: layer.filters for layer in layers}
    for layer in layers:
        for other, weights in layer.overlaps:
            removed -= weights * (layer.filters - kept[layer.name]) * (filters[other] - kept[other])
    return removed


def _uniform(layers: Sequence[PlanUnit], keep_fraction: float) -> dict[str, int]:
    return {layer.name: min(layer.filters, max(1, round(keep_fraction * layer.filters))) for layer in layers}


def _moves(layers: Sequence[PlanUnit], kept: Mapping[str, int]) -> Iterator[tuple[str, int, int]]:
    """Single-filter changes ``(name, new count, change in removed weights)`` that respect the bounds."""
    shared = any(layer.overlaps for layer in layers)
    before = _removed(layers, kept) if shared else 0
    for layer in layers:
        for step in (-1, 1):
            count = kept[layer.name] + step
            if 1 <= count <= layer.filters:
                change = -step * layer.nnz_per_filter
                if shared:
                    change = _removed(layers, {**kept, layer.name: count}) - before
                yield layer.name, count, change


def _fix_up(layers: Sequence[PlanUnit], kept: dict[str, int], target_removed: float) -> dict[str, int]:
    error = _removed(layers, kept) - target_removed
    while True:
        best = min(_moves(layers, kept), key=lambda move: abs(error + move[2]), default=None)
        if best is None or abs(error + best[2]) >= abs(error):
            return kept
        kept[best[0]] = best[1]
        error += best[2]


def max_sparsity(model: nn.Module, layers: Sequence[PlanUnit] | None = None) -> float:
    """Largest fraction of conv + linear weights filter pruning can remove (one filter kept per layer).

    Args:
        model: The model.
        layers: Its prunable units (default: the built-in engine's :func:`prunable_layers`).
    """
    layers = prunable_layers(model) if layers is None else layers
    return _removed(layers, {layer.name: 1 for layer in layers}) / dense_weight_count(model)


def solve_target_sparsity(
    model: nn.Module, target_sparsity: float, layers: Sequence[PlanUnit] | None = None
) -> dict[str, int]:
    """Per-layer kept-filter counts removing ``target_sparsity`` of the conv + linear weights (rule above)."""
    layers = prunable_layers(model) if layers is None else layers
    limit = max_sparsity(model, layers)
    if not 0.0 <= target_sparsity <= limit:
        raise ValueError(
            f"target_sparsity={target_sparsity} is not reachable on this model; allowed: [0, {limit:.4f}] "
            f"({limit:.4f} keeps one filter per prunable layer)"
        )
    target_removed = target_sparsity * dense_weight_count(model)
    low, high = 0.0, 1.0  # keep fractions: removed(low) >= target > removed(high) while bisecting
    for _ in range(50):
        middle = (low + high) / 2
        if _removed(layers, _uniform(layers, middle)) >= target_removed:
            low = middle
        else:
            high = middle
    return _fix_up(layers, _uniform(layers, low), target_removed)


def _kept_after(filters: int, fraction: float) -> int:
    return max(1, filters - math.floor(fraction * filters + 1e-9))


def _from_layer_fractions(layers: Sequence[PlanUnit], fractions: Mapping[str, float]) -> dict[str, int]:
    names = {layer.name: layer for layer in layers} | {layer.conv_name: layer for layer in layers}
    unknown = sorted(set(fractions) - set(names))
    if unknown:
        raise ValueError(f"layer_fractions names unknown layers {unknown}; allowed: {sorted(names)}")
    kept = {layer.name: layer.filters for layer in layers}
    for name, fraction in fractions.items():
        layer = names[name]
        kept[layer.name] = _kept_after(layer.filters, fraction)
    return kept


def stages(layers: Sequence[PlanUnit]) -> list[list[PlanUnit]]:
    """Group consecutive prunable layers whose block output (residual stream) width is the same."""
    groups: list[list[PlanUnit]] = []
    for layer in layers:
        if groups and groups[-1][-1].stream_width == layer.stream_width:
            groups[-1].append(layer)
        else:
            groups.append([layer])
    return groups


def _from_stage_fractions(layers: Sequence[PlanUnit], fractions: Sequence[float]) -> dict[str, int]:
    groups = stages(layers)
    if len(fractions) != len(groups):
        raise ValueError(
            f"stage_fractions has {len(fractions)} values but the model has {len(groups)} stages "
            f"(first blocks: {[group[0].name for group in groups]}); give one fraction per stage"
        )
    return {layer.name: _kept_after(layer.filters, f) for group, f in zip(groups, fractions) for layer in group}


def validate_target(
    preset: str | None = None,
    target_sparsity: float | None = None,
    layer_fractions: Mapping[str, float] | None = None,
    stage_fractions: Sequence[float] | None = None,
) -> None:
    """Raise ``ValueError`` unless exactly one valid pruning target is given (no model needed)."""
    given = [name for name, value in _targets(preset, target_sparsity, layer_fractions, stage_fractions) if value]
    if len(given) != 1:
        raise ValueError(
            f"give exactly one pruning target among preset, target_sparsity, layer_fractions, stage_fractions; "
            f"got {given or 'none'}"
        )
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"preset={preset!r} is unknown; allowed: {', '.join(PRESETS)}")
    if target_sparsity is not None and not 0.0 <= target_sparsity < 1.0:
        raise ValueError(f"target_sparsity={target_sparsity} is outside the allowed range [0, 1)")
    named = {**dict(layer_fractions or {}), **{f"stage {i}": f for i, f in enumerate(stage_fractions or [])}}
    for name, fraction in named.items():
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"pruning fraction of {name!r} = {fraction} is outside the allowed range [0, 1)")


def _targets(*values: Any) -> list[tuple[str, bool]]:
    names = ("preset", "target_sparsity", "layer_fractions", "stage_fractions")
    return [(name, value is not None) for name, value in zip(names, values)]


def plan_kept_filters(
    model: nn.Module,
    preset: str | None = None,
    target_sparsity: float | None = None,
    layer_fractions: Mapping[str, float] | None = None,
    stage_fractions: Sequence[float] | None = None,
    layers: Sequence[PlanUnit] | None = None,
) -> dict[str, int]:
    """Kept-filter count per prunable unit for exactly one target (see the module docstring).

    ``layers``: the units to plan for (default: the built-in engine's :func:`prunable_layers`; the Torch-Pruning
    engine passes its graph units).
    """
    validate_target(preset, target_sparsity, layer_fractions, stage_fractions)
    layers = prunable_layers(model) if layers is None else layers
    if preset == "severe":
        return {layer.name: 1 for layer in layers}
    if preset is not None:
        target_sparsity = PRESET_SPARSITY[preset]
    if target_sparsity is not None:
        return solve_target_sparsity(model, target_sparsity, layers)
    if layer_fractions is not None:
        return _from_layer_fractions(layers, layer_fractions)
    return _from_stage_fractions(layers, stage_fractions or [])
