"""ClimbQ quantizers and the structural transform (pure torch)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from imbcompress.compress import climbq
from imbcompress.compress.climbq import (
    ClimbQActivationQuantizer,
    ClimbQBatchNorm2d,
    ClimbQConv2d,
    ClimbQWeightQuantizer,
    clear_class_labels,
    climbq_record,
    normal_cdf,
    set_class_labels,
)
from imbcompress.compress.dorefa import dorefa_record
from imbcompress.compress.pruning import prune_filters
from imbcompress.compress.size import model_size
from imbcompress.compress.transforms import apply_transform
from imbcompress.models.registry import build_model


def _quantized_resnet(bits: int = 4, mode: str = "official", **kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=4, **kwargs)
    apply_transform(model, climbq_record(model, bits, mode))  # type: ignore[arg-type]
    return model


def _batch(n: int = 12) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 16, 16, generator=generator), torch.tensor([0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 3][:n])


def test_record_quantizes_every_conv_and_its_bn_but_not_the_classifier() -> None:
    model = build_model("resnet20", num_classes=4, shortcut="B")
    keys = list(model.state_dict())
    record = climbq_record(model, 3)
    apply_transform(model, record)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(record["weight_layers"]) == len(convs) == 21  # stem + 18 block convs + 2 shortcut convs
    assert len(record["activation_layers"]) == 21  # every conv's BN output, the shortcut BNs included
    assert record["weight_layers"][0] == "stem.conv" and "layer2.0.shortcut.1" in record["activation_layers"]
    assert {"layer2.0.shortcut.0", "layer3.0.shortcut.0"} <= set(record["weight_layers"])
    assert all(isinstance(m, ClimbQConv2d) and m.weight_bits == 3 and m.quantized_by == "climbq" for m in convs)
    assert all(isinstance(m, ClimbQBatchNorm2d) for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert type(model.classifier) is nn.Linear and not hasattr(model.classifier, "weight_bits")
    assert list(model.state_dict()) == keys  # quantizers carry no state: checkpoints keep the dense keys
    assert model_size(model)["weight_storage_bits"] < model_size(build_model("resnet20", 4, "B"))["weight_storage_bits"]


def test_option_b_resnet20_quantizes_21_feature_maps_in_a_forward_pass_shortcuts_included() -> None:
    model = _quantized_resnet(2, shortcut="B")
    outputs, hooks = _collect_features(model)
    shortcut_bn = model.layer2[0].shortcut[1]
    assert isinstance(model.layer2[0].shortcut[0], ClimbQConv2d) and isinstance(shortcut_bn, ClimbQBatchNorm2d)
    images, labels = _batch()
    set_class_labels(model, labels, [100, 50, 20, 5])
    model(images)
    for hook in hooks:
        hook.remove()
    assert len(outputs) == 21 and all(out.unique().numel() <= 4 for out in outputs)
    stem_fp = build_model("resnet20", num_classes=4, shortcut="B")
    record = climbq_record(stem_fp, 2, exclude=["stem.conv"])
    assert len(record["weight_layers"]) == len(record["activation_layers"]) == 20  # the `exclude` comparison row


def test_exclude_keeps_named_layers_full_precision() -> None:
    model = build_model("resnet20", num_classes=4)
    record = climbq_record(model, 4, exclude=["stem.conv", "layer3"])
    assert "stem.conv" not in record["weight_layers"] and "stem.bn" not in record["activation_layers"]
    assert not any(name.startswith("layer3") for name in record["weight_layers"] + record["activation_layers"])
    apply_transform(model, record)
    assert type(model.stem.conv) is nn.Conv2d and type(model.layer3[0].bn1) is nn.BatchNorm2d
    with pytest.raises(ValueError, match="match no module"):
        climbq_record(build_model("resnet20", 4), 4, exclude=["layer9"])


@pytest.mark.parametrize("bits", [1, 9, 2.0, True])
def test_bad_bits_are_rejected(bits) -> None:
    with pytest.raises(ValueError, match="bits"):
        climbq_record(build_model("resnet20", 4), bits)
    with pytest.raises(ValueError, match="bits"):
        ClimbQActivationQuantizer(bits)


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="mode"):
        climbq_record(build_model("resnet20", 4), 4, "fancy")  # type: ignore[arg-type]


def _collect_features(model: nn.Module) -> tuple[list[Tensor], list]:
    outputs: list[Tensor] = []
    hooks = [
        module.register_forward_hook(lambda _m, _i, out: outputs.append(out.detach()))
        for module in model.modules()
        if isinstance(module, ClimbQBatchNorm2d)
    ]
    return outputs, hooks


@pytest.mark.parametrize(("bits", "mode"), [(2, "official"), (3, "paper")])
def test_quantized_features_and_weights_take_at_most_2_to_the_b_values(bits: int, mode: str) -> None:
    model = _quantized_resnet(bits, mode)
    images, labels = _batch()
    outputs, hooks = _collect_features(model)
    set_class_labels(model, labels, [100, 50, 20, 5])
    model(images)  # training mode, class-conditional
    clear_class_labels(model)
    model.eval()
    model(images)  # label-free rule
    for hook in hooks:
        hook.remove()
    assert len(outputs) == 2 * 19
    assert all(out.unique().numel() <= 2**bits for out in outputs)
    assert all(out.abs().max() <= climbq.ACTIVATION_RANGE for out in outputs)
    for module in model.modules():
        if isinstance(module, ClimbQConv2d):
            quantized = module.weight_quantizer(module.weight)
            assert quantized.unique().numel() <= 2**bits and quantized.abs().max() <= 1


def test_eval_rules_official_phi_over_two_paper_standard_normal() -> None:
    x = torch.randn(6, 5, 3, 3)
    levels = 2**4 - 1
    for mode, scale in (("official", 2.0), ("paper", 1.0)):
        quantizer = ClimbQActivationQuantizer(4, mode).eval()
        quantizer.labels = torch.tensor([0, 0, 0, 1, 1, 2])
        expected = (2 * torch.round(normal_cdf(x / scale) * levels) / levels - 1) * 2
        torch.testing.assert_close(quantizer(x), expected)


def test_official_training_scale_uses_batch_class_counts() -> None:
    x = torch.randn(4, 2, 2, 2)
    quantizer = ClimbQActivationQuantizer(8, "official")
    quantizer.labels = torch.tensor([0, 0, 0, 1])  # b = (3, 1), sum b^2 = 10: c = 1.7 and 1.9
    c = torch.tensor([1.7, 1.7, 1.7, 1.9]).view(-1, 1, 1, 1)
    expected = (2 * torch.round(normal_cdf(x / c) * 255) / 255 - 1) * 2
    torch.testing.assert_close(quantizer(x), expected)


def test_paper_training_uses_class_statistics_and_standard_normal_for_singletons() -> None:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(5, 3, 2, 2, generator=generator, dtype=torch.float64) * 3 + 1
    labels = torch.tensor([0, 0, 0, 1, 2])
    quantizer = ClimbQActivationQuantizer(8, "paper")
    set_class_labels(quantizer, labels, [60, 30, 10])
    class0 = x[:3]
    z0 = (class0 - class0.mean()) / (class0.std() * (2 - 0.6))
    z = torch.cat([z0, x[3:4] / (2 - 0.3), x[4:] / (2 - 0.1)])  # singletons: N(0, 1) scaled by c_k
    expected = (2 * torch.round(normal_cdf(z) * 255) / 255 - 1) * 2
    torch.testing.assert_close(quantizer(x), expected)


def test_eval_output_does_not_depend_on_labels() -> None:
    model = _quantized_resnet(2)
    images, labels = _batch()
    model.train()
    set_class_labels(model, labels, [100, 50, 20, 5])
    skewed = model(images)
    set_class_labels(model, torch.zeros_like(labels), [100, 50, 20, 5])
    assert not torch.equal(skewed, model(images))  # training does use the labels
    model.eval()
    with_labels = model(images)
    set_class_labels(model, torch.arange(12) % 4, [1, 1, 1, 1])
    other_labels = model(images)
    clear_class_labels(model)
    torch.testing.assert_close(with_labels, other_labels, rtol=0, atol=0)
    torch.testing.assert_close(with_labels, model(images), rtol=0, atol=0)


def test_label_batch_size_mismatch_is_an_error() -> None:
    quantizer = ClimbQActivationQuantizer(4)
    quantizer.labels = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="batch size"):
        quantizer(torch.randn(3, 2))


def _unrounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(climbq, "round_ste", lambda u, bits: u)


@pytest.mark.parametrize("labels", [None, torch.tensor([0, 0, 1, 1, 1, 2])])
def test_official_ste_gradient_equals_autograd_of_the_unrounded_function(labels: Tensor | None) -> None:
    x = torch.randn(6, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(6, 3, 4, 4, dtype=torch.float64)
    quantizer = ClimbQActivationQuantizer(2, "official")
    quantizer.labels = labels
    (fused,) = torch.autograd.grad((quantizer(x) * upstream).sum(), x)
    # b = (2, 3, 1), sum b^2 = 14: c = 2 - b_y / 14; without labels c = 2
    c = torch.full((6, 1, 1, 1), 2.0, dtype=torch.float64)
    if labels is not None:
        c = (2 - torch.tensor([2, 2, 3, 3, 3, 1], dtype=torch.float64) / 14).view(-1, 1, 1, 1)
    smooth = (2 * torch.special.ndtr(x / c) - 1) * 2
    (expected,) = torch.autograd.grad((smooth * upstream).sum(), x)
    torch.testing.assert_close(fused, expected)


def test_paper_and_weight_ste_gradients_equal_gradients_of_the_unrounded_function(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x = torch.randn(6, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(6, 3, 4, 4, dtype=torch.float64)
    activation = ClimbQActivationQuantizer(2, "paper")
    set_class_labels(activation, torch.tensor([0, 0, 1, 1, 1, 2]), [10, 5, 1])
    weights = ClimbQWeightQuantizer(2)
    (rounded_x,) = torch.autograd.grad((activation(x) * upstream).sum(), x)
    q = weights(weight).detach()
    (rounded_w,) = torch.autograd.grad((weights(weight) * q).sum(), weight)
    _unrounded(monkeypatch)
    (smooth_x,) = torch.autograd.grad((activation(x) * upstream).sum(), x)
    (smooth_w,) = torch.autograd.grad((weights(weight) * q).sum(), weight)
    torch.testing.assert_close(rounded_x, smooth_x)
    torch.testing.assert_close(rounded_w, smooth_w)


def test_unrounded_cdf_gradients_match_finite_differences(monkeypatch: pytest.MonkeyPatch) -> None:
    _unrounded(monkeypatch)  # paper mode in training and the weights run on autograd; the fused op is tested above
    activation = ClimbQActivationQuantizer(4, "paper")
    set_class_labels(activation, torch.tensor([0, 0, 1, 1]), [8, 2])
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(activation, (x,))
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ClimbQWeightQuantizer(4), (weight,))


def test_bf16_autocast_keeps_dtype_and_levels() -> None:
    model = _quantized_resnet(2).to(memory_format=torch.channels_last)
    images, labels = _batch()
    outputs, hooks = _collect_features(model)
    set_class_labels(model, labels, [100, 50, 20, 5])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(images.contiguous(memory_format=torch.channels_last))
    for hook in hooks:
        hook.remove()
    assert torch.isfinite(logits).all()
    assert all(out.unique().numel() <= 4 for out in outputs)


def test_conflicts_with_dorefa_on_the_same_layers() -> None:
    model = build_model("resnet20", num_classes=4)
    apply_transform(model, dorefa_record(model, 4, 8, None))
    with pytest.raises(ValueError, match="already quantized by 'dorefa'"):
        apply_transform(model, climbq_record(model, 4))
    model = _quantized_resnet(4)
    with pytest.raises(ValueError, match="already quantized by 'climbq'"):
        apply_transform(model, dorefa_record(model, 4, 8, None))


@pytest.mark.parametrize("prune_first", [True, False])
def test_composes_with_filter_pruning_in_either_order(prune_first: bool) -> None:
    model = build_model("resnet20", num_classes=4)
    kept = {"layer1.0": 3, "layer2.1": 5}
    if prune_first:
        prune_filters(model, kept)
    apply_transform(model, climbq_record(model, 2))
    if not prune_first:
        prune_filters(model, kept)
    assert isinstance(model.layer1[0].conv1, ClimbQConv2d) and model.layer1[0].conv1.out_channels == 3
    assert model.layer2[1].bn1.weight.shape == (5,)
    images, labels = _batch()
    set_class_labels(model, labels, [100, 50, 20, 5])
    model(images).sum().backward()
    assert model.layer2[1].conv1.weight.grad.shape == (5, 32, 3, 3)


def test_label_statistics_are_computed_once_per_step_for_all_quantizers(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _quantized_resnet(2, "paper", shortcut="B")
    images, labels = _batch()
    calls = []
    bincount = torch.bincount
    monkeypatch.setattr(torch, "bincount", lambda *a, **k: calls.append(1) or bincount(*a, **k))
    set_class_labels(model, labels, [100, 50, 20, 5])
    model(images)
    assert len(calls) == 1  # one bincount for 21 feature quantizers (and one label check: one host sync)
    quantizer = ClimbQActivationQuantizer(2, "paper")
    quantizer.labels = labels  # set directly, without set_class_labels: no class counts to standardise with
    with pytest.raises(ValueError, match="needs the training-set class counts"):
        quantizer(torch.randn(12, 2, 2, 2))
    set_class_labels(quantizer, labels, [100, 50])
    with pytest.raises(ValueError, match="got label 3 but only 2 class counts"):
        quantizer(torch.randn(12, 2, 2, 2))
