"""Filter-rank pruning: ranking, physical thinning, plans, replay, composition."""

import copy
import json

import pytest
import torch
from tiny import randomize_batchnorm
from torch import nn
from torch.nn.utils import prune

from imbcompress.compress.pruning import (
    max_sparsity,
    plan_kept_filters,
    prunable_layers,
    prune_filters,
    pruning_record,
    stages,
    validate_target,
)
from imbcompress.compress.size import model_size
from imbcompress.compress.transforms import apply_transform
from imbcompress.models import CifarResNet, build_model


def _zeroing_hook(removed: list[int]):
    def hook(module, inputs, output):
        output = output.clone()
        output[:, removed] = 0
        return output

    return hook


def _removed(n: int, kept: list[int]) -> list[int]:
    return sorted(set(range(n)) - set(kept))


def test_keeps_the_largest_mean_abs_filters():
    model = CifarResNet(1)
    conv = model.layer1[0].conv1
    with torch.no_grad():
        for i in range(16):  # filter i is constant with |w| = (7 i mod 16) / 10, alternating sign
            conv.weight[i] = (-1) ** i * ((7 * i) % 16) / 10
    chosen = prune_filters(model, {"layer1.0": 3})
    # 7 i mod 16 is 14 at i = 2, 15 at i = 9, 13 at i = 11: the three largest.
    assert chosen == {"layer1.0": [2, 9, 11]}
    assert conv.weight.shape == (3, 16, 3, 3)
    assert torch.allclose(conv.weight[:, 0, 0, 0].abs(), torch.tensor([1.4, 1.5, 1.3]))
    block = model.layer1[0]
    assert block.bn1.num_features == block.bn1.running_mean.numel() == 3
    assert block.conv2.in_channels == 3 and block.conv2.weight.shape == (16, 3, 3, 3)
    assert conv.out_channels == 3


def test_ties_keep_the_lower_index():
    model = CifarResNet(1)
    nn.init.constant_(model.layer1[0].conv1.weight, 0.5)
    assert prune_filters(model, {"layer1.0": 2}) == {"layer1.0": [0, 1]}


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_thinned_resnet_equals_dense_with_channels_zeroed_after_bn(shortcut):
    torch.manual_seed(0)
    dense = CifarResNet(2, shortcut=shortcut)
    randomize_batchnorm(dense)
    thin = copy.deepcopy(dense)
    chosen = prune_filters(thin, {"layer1.1": 5, "layer2.0": 1, "layer3.1": 40})
    for name, kept in chosen.items():
        block = dense.get_submodule(name)
        block.bn1.register_forward_hook(_zeroing_hook(_removed(block.conv1.out_channels, kept)))
    inputs = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(thin(inputs), dense(inputs), atol=1e-5)
    assert model_size(thin)["total_params"] < model_size(dense)["total_params"]


def test_mobilenetv2_thinning_matches_zeroed_channels():
    torch.manual_seed(0)
    dense = build_model("mobilenetv2", 10)
    randomize_batchnorm(dense)
    thin = copy.deepcopy(dense)
    kept = plan_kept_filters(thin, target_sparsity=0.5)
    chosen = prune_filters(thin, kept)
    assert abs(model_size(thin, reference_nnz=model_size(dense)["nnz"])["sparsity"] - 0.5) < 0.01
    for name, indices in chosen.items():
        block = dense.get_submodule(name)
        removed = _removed(block.expand_conv.out_channels, indices)
        # The depthwise BN adds its bias to a zero channel, so zero after both BNs.
        block.expand_bn.register_forward_hook(_zeroing_hook(removed))
        block.dw_bn.register_forward_hook(_zeroing_hook(removed))
    inputs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = thin(inputs)
        assert out.shape == (2, 10)
        assert torch.allclose(out, dense(inputs), atol=1e-4)
    block = thin.blocks[1]
    n = kept["blocks.1"]
    assert block.dw_conv.groups == block.dw_conv.in_channels == block.dw_conv.out_channels == n
    assert block.dw_conv.weight.shape == (n, 1, 3, 3) and block.project_conv.weight.shape[1] == n
    assert "blocks.0" not in kept  # expansion 1: nothing to prune


