"""DoReFa quantizers (SPEC §4.2): levels, straight-through gradients, which modules change, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from imbcompress.compress.dorefa import (
    DoReFaConv2d,
    QuantizedReLU,
    apply_dorefa,
    check_bits,
    default_exclude,
    dorefa_record,
    quantize_activation,
    quantize_weight,
    weight_codes,
)
from imbcompress.compress.pruning import prune_filters
from imbcompress.models import build_model


def _weight(seed: int = 0, shape: tuple[int, ...] = (16, 8, 3, 3)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _quantized_resnet(weight_bits: int = 4, activation_bits: int = 8, exclude: list[str] | None = None) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    apply_dorefa(model, dorefa_record(model, weight_bits, activation_bits, exclude))
    return model


@pytest.mark.parametrize("bits", range(1, 9))
def test_weight_takes_at_most_2k_values_and_matches_the_formula(bits: int) -> None:
    weight = _weight()
    quantized = quantize_weight(weight, bits)
    assert quantized.unique().numel() <= 2**bits
    if bits == 1:
        expected = torch.sign(weight) * weight.abs().mean()
    else:
        t = torch.tanh(weight)
        u = t / (2 * t.abs().max()) + 0.5
        levels = 2**bits - 1
        expected = 2 * torch.round(levels * u) / levels - 1
    torch.testing.assert_close(quantized, expected, rtol=0, atol=1e-6)


def test_weight_codes_reproduce_the_forward_weight_exactly() -> None:
    weight = _weight(1)
    for bits in (1, 2, 4, 8):
        codes, scale, offset = weight_codes(weight, bits)
        assert codes.dtype == torch.uint8 and int(codes.max()) <= max(2, 2**bits - 1)
        assert torch.equal(scale * codes.float() + offset, quantize_weight(weight, bits))


@pytest.mark.parametrize("bits", [2, 4])
def test_weight_gradient_is_straight_through_the_rounding(bits: int) -> None:
    weight = _weight(2).requires_grad_()
    upstream = torch.randn_like(weight)
    quantize_weight(weight, bits).backward(upstream)
    # Without the rounding the quantizer is 2u - 1: its exact autograd gradient is what STE must give.
    reference = weight.detach().clone().requires_grad_()
    t = torch.tanh(reference)
    (2 * (t / (2 * t.abs().max()) + 0.5) - 1).backward(upstream)
    torch.testing.assert_close(weight.grad, reference.grad)


def test_binary_weight_gradient_is_the_identity() -> None:
    weight = _weight(3).requires_grad_()
    upstream = torch.randn_like(weight)
    quantize_weight(weight, 1).backward(upstream)
    assert torch.equal(weight.grad, upstream)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bits", [1, 2, 3, 8])
def test_activation_levels_range_and_gradient_mask(bits: int, dtype: torch.dtype) -> None:
    edges = torch.tensor([0.0, -0.0, 1.0, -1e-30, 1e-30, 1.0001, 1.01])
    x = torch.cat([torch.linspace(-2, 3, 1001), edges]).to(dtype).requires_grad_()
    y = quantize_activation(x, bits)
    assert y.dtype == dtype and y.unique().numel() <= 2**bits
    assert y.min() == 0 and y.max() == 1
    levels = 2**bits - 1
    assert torch.equal(y, (torch.round(levels * x.detach().float().clamp(0, 1)) / levels).to(dtype))
    y.backward(torch.full_like(x, 3.0))
    inside = (x.detach() >= 0) & (x.detach() <= 1)
    assert torch.equal(x.grad, torch.where(inside, 3.0, 0.0).to(dtype))  # identity on [0, 1] (ends included)


def test_activation_gradient_keeps_the_inputs_memory_format() -> None:
    x = torch.randn(2, 4, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    quantize_activation(x, 4).backward(torch.randn(2, 4, 5, 5))  # a plain NCHW upstream gradient
    assert x.grad.is_contiguous(memory_format=torch.channels_last)


def test_resnet_defaults_quantize_everything_but_the_ends() -> None:
    dense = build_model("resnet20", 10)
    model = _quantized_resnet()
    assert default_exclude(dense) == ["stem.conv", "stem.relu", "classifier", "layer3.2.relu2"]
    assert list(model.state_dict()) == list(dense.state_dict())
    for name in ("stem.conv", "classifier"):
        assert type(model.get_submodule(name)) in (nn.Conv2d, nn.Linear)
        assert not hasattr(model.get_submodule(name), "quantized_by")
    assert type(model.stem.relu) is nn.ReLU and type(model.layer3[2].relu2) is nn.ReLU
    conv = model.layer2[1].conv1
    assert isinstance(conv, DoReFaConv2d) and isinstance(conv, nn.Conv2d)
    assert (conv.quantized_by, conv.weight_bits) == ("dorefa", 4)
    assert isinstance(model.layer2[1].relu1, QuantizedReLU) and isinstance(model.layer3[1].relu2, QuantizedReLU)
    assert sum(isinstance(m, DoReFaConv2d) for m in model.modules()) == 18
    assert sum(isinstance(m, QuantizedReLU) for m in model.modules()) == 17


def test_quantized_layer_shares_the_master_parameter_and_uses_quantized_weights() -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    master = model.layer1[0].conv1.weight
    apply_dorefa(model, dorefa_record(model, 3, 32, None))
    conv = model.layer1[0].conv1
    assert conv.weight is master
    x = torch.randn(2, 16, 8, 8)
    expected = nn.functional.conv2d(x, quantize_weight(master, 3), padding=1)
    assert torch.equal(conv(x), expected)
    assert type(model.layer1[0].relu1) is nn.ReLU  # activation_bits=32: activations untouched


def test_forward_activations_take_at_most_2k_values_also_under_bf16_autocast() -> None:
    model = _quantized_resnet(weight_bits=3, activation_bits=3)
    seen: dict[str, torch.Tensor] = {}
    model.layer2[0].relu1.register_forward_hook(lambda m, i, out: seen.update(out=out))
    x = torch.randn(4, 3, 32, 32)
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(x)
        assert seen["out"].unique().numel() <= 8
        assert seen["out"].dtype == (torch.bfloat16 if autocast else torch.float32)
        assert torch.isfinite(logits).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        weight = model.layer2[0].conv1.weight_quantizer(model.layer2[0].conv1.weight)
    assert weight.dtype == torch.float32 and weight.unique().numel() <= 8


def test_custom_exclude_keeps_layers_and_their_activations_full_precision() -> None:
    model = _quantized_resnet(exclude=["stem", "classifier", "layer1.0.conv1", "layer3"])
    assert type(model.layer1[0].conv1) is nn.Conv2d and type(model.layer1[0].relu1) is nn.ReLU
    assert isinstance(model.layer1[0].conv2, DoReFaConv2d) and isinstance(model.layer1[0].relu2, QuantizedReLU)
    assert not any(isinstance(m, DoReFaConv2d | QuantizedReLU) for m in model.layer3.modules())
    everything = _quantized_resnet(weight_bits=2, activation_bits=2, exclude=[])
    assert isinstance(everything.stem.conv, DoReFaConv2d) and isinstance(everything.stem.relu, QuantizedReLU)
    assert everything.classifier.weight_bits == 2


def test_mobilenet_defaults_and_relu6() -> None:
    model = build_model("mobilenetv2", 10)
    record = dorefa_record(model, 4, 8, None)
    assert record["exclude"] == ["stem.conv", "stem.relu", "classifier", "head.relu"]
    apply_dorefa(model, record)
    assert isinstance(model.blocks[1].expand_relu, QuantizedReLU) and isinstance(model.blocks[1].dw_conv, DoReFaConv2d)
    assert type(model.head.relu) is nn.ReLU6 and isinstance(model.head.conv, DoReFaConv2d)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_pruning_before_and_after_quantization() -> None:
    before = build_model("resnet20", 10)
    prune_filters(before, {"layer1.0": 3})
    apply_dorefa(before, dorefa_record(before, 4, 8, None))
    after = _quantized_resnet()
    prune_filters(after, {"layer1.0": 3, "layer2.1": 5})
    for model in (before, after):
        assert isinstance(model.layer1[0].conv1, DoReFaConv2d) and model.layer1[0].conv1.weight.shape[0] == 3
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert after.layer2[1].conv1.weight_quantizer(after.layer2[1].conv1.weight).shape == (5, 32, 3, 3)


def test_record_is_plain_data_and_two_quantizers_on_a_layer_is_an_error() -> None:
    model = build_model("resnet20", 10)
    record = dorefa_record(model, 4, 8, None)
    assert record["kind"] == "dorefa" and all(isinstance(name, str) for name in record["layers"])
    apply_dorefa(model, record)
    with pytest.raises(ValueError, match="already quantized by 'dorefa'"):
        apply_dorefa(model, dorefa_record(model, 3, 3, None))


@pytest.mark.parametrize("bits", [0, 9, 16, -1, 2.5, True])
def test_bad_bits(bits: object) -> None:
    with pytest.raises(ValueError, match=r"weight_bits must be an integer in 1\.\.8 or 32"):
        check_bits("weight_bits", bits)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="activation_bits"):
        dorefa_record(build_model("resnet20", 10), 4, bits, None)  # type: ignore[arg-type]


def test_unknown_exclude_name() -> None:
    with pytest.raises(ValueError, match=r"exclude names modules the model does not have: \['layer9'\]"):
        dorefa_record(build_model("resnet20", 10), 4, 8, ["layer9"])
