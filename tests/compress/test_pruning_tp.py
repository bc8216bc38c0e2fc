"""FilterPruning's Torch-Pruning engine: same shapes and outputs as the built-in engine for the same plan, exact NNZ
accounting on timm models, plain-data records that replay on a dense model, bad input."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from tiny import randomize_batchnorm
from torch import nn

from imbcompress.compress.pruning import (
    _removed,
    plan_kept_filters,
    prunable_layers,
    prune_filters,
    resolve_engine,
    top_filters,
)
from imbcompress.compress.pruning_tp import graph_units, plan_graph_record, prune_with_graph
from imbcompress.compress.size import dense_weight_count, model_size
from imbcompress.compress.transforms import apply_transform
from imbcompress.models import build_model


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


@pytest.mark.parametrize(("name", "shortcut"), [("resnet20", "A"), ("resnet20", "B"), ("mobilenetv2", None)])
def test_engines_give_the_same_model_for_the_same_plan(name, shortcut):
    torch.manual_seed(0)
    dense = randomize_batchnorm(build_model(name, 10, shortcut))
    layers = prunable_layers(dense)
    units = {unit.name: unit for unit in graph_units(dense)}
    for layer in layers:  # the graph finds the built-in layers, with the same cost per filter
        unit = units[layer.conv_name]
        assert (unit.filters, unit.nnz_per_filter, unit.stream_width) == (
            layer.filters,
            layer.nnz_per_filter,
            layer.stream_width,
        )
    plan = plan_kept_filters(dense, target_sparsity=0.5)
    builtin, graph = copy.deepcopy(dense), copy.deepcopy(dense)
    prune_filters(builtin, plan)
    prune_with_graph(graph, {layer.conv_name: top_filters(layer.conv, plan[layer.name]).tolist() for layer in layers})
    assert _shapes(graph) == _shapes(builtin) != _shapes(dense)
    inputs = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(graph(inputs), builtin(inputs))


def test_graph_units_of_the_resnets_are_the_builtin_layers_and_severe_matches_c24():
    model = build_model("resnet20", 10, "A")
    assert [unit.name for unit in graph_units(model)] == [layer.conv_name for layer in prunable_layers(model)]
    record = plan_graph_record(model, preset="severe")
    apply_transform(model, record)
    assert model_size(model)["nnz"] == 6_688  # [C24]'s severe level, through Torch-Pruning


@pytest.mark.parametrize(("arch", "stem"), [("timm:mobilenetv3_small_050", "conv_stem"), ("timm:resnet10t", "conv1.0")])
def test_planner_counts_the_removed_weights_exactly(arch, stem):
    # MobileNet-V3's units are chained (an SE bottleneck feeds a conv whose filters belong to another unit): weights
    # tied to two units' filters must be counted once, or a target sparsity would be missed.
    model = build_model(arch, 5)
    units = graph_units(model)
    stem_shape, classifier_shape = model.net.get_submodule(stem).weight.shape, model.classifier.weight.shape
    dense = dense_weight_count(model)
    kept = {unit.name: max(1, unit.filters // 3) for unit in units}
    pruned = copy.deepcopy(model)
    prune_with_graph(pruned, {unit.name: list(range(kept[unit.name])) for unit in units})
    assert dense - dense_weight_count(pruned) == _removed(units, kept)
    assert pruned.net.get_submodule(stem).weight.shape == stem_shape  # the stem and the classifier stay whole
    assert pruned.classifier.weight.shape == classifier_shape
    pruned.eval()(torch.randn(2, 3, 32, 32))
    for target in (0.3, 0.6):
        plan = plan_kept_filters(model, target_sparsity=target, layers=units)
        assert _removed(units, plan) / dense == pytest.approx(target, abs=0.005)


def test_graph_record_is_plain_data_and_replays_on_a_dense_model(tmp_path):
    torch.manual_seed(0)
    model = randomize_batchnorm(build_model("timm:mobilenetv3_small_050", 4))
    record = plan_graph_record(model, input_size=(3, 40, 40), target_sparsity=0.4) | {"settings": {"x": 1}}
    assert record["engine"] == "torch_pruning" and record["input_size"] == [3, 40, 40]
    apply_transform(model, record)
    path = tmp_path / "pruned.ckpt"
    torch.save({"state_dict": model.state_dict(), "transforms": [record]}, path)
    saved = torch.load(path, weights_only=True)
    assert json.loads(json.dumps(saved["transforms"])) == [record]
    fresh = build_model("timm:mobilenetv3_small_050", 4)
    for parameter in fresh.parameters():  # replay must not depend on the weights
        nn.init.zeros_(parameter)
    apply_transform(fresh, saved["transforms"][0])
    fresh.load_state_dict(saved["state_dict"])
    inputs = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(inputs), model.eval()(inputs))


def test_pruning_keeps_the_top_filters_by_mean_abs_weight():
    model = build_model("timm:resnet10t", 3)
    conv = model.net.layer2[0].conv1
    with torch.no_grad():
        conv.weight.copy_(torch.arange(conv.out_channels, dtype=torch.float).flip(0).view(-1, 1, 1, 1))
    before = conv.weight.detach().clone()
    record = plan_graph_record(model, layer_fractions={"net.layer2.0.conv1": 0.75})
    assert record["kept_indices"] == {"net.layer2.0.conv1": list(range(32))}  # the largest |w| are the first 32
    apply_transform(model, record)
    assert torch.equal(model.net.layer2[0].conv1.weight, before[:32])


def test_tracing_leaves_batchnorm_statistics_and_modes_alone():
    model = build_model("timm:resnet10t", 3).train()
    model.net.layer1.eval()
    before = copy.deepcopy(model.state_dict())
    graph_units(model)
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in before.items())
    assert model.training and model.net.layer2.training and not model.net.layer1.training


class _StemOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.classifier = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.conv(x).mean(dim=(2, 3)))


def test_bad_input():
    with pytest.raises(ValueError, match="no prunable conv"):
        graph_units(_StemOnly())
    with pytest.raises(ValueError, match="engine='builtin' prunes only the registry models"):
        resolve_engine(build_model("timm:resnet10t", 3), "builtin")
    assert resolve_engine(build_model("resnet20", 3), "auto") == "builtin"
    model = build_model("timm:resnet10t", 3)
    before = _shapes(model)
    for indices, match in (({"net.layer1.0.bn1": [0]}, "not a conv"), ({"net.layer1.0.conv1": [0, 64]}, r"\[0, 64\)")):
        with pytest.raises(ValueError, match=match):
            prune_with_graph(model, {"net.layer2.0.conv1": [0, 1], **indices})
    assert _shapes(model) == before  # checked before anything changed
