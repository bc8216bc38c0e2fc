"""Filter pruning of any architecture through Torch-Pruning's dependency graph (the ``torch_pruning`` engine).

The planner and the ranking are the built-in ones (``imbcompress.compress.pruning``: a plan of kept filters per
prunable conv, the top filters by mean |w|); Torch-Pruning is only the engine that finds which tensors shrink together
and slices them, given exact filter indices.

*Prunable convs* are found from the dependency graph: for every conv, in execution order, the group of layers
coupled to its output channels. A group is a prunable unit, named by its first conv in execution order (whose
filters are ranked), unless it touches the stem (the first conv executed), the classifier, a residual sum (an add:
the residual stream keeps its width, as in [C24]), or a grouped conv that is not depthwise. On the CIFAR ResNets
this gives exactly the built-in engine's layers (``conv1`` of every block); on MobileNet-V2 the expansion convs and
also the projections of the two single-block stages, which the built-in engine leaves alone.

The structural record stores the kept filter indices of every unit (plain data) and the example input size; replay
builds the graph of the dense model again and removes the complement, so it depends neither on the weights nor on
Torch-Pruning's own serialisation (``tp.state_dict`` pickles modules and is not used).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from imbcompress.compress.pruning import plan_kept_filters, top_filters
from imbcompress.models.trace import eval_mode, example_input, execution_order, input_sizes, traced_size

ENGINE = "torch_pruning"
_RESIDUAL_OPS = ("AddBackward", "SubBackward")


@dataclass(frozen=True)
class GraphUnit:
    """One prunable conv (the first of its dependency group) and what one of its filters costs."""

    name: str
    conv: nn.Conv2d
    nnz_per_filter: int
    stream_width: int
    overlaps: tuple[tuple[str, int], ...] = ()

    @property
    def conv_name(self) -> str:
        return self.name

    @property
    def filters(self) -> int:
        return self.conv.out_channels


@contextmanager
def _tracing(model: nn.Module) -> Iterator[None]:
    # Torch-Pruning traces through autograd; the example pass must not touch BatchNorm statistics.
    with torch.inference_mode(False), torch.enable_grad(), eval_mode(model):
        yield


def dependency_graph(model: nn.Module, input_size: Sequence[int] | None = None) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model``, traced on one example image (eval mode)."""
    size = input_sizes(model, input_size)[0]
    with _tracing(model):
        return tp.DependencyGraph().build_dependency(model, example_input(model, size), verbose=False)


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def _shrinking(graph: tp.DependencyGraph, group: Any) -> tuple[dict[nn.Module, int], dict[nn.Module, int]]:
    """Conv/linear layers whose output / input channels shrink with one filter of the group's root, and by how many
    (a group built for one index). A depthwise conv's input channels shrink through its output channels."""
    outs: dict[nn.Module, int] = {}
    ins: dict[nn.Module, int] = {}
    for dep, idxs in group:
        module = dep.target.module
        if not isinstance(module, nn.Conv2d | nn.Linear):
            continue
        if graph.is_out_channel_pruning_fn(dep.handler):
            outs[module] = outs.get(module, 0) + len(idxs)
        elif graph.is_in_channel_pruning_fn(dep.handler) and not _is_depthwise(module):
            ins[module] = ins.get(module, 0) + len(idxs)
    return outs, ins


def _weight_shape(module: nn.Module) -> tuple[int, ...]:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return tuple(weight.shape)


def _per_channel(module: nn.Module, dim: int) -> int:
    shape = _weight_shape(module)
    return math.prod(shape) // shape[dim]


def _groups(module: nn.Module) -> int:
    return module.groups if isinstance(module, nn.Conv2d) else 1


def _blocked(graph: tp.DependencyGraph, group: Any, kept: set[nn.Module]) -> bool:
    """Whether a group touches a layer that stays whole, a residual sum or a grouped (non-depthwise) conv."""
    for dep, _ in group:
        module = dep.target.module
        if module in kept:
            return True
        if dep.target.type == tp.ops.OPTYPE.ELEMENTWISE and _op_name(dep.target).startswith(_RESIDUAL_OPS):
            return True
        if isinstance(module, nn.Conv2d) and _groups(module) > 1 and not _is_depthwise(module):
            return True
        if isinstance(module, nn.Linear) and graph.is_out_channel_pruning_fn(dep.handler):
            return True
    return False


def _op_name(node: Any) -> str:
    grad_fn = getattr(node, "grad_fn", None)
    return grad_fn.name() if grad_fn is not None else ""


def _kept_whole(model: nn.Module, order: list[str]) -> set[nn.Module]:
    """The stem (first conv executed) and the classifier (``model.classifier``, else the last linear executed)."""
    modules = dict(model.named_modules())
    convs = [modules[name] for name in order if isinstance(modules[name], nn.Conv2d)]
    linears = [modules[name] for name in order if isinstance(modules[name], nn.Linear)]
    classifier = getattr(model, "classifier", None)
    heads = [classifier] if isinstance(classifier, nn.Linear) else linears[-1:]
    return set(convs[:1] + heads)


@dataclass
class _Found:
    name: str
    conv: nn.Conv2d
    outs: dict[nn.Module, int]
    ins: dict[nn.Module, int]