@pytest.mark.parametrize(
    ("name", "shortcut", "dense_nnz", "severe_nnz"),
    [("resnet20", "A", 268_336, 6_688), ("resnet56", "B", 851_504, 21_344)],
)
def test_presets_reproduce_c24(name, shortcut, dense_nnz, severe_nnz):
    for preset, sparsity in (("severe", None), ("mild", 0.153), ("moderate", 0.712)):
        model = build_model(name, 10, shortcut)
        prune_filters(model, plan_kept_filters(model, preset=preset))
        size = model_size(model, reference_nnz=dense_nnz)
        if sparsity is None:
            assert size["nnz"] == severe_nnz
        else:
            assert abs(size["sparsity"] - sparsity) < 0.01
        assert min(layer.filters for layer in prunable_layers(model)) >= 1


def test_resnet20_presets_land_on_the_paper_counts():
    # A property of the documented solver rule, kept as a regression check: [C24] Table A7's exact counts.
    for preset, nnz in (("mild", 227_296), ("moderate", 77_248)):
        model = build_model("resnet20", 10, "A")
        prune_filters(model, plan_kept_filters(model, preset=preset))
        assert model_size(model)["nnz"] == nnz


@pytest.mark.parametrize("target", [0.0, 0.05, 0.3, 0.5, 0.9, 0.96])
def test_solver_hits_target_within_one_point(target):
    model = build_model("resnet20", 10, "B")
    dense = model_size(model)["nnz"]
    kept = plan_kept_filters(model, target_sparsity=target)
    prune_filters(model, kept)
    assert abs(model_size(model, reference_nnz=dense)["sparsity"] - target) < 0.01


def test_solver_depends_only_on_the_architecture():
    first, second = build_model("resnet20", 10, "A"), build_model("resnet20", 10, "A")
    nn.init.zeros_(second.layer2[1].conv1.weight)
    assert plan_kept_filters(first, preset="moderate") == plan_kept_filters(second, preset="moderate")


def test_layer_and_stage_fractions():
    model = build_model("resnet20", 10, "A")
    kept = plan_kept_filters(model, layer_fractions={"layer1.0": 0.5, "layer3.2.conv1": 0.99, "layer2.1": 0.3})
    # 16 - floor(8) = 8; 64 - floor(63.36) = 1; 32 - floor(9.6) = 23; others untouched.
    assert kept["layer1.0"] == 8 and kept["layer3.2"] == 1 and kept["layer2.1"] == 23 and kept["layer1.1"] == 16
    kept = plan_kept_filters(model, stage_fractions=[0.25, 0.5, 0.75])
    assert [kept[f"layer{s}.{i}"] for s in (1, 2, 3) for i in range(3)] == [12] * 3 + [16] * 3 + [16] * 3
    assert [len(group) for group in stages(prunable_layers(build_model("mobilenetv2", 10)))] == [2, 3, 4, 3, 3, 1]


def test_record_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet20", 10, "B")
    randomize_batchnorm(model)
    record = pruning_record(plan_kept_filters(model, preset="moderate"), {"preset": "moderate"})
    apply_transform(model, record)
    path = tmp_path / "pruned.ckpt"
    torch.save({"state_dict": model.state_dict(), "transforms": [record]}, path)
    saved = torch.load(path, weights_only=True)
    assert json.loads(json.dumps(saved["transforms"])) == [record]
    fresh = build_model("resnet20", 10, "B")
    for saved_record in saved["transforms"]:
        apply_transform(fresh, saved_record)
    fresh.load_state_dict(saved["state_dict"])
    model.eval(), fresh.eval()
    inputs = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(inputs), fresh(inputs))


