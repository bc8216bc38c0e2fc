"""DoReFa quantization-aware training (SPEC §4.2): k-bit weights and activations with straight-through gradients.

Quantized layers stay ``nn.Conv2d`` / ``nn.Linear`` (subclasses) whose Parameter ``weight`` is the full-precision
master copy the optimizer updates; a parameter-free :class:`WeightQuantizer` submodule turns it into ``W_q`` in every
forward pass, so state-dict keys do not change. Each ReLU (or ReLU6) after a quantized layer is replaced by a
:class:`QuantizedReLU` computing ``Q_k(clamp(x, 0, 1))``. All quantizer arithmetic runs in fp32 outside autocast.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from imbcompress.compress.transforms import check_not_quantized, register_transform
from imbcompress.models.heads import CosineLinear
from imbcompress.models.trace import Call, trace
from imbcompress.names import FULL_PRECISION_BITS as FULL_PRECISION
from imbcompress.names import check_bits as _check_bits

METHOD = "dorefa"
MAX_BITS = 8
_TINY = 1e-12  # keeps an all-zero weight tensor from dividing by zero


def check_bits(setting: str, bits: int) -> None:
    """Raise a ``ValueError`` naming ``setting`` unless ``bits`` is a DoReFa bit width: 1..8, or 32 (off)."""
    _check_bits(setting, bits, 1, MAX_BITS, full_precision=True)


def check_settings(weight_bits: int, activation_bits: int, exclude: list[str] | None, prefix: str = "") -> None:
    """Validate DoReFa's settings (no model needed); ``prefix`` names the owner in messages, e.g. "QAT."."""
    check_bits(f"{prefix}weight_bits", weight_bits)
    check_bits(f"{prefix}activation_bits", activation_bits)
    if exclude is not None and not all(isinstance(name, str) and name for name in exclude):
        raise ValueError(f"{prefix}exclude must be a list of module names, got {exclude!r}")


# ----------------------------------------------------------------------------------------------- weights
def _rounding_input(weight: Tensor, bits: int) -> Tensor:
    """What the rounding acts on: ``W`` for k = 1, else ``u = tanh(W) / (2 max|tanh W|) + 1/2`` in [0, 1]."""
    if bits == 1:
        return weight
    t = torch.tanh(weight)
    return t / (2 * t.abs().amax().clamp_min(_TINY)) + 0.5


def _codes(source: Tensor, bits: int) -> tuple[Tensor, Tensor, Tensor]:
    """Integer codes (as floats), scale and offset with ``W_q = scale * codes + offset``."""
    if bits == 1:
        # sign(W) * mean|W| as codes {0, 1, 2}: exact zeros (e.g. pruned weights) stay zero, as sign(0) = 0.
        magnitude = source.abs().mean()
        return torch.sign(source) + 1, magnitude, -magnitude
    levels = 2**bits - 1
    scale = torch.tensor(2.0 / levels, device=source.device)
    offset = torch.tensor(-1.0, device=source.device)
    return torch.round(source * levels), scale, offset


def dequantize(codes: Tensor, scale: Tensor, offset: Tensor) -> Tensor:
    """``scale * codes + offset`` in fp32: the one expression both training and the exported loader use."""
    return codes.float() * scale.float() + offset.float()


class _WeightSTE(torch.autograd.Function):
    """Forward: the quantized weight; backward: straight-through (the rounding's gradient is the identity)."""

    @staticmethod
    def forward(ctx: Any, source: Tensor, bits: int) -> Tensor:
        ctx.slope = 1.0 if bits == 1 else 2.0  # W_q = 2 Q_k(u) - 1, so dW_q/du = 2 once Q_k is the identity
        return dequantize(*_codes(source, bits))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.slope, None


def quantize_weight(weight: Tensor, bits: int) -> Tensor:
    """DoReFa-quantize a weight tensor (differentiable, straight-through); returns ``weight``'s dtype."""
    if bits == FULL_PRECISION:
        return weight
    with torch.autocast(weight.device.type, enabled=False):
        source = _rounding_input(weight.float(), bits)
        quantized = _WeightSTE.apply(source, bits)
    return quantized.to(weight.dtype)


def weight_codes(weight: Tensor, bits: int) -> tuple[Tensor, Tensor, Tensor]:
    """Export form of a quantized weight: ``(uint8 codes, fp32 scale, fp32 offset)``; see :func:`dequantize`."""
    with torch.no_grad(), torch.autocast(weight.device.type, enabled=False):
        codes, scale, offset = _codes(_rounding_input(weight.detach().float(), bits), bits)
    return codes.to(torch.uint8), scale.float(), offset.float()