def _find_groups(model: nn.Module, input_size: Sequence[int] | None) -> tuple[list[_Found], dict[nn.Module, int]]:
    order = execution_order(model, input_size)
    modules = dict(model.named_modules())
    kept = _kept_whole(model, order)
    graph = dependency_graph(model, input_size)
    covered: set[nn.Module] = set()
    found = []
    for name in order:
        conv = modules[name]
        if not isinstance(conv, nn.Conv2d) or conv in covered or conv not in graph.module2node:
            continue
        group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0])
        outs, ins = _shrinking(graph, group)
        covered.update(outs)
        if not _blocked(graph, group, kept):
            found.append(_Found(name, conv, outs, ins))
    return found, {modules[name]: index for index, name in enumerate(order)}


def _unit(found: _Found, all_found: list[_Found], position: dict[nn.Module, int]) -> GraphUnit:
    nnz = sum(n * _per_channel(m, 0) for m, n in found.outs.items()) + sum(
        n * _per_channel(m, 1) for m, n in found.ins.items()
    )
    overlaps = []
    for other in all_found:
        if other is not found:
            for module in found.outs.keys() & other.ins.keys():
                shape = _weight_shape(module)
                pair = math.prod(shape[2:])  # weights per (output channel, input channel) pair
                overlaps.append((other.name, pair * found.outs[module] * other.ins[module]))
    consumers = sorted(found.ins, key=lambda module: position.get(module, -1))
    last = consumers[-1] if consumers else None
    width = getattr(last, "out_channels", getattr(last, "out_features", 0))
    return GraphUnit(found.name, found.conv, nnz, int(width), tuple(overlaps))


def graph_units(model: nn.Module, input_size: Sequence[int] | None = None) -> list[GraphUnit]:
    """The model's prunable units (see the module docstring), in execution order; raises if there are none."""
    found, position = _find_groups(model, input_size)
    if not found:
        raise ValueError(
            f"model {type(model).__name__} has no prunable conv: every conv's filters are tied to the stem, the "
            "classifier or a residual sum"
        )
    return [_unit(item, found, position) for item in found]


def _check_indices(model: nn.Module, kept_indices: Mapping[str, Sequence[int]]) -> None:
    for name, indices in kept_indices.items():
        try:
            conv = model.get_submodule(name)
        except AttributeError:
            conv = None
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"kept_indices names {name!r}, which is not a conv of {type(model).__name__}")
        filters = conv.out_channels
        if not indices or len(set(indices)) != len(indices) or not all(0 <= int(i) < filters for i in indices):
            raise ValueError(
                f"kept_indices[{name!r}] = {list(indices)!r}; allowed: distinct filter indices in [0, {filters})"
            )


@torch.no_grad()
def _prune_units(graph: tp.DependencyGraph, model: nn.Module, kept_indices: Mapping[str, Sequence[int]]) -> None:
    for name, indices in kept_indices.items():
        conv: Any = model.get_submodule(name)
        removed = sorted(set(range(conv.out_channels)) - {int(i) for i in indices})
        if removed:
            with torch.enable_grad():
                group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=removed)
            group.prune(record_history=False)


def prune_with_graph(
    model: nn.Module, kept_indices: Mapping[str, Sequence[int]], input_size: Sequence[int] | None = None
) -> None:
    """Keep exactly ``kept_indices[conv name]`` (filter indices of the dense conv) of each named conv, in place.

    Everything coupled to those filters in the dependency graph shrinks with them (BatchNorm, depthwise convs,
    consumers' input channels). All names and indices are checked before anything changes.
    """
    _check_indices(model, kept_indices)
    graph = dependency_graph(model, input_size)
    _prune_units(graph, model, kept_indices)


def graph_record(
    kept: Mapping[str, int], kept_indices: Mapping[str, Sequence[int]], input_size: Sequence[int]
) -> dict[str, Any]:
    """The structural record of a plan pruned with this engine (plain data)."""
    return {
        "kind": "filter_pruning",
        "engine": ENGINE,
        "kept_filters": {name: int(count) for name, count in kept.items()},
        "kept_indices": {name: [int(i) for i in indices] for name, indices in kept_indices.items()},
        "input_size": [int(size) for size in input_size],
    }


def replay_graph_record(model: nn.Module, record: Mapping[str, Any]) -> None:
    """Rebuild the pruned shapes of a :func:`graph_record` on the dense model (the weights are loaded after)."""
    prune_with_graph(model, record["kept_indices"], record.get("input_size"))


def plan_graph_record(model: nn.Module, input_size: Sequence[int] | None = None, **target: Any) -> dict[str, Any]:
    """Plan one pruning target (``plan_kept_filters``'s arguments) on the graph units and make its record.

    The kept filters of each pruned unit are its top filters by mean |w| (``top_filters``), given to Torch-Pruning
    as exact indices.
    """
    size = traced_size(model, input_size)[0]
    units = graph_units(model, size)
    kept = plan_kept_filters(model, layers=units, **target)
    pruned = [unit for unit in units if kept[unit.name] < unit.filters]
    indices = {unit.name: top_filters(unit.conv, kept[unit.name]).tolist() for unit in pruned}
    return graph_record(kept, indices, size)
