"""DoReFa fake-quant model -> int8 ONNX model with the same grid (SPEC §4.2), BatchNorm folded per channel.

Why it is exact:

- **Activations.** A DoReFa activation is ``round(L clamp(x, 0, 1)) / L`` with ``L = 2^k - 1``: that is ONNX
  ``QuantizeLinear(x, scale=1/L, zero_point=0, uint8)`` (rounding half to even, as ``torch.round``) followed by
  ``DequantizeLinear``, provided the codes stop at ``L``. For k = 8 the uint8 saturation at 255 *is* the clamp; for
  k < 8 a ``Clip(0, 1)`` and a second identical Q/DQ pair cap the codes at ``L`` (rounding first and clamping to an
  integer bound after is the same as clamping first).
- **Weights.** DoReFa's ``W_q = scale * codes + offset`` (:func:`dorefa.weight_codes`) is ``step * (q + h)`` with an
  integer ``q`` and ``h`` in {0, 1/2}: k = 1: ``q = codes - 1`` in {-1, 0, 1}, ``step = mean|W|``, ``h = 0``;
  2 <= k <= 7: ``q = 2 codes - L`` (odd, |q| <= 127), ``step = 1/L``, ``h = 0``; k = 8: ``q = codes - 128`` in
  -128..127, ``step = 2/255``, ``h = 1/2`` -- the 8-bit grid is symmetric about 0 without containing 0, which no
  integer zero point expresses, so the half step becomes a second convolution with all-ones weights (the window
  sum of the input) scaled by ``step/2`` per output channel.
- **BatchNorm** after a quantized layer is folded into the per-channel scale (``step * gamma / sqrt(var + eps)``)
  and a float bias; the integer codes do not change, so the grid is carried over exactly and only float rounding
  differs from the fake-quant model.

Layers the fake-quant model keeps in full precision stay float; a quantized layer whose input is not on an
activation grid (the first block's conv after the full-precision stem) gets int8 weights and a float input.
Quantization this path cannot express (ClimbQ's normal-CDF quantizer, or more than 8 bits) is refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import Tensor, nn

from imbcompress.compress import dorefa
from imbcompress.deploy.onnx_export import deployable_copy, onnx_bytes

INT8_MAX_BITS = 8
_LAYERS = (nn.Conv2d, nn.Linear)


def check_int8_expressible(model: nn.Module) -> None:
    """Raise a ``ValueError`` naming the layer and the reason when ``model`` has quantization int8 cannot hold."""
    for name, module in model.named_modules():
        owner = getattr(module, "quantized_by", None)
        if owner not in (None, dorefa.METHOD):
            raise ValueError(
                f"layer {name!r} is quantized by {owner!r}, whose quantizer (a normal-CDF grid) has no exact int8 "
                "form; export it without --int8 (its fp32 fake-quant graph) instead"
            )
        for attribute in ("weight_bits", "activation_bits", "bits"):
            bits = getattr(module, attribute, None)
            if isinstance(bits, int) and INT8_MAX_BITS < bits != dorefa.FULL_PRECISION:
                raise ValueError(
                    f"layer {name!r} has {attribute}={bits}: the int8 path holds at most {INT8_MAX_BITS} bits"
                )


def is_dorefa_quantized(model: nn.Module) -> bool:
    """Whether any module of ``model`` is quantized by DoReFa."""
    return any(getattr(module, "quantized_by", None) == dorefa.METHOD for module in model.modules())


def int8_weight_grid(weight: Tensor, bits: int) -> tuple[Tensor, Tensor, bool]:
    """``(q, step, half)`` with DoReFa's quantized weight equal to ``step * (q + 0.5 * half)``; ``q`` is int8."""
    codes, scale, offset = dorefa.weight_codes(weight, bits)
    codes = codes.long()
    if bits == 1:
        return (codes - 1).to(torch.int8), scale, False
    levels = 2**bits - 1
    if bits < INT8_MAX_BITS:
        return (2 * codes - levels).to(torch.int8), torch.tensor(1.0 / levels), False
    return (codes - 128).to(torch.int8), torch.tensor(2.0 / levels), True