# ----------------------------------------------------------------------------------------------- activations
class _ActivationSTE(torch.autograd.Function):
    """Forward: ``round(levels * clamp(x, 0, 1)) / levels`` in fp32; backward: gradient 1 inside [0, 1], 0 outside.

    Written as few whole-tensor passes as possible: this runs on every activation of every step.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, levels: int) -> Tensor:
        ctx.save_for_backward(x)
        if x.dtype == torch.float32:
            return torch.clamp(x, 0.0, 1.0).mul_(levels).round_().div_(levels)
        # copy_ into a preallocated fp32 buffer is several times faster on CPU than x.float() for bf16 inputs
        y = torch.empty_like(x, dtype=torch.float32).copy_(x)
        return y.clamp_(0.0, 1.0).mul_(levels).round_().div_(levels).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        # hardtanh's backward is one fused pass but passes the gradient only on the open interval (lo, hi); with lo
        # the negative of the smallest subnormal and hi the next value above 1 in x's dtype, that is exactly [0, 1].
        info = torch.finfo(x.dtype)
        lower, upper = -info.smallest_normal * info.eps, 1.0 + info.eps
        # The result takes grad's layout; a gradient summed over a residual branch can arrive NCHW while x is
        # channels-last, and a mixed layout makes every later backward kernel take a slow path.
        grad = grad.to(x.dtype).contiguous(memory_format=_layout(x))
        return torch.ops.aten.hardtanh_backward(grad, x, lower, upper), None


def _layout(x: Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def quantize_activation(x: Tensor, bits: int) -> Tensor:
    """``Q_k(clamp(x, 0, 1))`` with the DoReFa activation gradient; computed in fp32, returns ``x``'s dtype."""
    with torch.autocast(x.device.type, enabled=False):
        return _ActivationSTE.apply(x, 2**bits - 1)