def test_composes_with_torch_prune_masks():
    model = build_model("resnet20", 10, "A")
    conv = model.layer1[0].conv1
    prune.l1_unstructured(conv, "weight", amount=0.5)
    prune.l1_unstructured(model.layer1[0].conv2, "weight", amount=0.5)
    prune_filters(model, {"layer1.0": 4})
    assert conv.weight_orig.shape == conv.weight_mask.shape == conv.weight.shape == (4, 16, 3, 3)
    assert model.layer1[0].conv2.weight_mask.shape == (16, 4, 3, 3)
    model(torch.randn(2, 3, 32, 32))  # the prune hooks recompute weight = orig * mask with the new shapes
    size = model_size(model)
    assert size["nnz"] < size["dense_weights"]
    assert size["nnz"] == sum(
        int(torch.count_nonzero(m.weight))
        for m in model.modules()
        if hasattr(m, "weight") and isinstance(m, nn.Conv2d | nn.Linear)
    )


def test_quantized_conv_subclass_is_sliced_in_place():
    class QuantConv(nn.Conv2d):
        weight_bits = 4

    model = CifarResNet(1)
    old = model.layer1[0].conv1
    model.layer1[0].conv1 = QuantConv(16, 16, 3, padding=1, bias=False)
    model.layer1[0].conv1.quantized_by = "test"
    weight = model.layer1[0].conv1.weight
    prune_filters(model, {"layer1.0": 2})
    conv = model.layer1[0].conv1
    assert isinstance(conv, QuantConv) and conv.quantized_by == "test" and conv.weight is weight
    assert conv.weight.shape == (2, 16, 3, 3) and old is not conv


def test_max_sparsity_and_unreachable_target():
    model = build_model("resnet20", 10, "A")
    assert max_sparsity(model) == pytest.approx(1 - 6_688 / 268_336)
    with pytest.raises(ValueError, match="target_sparsity=0.99"):
        plan_kept_filters(model, target_sparsity=0.99)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one"),
        ({"preset": "mild", "target_sparsity": 0.5}, "exactly one"),
        ({"preset": "extreme"}, "preset='extreme'"),
        ({"target_sparsity": 1.0}, r"\[0, 1\)"),
        ({"target_sparsity": -0.1}, r"\[0, 1\)"),
        ({"layer_fractions": {"layer1.0": 1.0}}, "layer1.0"),
        ({"stage_fractions": [0.1, -0.5]}, "stage 1"),
    ],
)
def test_bad_targets(kwargs, match):
    with pytest.raises(ValueError, match=match):
        validate_target(**kwargs)


@pytest.mark.parametrize(
    ("kept", "match"),
    [({"layer9.0": 1}, "unknown layers"), ({"layer1.0": 0}, r"\[1, 16\]"), ({"layer1.0": 17}, r"\[1, 16\]")],
)
def test_bad_kept_counts_change_nothing(kept, match):
    model = build_model("resnet20", 10, "A")
    with pytest.raises(ValueError, match=match):
        prune_filters(model, {"layer2.0": 3, **kept})
    assert model.layer2[0].conv1.out_channels == 32


def test_bad_plans_and_models():
    model = build_model("resnet20", 10, "A")
    with pytest.raises(ValueError, match="unknown layers"):
        plan_kept_filters(model, layer_fractions={"stem.conv": 0.5})
    with pytest.raises(ValueError, match="3 stages"):
        plan_kept_filters(model, stage_fractions=[0.5])
    with pytest.raises(ValueError, match="prunable_blocks"):
        plan_kept_filters(nn.Sequential(nn.Conv2d(3, 4, 3)), preset="severe")

    class NoBlocks(nn.Module):
        def prunable_blocks(self):
            return iter(())

    with pytest.raises(ValueError, match="no prunable layers"):
        plan_kept_filters(NoBlocks(), preset="severe")