# ------------------------------------------------------------------------------------------- deploy modules
class ActivationQDQ(nn.Module):
    """DoReFa's activation quantizer as Q/DQ nodes (uint8, scale ``1/L``, zero point 0)."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.levels = 2**bits - 1

    def forward(self, x: Tensor) -> Tensor:
        y = torch.fake_quantize_per_tensor_affine(x, 1.0 / self.levels, 0, 0, 255)
        if self.levels < 255:
            y = torch.fake_quantize_per_tensor_affine(y.clamp(0.0, 1.0), 1.0 / self.levels, 0, 0, 255)
        return y


class QDQLayer(nn.Module):
    """A conv or linear layer with per-channel int8 weights (Q/DQ), a float bias and the optional half-step term."""

    weight: Tensor
    scale: Tensor
    zero_point: Tensor
    bias: Tensor
    half_scale: Tensor

    def __init__(self, layer: nn.Conv2d | nn.Linear, q: Tensor, scale: Tensor, bias: Tensor, half: bool) -> None:
        super().__init__()
        self.conv = _conv_geometry(layer)
        shape = (-1,) + (1,) * (q.dim() - 1)
        self.register_buffer("weight", q.float() * scale.view(shape))  # Q/DQ of this gives back q * scale exactly
        self.register_buffer("scale", scale.float())
        self.register_buffer("zero_point", torch.zeros_like(scale, dtype=torch.int32))
        self.register_buffer("bias", bias.float())
        self.half_step = half  # a plain bool: the exported graph has the half-step term or not
        self.register_buffer("half_scale", 0.5 * scale.float() if half else torch.zeros(0))

    def forward(self, x: Tensor) -> Tensor:
        weight = torch.fake_quantize_per_channel_affine(self.weight, self.scale, self.zero_point, 0, -128, 127)
        # The bias is a separate Add, not the layer's bias input: ONNX Runtime rounds the float bias of a layer whose
        # inputs are dequantized to int32 at scale s_x * s_w (its bias quantization), which at 3 bits moves each
        # output by up to half a weight step and changed 0.6 % of predictions of a test model; an Add stays float.
        if self.conv is None:
            y = F.linear(x, weight) + self.bias
            return y + x.sum(dim=1, keepdim=True) * self.half_scale if self.half_step else y
        y = _conv(x, weight, None, self.conv) + self.bias.view(1, -1, 1, 1)
        if not self.half_step:
            return y
        # the window sum of the input, once per group: groups of 1 (a plain conv) or one per channel (depthwise)
        groups = self.conv["groups"]
        ones = torch.ones(groups, weight.shape[1], *weight.shape[2:])
        return y + _conv(x, ones, None, self.conv) * self.half_scale.view(1, -1, 1, 1)


class FloatLayer(nn.Module):
    """A full-precision-weight layer of a quantized model with its BatchNorm folded into it."""

    weight: Tensor
    bias: Tensor

    def __init__(self, layer: nn.Conv2d | nn.Linear, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.conv = _conv_geometry(layer)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is None:
            return F.linear(x, self.weight, self.bias)
        return _conv(x, self.weight, self.bias, self.conv)


def _conv_geometry(layer: nn.Conv2d | nn.Linear) -> dict[str, Any] | None:
    if isinstance(layer, nn.Linear):
        return None
    if layer.groups not in (1, layer.out_channels) and getattr(layer, "weight_bits", None) == INT8_MAX_BITS:
        raise ValueError(f"8-bit DoReFa weights need groups of 1 or one per output channel, got {layer.groups}")
    return {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation, "groups": layer.groups}


def _conv(x: Tensor, weight: Tensor, bias: Tensor | None, geometry: dict[str, Any]) -> Tensor:
    return F.conv2d(x, weight, bias, geometry["stride"], geometry["padding"], geometry["dilation"], geometry["groups"])


# ------------------------------------------------------------------------------------------- conversion
@torch.no_grad()
def batchnorm_pairs(model: nn.Module, example: Tensor) -> dict[str, str]:
    """``layer name -> BatchNorm name`` for every BatchNorm whose input is exactly a conv/linear layer's output."""
    outputs: dict[int, tuple[str, Tensor]] = {}
    pairs: dict[str, str] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, _LAYERS):
            handles.append(module.register_forward_hook(_keep_output(outputs, name)))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            handles.append(module.register_forward_pre_hook(_match_input(outputs, pairs, name)))
    try:
        model(example)
    finally:
        for handle in handles:
            handle.remove()
    return pairs