class QuantizedReLU(nn.Module):
    """DoReFa activation quantizer replacing a ReLU: ``y = Q_k(clamp(x, 0, 1))``.

    Args:
        bits: Activation bit width k (1..8).
    """

    def __init__(self, bits: int) -> None:
        super().__init__()
        check_bits("activation_bits", bits)
        self.bits = bits
        self.activation_bits = bits
        self.quantized_by = METHOD

    def forward(self, x: Tensor) -> Tensor:
        return quantize_activation(x, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


# ----------------------------------------------------------------------------------------------- layers
class WeightQuantizer(nn.Module):
    """Parameter-free submodule mapping a full-precision weight to its DoReFa-quantized value.

    Args:
        bits: Weight bit width k (1..8).
    """

    def __init__(self, bits: int) -> None:
        super().__init__()
        check_bits("weight_bits", bits)
        self.bits = bits

    def forward(self, weight: Tensor) -> Tensor:
        return quantize_weight(weight, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class DoReFaConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose forward pass uses the quantized weight; ``weight`` stays the full-precision master."""

    weight_quantizer: WeightQuantizer

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight_quantizer(self.weight), self.bias)


class DoReFaLinear(nn.Linear):
    """``nn.Linear`` whose forward pass uses the quantized weight; ``weight`` stays the full-precision master."""

    weight_quantizer: WeightQuantizer

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight_quantizer(self.weight), self.bias)


def _quantized_copy(layer: nn.Conv2d | nn.Linear, bits: int) -> DoReFaConv2d | DoReFaLinear:
    """A DoReFa layer sharing ``layer``'s Parameter objects (built on "meta": no RNG draw, no allocation)."""
    new: DoReFaConv2d | DoReFaLinear
    if isinstance(layer, nn.Conv2d):
        conv: Any = layer  # torch types the conv geometry as tuple[int, ...]; it is the layer's own
        new = DoReFaConv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device="meta",
        )
    else:
        new = DoReFaLinear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
    new.weight = layer.weight
    new.bias = layer.bias
    for key, value in vars(layer).items():  # plain markers other methods may have set (e.g. by pruning)
        if not key.startswith("_") and key not in vars(new):
            setattr(new, key, value)
    new.train(layer.training)
    new.weight_quantizer = WeightQuantizer(bits)
    return new


# ----------------------------------------------------------------------------------------------- model level
_LAYER_TYPES = (nn.Conv2d, nn.Linear)
_ACTIVATION_TYPES = (nn.ReLU, nn.ReLU6, QuantizedReLU)


def _layer_names(calls: list[Call]) -> list[str]:
    return list(dict.fromkeys(call.name for call in calls if isinstance(call.module, _LAYER_TYPES)))


def default_exclude(model: nn.Module) -> list[str]:
    """Full-precision by default: the first conv, the last linear, and the activations next to them.

    Found from one forward pass (execution order, not module names), so it holds for any architecture: the first
    ``nn.Conv2d`` executed and the ReLU(s) executed after it before the next conv/linear, the last ``nn.Linear``
    executed and the ReLU(s) executed after the last conv (the activation feeding the pooling). For the CIFAR ResNets
    that is ``stem.conv``, ``stem.relu``, ``classifier`` and the last block's ``relu2``; for MobileNet-V2
    ``stem.conv``, ``stem.relu``, ``classifier``, ``head.relu``.
    """
    calls = trace(model)
    names = [call.name for call in calls]
    layers = _layer_names(calls)
    modules = dict(model.named_modules())
    convs = [name for name in layers if isinstance(modules[name], nn.Conv2d)]
    linears = [name for name in layers if isinstance(modules[name], nn.Linear)]
    first = names.index(convs[0]) if convs else None
    last = max(i for i, name in enumerate(names) if name == convs[-1]) if convs else None
    picked = convs[:1] + _activations_after(calls, first)
    picked += linears[-1:] + _activations_after(calls, last)
    return list(dict.fromkeys(picked))


def _activations_after(calls: list[Call], start: int | None) -> list[str]:
    """Activations executed after ``calls[start]`` until the next conv/linear."""
    if start is None:
        return []
    found = []
    for call in calls[start + 1 :]:
        if isinstance(call.module, _LAYER_TYPES):
            break
        if isinstance(call.module, _ACTIVATION_TYPES):
            found.append(call.name)
    return found


def _is_excluded(name: str, exclude: list[str]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in exclude)


def _producers(calls: list[Call]) -> dict[str, str | None]:
    """Activation name -> the conv/linear executed last before its first call (None: no layer before it)."""
    producers: dict[str, str | None] = {}
    latest: str | None = None
    for call in calls:
        if isinstance(call.module, _LAYER_TYPES):
            latest = call.name
        elif isinstance(call.module, _ACTIVATION_TYPES):
            producers.setdefault(call.name, latest)
    return producers


def dorefa_record(
    model: nn.Module, weight_bits: int, activation_bits: int, exclude: list[str] | None
) -> dict[str, Any]:
    """Resolve which layers and activations DoReFa quantizes, as a structural-transform record.

    Args:
        model: The model (already pruned or otherwise transformed, if other methods ran first).
        weight_bits: Weight bit width (1..8, 32 = full precision).
        activation_bits: Activation bit width (1..8, 32 = full precision).
        exclude: Module names kept in full precision (a name excludes its whole subtree); ``None`` for
            :func:`default_exclude`.
    """
    check_bits("weight_bits", weight_bits)
    check_bits("activation_bits", activation_bits)
    names = {name for name, _ in model.named_modules()}
    exclude = default_exclude(model) if exclude is None else list(exclude)
    unknown = [name for name in exclude if name not in names]
    if unknown:
        raise ValueError(f"exclude names modules the model does not have: {unknown}; e.g. {default_exclude(model)}")
    layers: list[str] = []
    activations: list[str] = []
    if weight_bits != FULL_PRECISION or activation_bits != FULL_PRECISION:
        for name, module in model.named_modules():
            if isinstance(module, _LAYER_TYPES) and not _is_excluded(name, exclude):
                layers.append(name)
    if activation_bits != FULL_PRECISION:
        producers = _producers(trace(model))
        for name, module in model.named_modules():
            if not isinstance(module, _ACTIVATION_TYPES) or _is_excluded(name, exclude):
                continue
            producer = producers.get(name)
            if producer is None or producer in layers:
                activations.append(name)
    return {
        "kind": METHOD,
        "weight_bits": weight_bits,
        "activation_bits": activation_bits,
        "exclude": exclude,
        "layers": layers,
        "activations": activations,
    }


@register_transform(METHOD)
def apply_dorefa(model: nn.Module, record: dict[str, Any]) -> None:
    """Insert the quantizers named by a :func:`dorefa_record` record (in place; checked in full first)."""
    weight_bits, activation_bits = record["weight_bits"], record["activation_bits"]
    check_bits("weight_bits", weight_bits)
    check_bits("activation_bits", activation_bits)
    layers = {name: _checked(model, name, _LAYER_TYPES, "nn.Conv2d or nn.Linear") for name in record["layers"]}
    activations = {name: _checked(model, name, (nn.ReLU, nn.ReLU6), "a ReLU") for name in record["activations"]}
    for name, layer in layers.items():
        if isinstance(layer, CosineLinear) and weight_bits != FULL_PRECISION:
            raise ValueError(
                f"dorefa: {name!r} is a cosine classifier (model.init_args.classifier=cosine); DoReFa's linear layer "
                "would drop its normalisation. Keep it in full precision (list it in exclude, as the default does)"
            )
    for name, layer in layers.items():
        if weight_bits != FULL_PRECISION:
            layer = _quantized_copy(layer, weight_bits)
            model.set_submodule(name, layer)
        layer.quantized_by = METHOD
        layer.weight_bits = weight_bits
    for name, activation in activations.items():
        model.set_submodule(name, QuantizedReLU(activation_bits).train(activation.training))


def _checked(model: nn.Module, name: str, types: tuple[type[nn.Module], ...], expected: str) -> Any:
    module = model.get_submodule(name)
    if not isinstance(module, types):
        raise ValueError(f"dorefa: {name!r} is a {type(module).__name__}, expected {expected}")
    check_not_quantized(module, name, METHOD)
    return module