def _keep_output(outputs: dict[int, tuple[str, Tensor]], name: str) -> Any:
    def hook(module: nn.Module, args: Any, output: Tensor) -> None:
        outputs[id(output)] = (name, output)  # the tensor is kept alive, so its id cannot be reused

    return hook


def _match_input(outputs: dict[int, tuple[str, Tensor]], pairs: dict[str, str], name: str) -> Any:
    def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        found = outputs.get(id(args[0]))
        if found is not None:
            pairs[found[0]] = name

    return hook


def _bn_fold(layer: nn.Conv2d | nn.Linear, bn: nn.Module | None) -> tuple[Tensor, Tensor]:
    """Per-channel gain and bias of ``bn(layer_without_bias(x) + layer.bias)`` (identity when there is no BN)."""
    bias = layer.bias.detach().float() if layer.bias is not None else torch.zeros(layer.weight.shape[0])
    if bn is None:
        return torch.ones(layer.weight.shape[0]), bias
    bn_any: Any = bn
    gain = bn_any.weight.detach().float() / torch.sqrt(bn_any.running_var.float() + bn_any.eps)
    return gain, bn_any.bias.detach().float() + (bias - bn_any.running_mean.float()) * gain


def _deploy_layer(layer: nn.Conv2d | nn.Linear, bn: nn.Module | None) -> nn.Module:
    gain, bias = _bn_fold(layer, bn)
    quantizer = getattr(layer, "weight_quantizer", None)
    if quantizer is None:
        shape = (-1,) + (1,) * (layer.weight.dim() - 1)
        return FloatLayer(layer, layer.weight.detach().float() * gain.view(shape), bias)
    q, step, half = int8_weight_grid(layer.weight, quantizer.bits)
    return QDQLayer(layer, q, step.float() * gain, bias, half)


def int8_deploy_model(model: nn.Module, image_shape: tuple[int, int, int] = (3, 32, 32)) -> nn.Module:
    """The Q/DQ deploy form of a DoReFa model (a new module; ``model`` is not changed). See the module docstring."""
    check_int8_expressible(model)
    if not is_dorefa_quantized(model):
        raise ValueError("the model has no DoReFa quantizer; quantize an fp32 model with calibration (PTQ) instead")
    model = deployable_copy(model)
    pairs = batchnorm_pairs(model, torch.zeros(2, *image_shape))
    for name, module in list(model.named_modules()):
        if getattr(module, "quantized_by", None) != dorefa.METHOD:
            continue
        if isinstance(module, dorefa.QuantizedReLU):
            model.set_submodule(name, ActivationQDQ(module.bits))
        elif isinstance(module, _LAYERS):
            bn_name = pairs.get(name)
            model.set_submodule(name, _deploy_layer(module, model.get_submodule(bn_name) if bn_name else None))
            if bn_name:
                model.set_submodule(bn_name, nn.Identity())
    return model.eval()


def store_weights_as_int8(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Replace every ``QuantizeLinear`` of a constant float weight by its int8 result (what the file stores)."""
    graph = proto.graph
    initializers = {init.name: init for init in graph.initializer}
    constants = {node.output[0]: node.attribute[0].t for node in graph.node if node.op_type == "Constant"}
    aliases = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "Identity"}  # deduplicated

    def constant(name: str) -> np.ndarray:
        while name in aliases:
            name = aliases[name]
        return numpy_helper.to_array(initializers.get(name) or constants[name])

    kept = []
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in initializers:
            kept.append(node)
            continue
        weight, scale, zero_point = (constant(name) for name in node.input[:3])
        axis = next((attr.i for attr in node.attribute if attr.name == "axis"), 1)
        shape = [1] * weight.ndim
        shape[axis] = -1
        codes = np.rint(weight / scale.reshape(shape)) + zero_point.reshape(shape)
        info = np.iinfo(zero_point.dtype)
        graph.initializer.append(
            numpy_helper.from_array(np.clip(codes, info.min, info.max).astype(zero_point.dtype), node.output[0])
        )
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    return proto


def dorefa_int8_bytes(model: nn.Module, image_shape: tuple[int, int, int] = (3, 32, 32)) -> bytes:
    """The int8 ONNX serialisation of a DoReFa model (weights stored as int8 codes, activations as uint8)."""
    proto = onnx.load_from_string(onnx_bytes(int8_deploy_model(model, image_shape), image_shape))
    proto = store_weights_as_int8(proto)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()
