"""ClimbQ (Chen et al., NeurIPS 2022): class-imbalanced quantization of conv weights and features (SPEC §4.4).

Every selected convolution quantizes its weight through the normal CDF of the tensor's own statistics, and the
BatchNorm after it quantizes its output (before the ReLU) through a class-conditional normal CDF:

- ``official`` (default, tinganchen/ClimbQ): u = Phi(x / c) with per-sample c = 2 - b_y / sum_k b_k^2 (b_k are
  the batch class counts) during training and c = 2 otherwise; output (2 Q_B(u) - 1) * 2.
- ``paper``: u = Phi((x - mu_k) / (c_k sigma_k)) with c_k = 2 - n_k / N (training-set counts) and mu_k, sigma_k
  the batch statistics of class k at that layer during training; the standard normal CDF otherwise.

Quantized layers stay ``nn.Conv2d`` / ``nn.BatchNorm2d`` subclasses (their class is swapped in place, so
parameters, buffers, hooks and references held by other callbacks are untouched) and the quantizers are ordinary
submodules without state, so state-dict keys equal the dense model's.

Labels reach the feature quantizers only through :func:`set_class_labels` (the callback calls it before each
training step and :func:`clear_class_labels` after it); a quantizer in eval mode ignores them.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

from imbcompress.compress.homovar import check_settings as check_homovar_settings
from imbcompress.compress.transforms import check_not_quantized, register_transform
from imbcompress.models.trace import Call, trace
from imbcompress.names import check_bits as _check_bits

Mode = Literal["official", "paper"]
MODES: tuple[str, ...] = ("official", "paper")
MIN_BITS, MAX_BITS = 2, 8
ACTIVATION_RANGE = 2.0  # official code's act_range: features are mapped back to [-2, 2]
_EPS = 1e-8


def check_bits(bits: int, setting: str = "ClimbQ bits") -> None:
    """Raise ``ValueError`` unless ``bits`` is an int in 2..8 (B = 1 maps every value to +1 in [CQ]'s code)."""
    _check_bits(setting, bits, MIN_BITS, MAX_BITS)


def check_settings(
    bits: int,
    mode: str,
    exclude: list[str] | None,
    homovar_mode: str = "official",
    alpha: float = 0.05,
    beta: float = 0.999,
    prefix: str = "ClimbQ.",
) -> None:
    """Validate ClimbQ's settings and those of its HomoVar loss (no model needed); ``prefix`` names the owner."""
    check_bits(bits, setting=f"{prefix}bits")
    if mode not in MODES:
        raise ValueError(f"{prefix}mode must be one of {MODES}, got {mode!r}")
    check_homovar_settings(homovar_mode, alpha, beta, prefix=prefix, mode_name="homovar_mode")
    if exclude is not None and not all(isinstance(name, str) and name for name in exclude):
        raise ValueError(f"{prefix}exclude must be a list of module names, got {exclude!r}")


def check_mode(mode: str) -> None:
    """Raise ``ValueError`` unless ``mode`` is a known ClimbQ mode."""
    if mode not in MODES:
        raise ValueError(f"ClimbQ mode must be one of {MODES}, got {mode!r}")


def round_ste(u: Tensor, bits: int) -> Tensor:
    """Q_B(u) = round((2^B - 1) u) / (2^B - 1) with a straight-through (identity) gradient."""
    levels = 2**bits - 1
    return u + (torch.round(u * levels) / levels - u).detach()


def normal_cdf(x: Tensor) -> Tensor:
    """Standard normal CDF Phi(x) (exact gradient: the normal density)."""
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _compute_dtype(x: Tensor) -> torch.dtype:
    # fp32 at least (bf16 breaks the CDF's resolution); float64 inputs stay float64 for gradient checks.
    return torch.promote_types(x.dtype, torch.float32)


class ClimbQWeightQuantizer(nn.Module):
    """W_q = 2 Q_B(Phi((W - mean W) / std W)) - 1, one mean and std per tensor (both modes).

    Args:
        bits: Weight bit width B (2..8).
    """

    def __init__(self, bits: int) -> None:
        super().__init__()
        check_bits(bits)
        self.bits = bits

    def forward(self, weight: Tensor) -> Tensor:
        with torch.autocast(weight.device.type, enabled=False):
            w = weight.to(_compute_dtype(weight))
            z = (w - w.mean()) / w.std().clamp_min(_EPS)
            quantized = 2.0 * round_ste(normal_cdf(z), self.bits) - 1.0
        return quantized.to(weight.dtype)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class ClimbQActivationQuantizer(nn.Module):
    """Quantizes BatchNorm outputs with a class-conditional (training) or label-free (otherwise) normal CDF.

    Args:
        bits: Feature bit width B (2..8).
        mode: "official" (the published code) or "paper" (the text); see the module docstring.
    """

    labels: Tensor | None
    class_counts: Tensor | None
    batch_labels: BatchLabels | None

    def __init__(self, bits: int, mode: Mode = "official") -> None:
        super().__init__()
        check_bits(bits)
        check_mode(mode)
        self.bits = bits
        self.mode = mode
        # Plain attributes, never buffers: labels must not reach checkpoints or evaluation.
        self.labels = None
        self.class_counts = None
        self.batch_labels = None  # per-step label statistics shared by all quantizers (set_class_labels)

    def forward(self, x: Tensor) -> Tensor:
        labels = self.labels if self.training else None
        if labels is not None and labels.shape[0] != x.shape[0]:
            raise ValueError(
                f"ClimbQ batch labels have {labels.shape[0]} entries but the features have batch size {x.shape[0]}; "
                "set_class_labels must be given the labels of the batch that is being forwarded"
            )
        with torch.autocast(x.device.type, enabled=False):
            if labels is None:
                return _CdfQuantize.apply(x, self._label_free_inverse_scale(x), self.bits)
            stats = self._batch_labels(labels)
            if self.mode == "paper":
                # mu_k and sigma_k depend on x: plain autograd carries their gradients.
                u = normal_cdf(paper_standardise(x.to(_compute_dtype(x)), stats))
                return ((2.0 * round_ste(u, self.bits) - 1.0) * ACTIVATION_RANGE).to(x.dtype)
            shape = (-1, *([1] * (x.dim() - 1)))
            return _CdfQuantize.apply(x, stats.official_inverse_scale.to(_compute_dtype(x)).view(shape), self.bits)

    def _batch_labels(self, labels: Tensor) -> BatchLabels:
        """The shared statistics of ``labels`` (computed once per step), or fresh ones for labels set directly."""
        if self.batch_labels is not None and self.batch_labels.labels is labels:
            return self.batch_labels
        return BatchLabels(labels, self.class_counts)

    def _label_free_inverse_scale(self, x: Tensor) -> Tensor:
        """1 / c in u = Phi(x / c) without labels: c = 2 (official) or 1 (paper)."""
        scale = torch.tensor([2.0 if self.mode == "official" else 1.0], device=x.device)
        return (1.0 / scale).to(_compute_dtype(x)).view(-1, *([1] * (x.dim() - 1)))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, mode={self.mode}"


class _CdfQuantize(torch.autograd.Function):
    """(2 Q_B(Phi(x / c)) - 1) * 2; backward straight-through the rounding and exact through Phi.

    One op instead of a dozen autograd nodes, with in-place steps: it keeps only ``x`` (in its own, often bf16,
    dtype) for the backward pass and makes about 7 passes over the features each way instead of about 10.
    ``inv_scale`` (1 / c) must have ``x.dim()`` dimensions so that ``x * inv_scale`` promotes to its dtype.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, inv_scale: Tensor, bits: int) -> Tensor:
        levels = 2**bits - 1
        # Phi(z) = (1 + erf(z / sqrt 2)) / 2; erf is vectorised on CPU, torch.special.ndtr is about 4x slower.
        u = torch.mul(x, inv_scale * (1.0 / math.sqrt(2.0)))
        torch.erf(u, out=u)
        u.mul_(levels / 2).add_(levels / 2).round_().mul_(2.0 * ACTIVATION_RANGE / levels).sub_(ACTIVATION_RANGE)
        ctx.save_for_backward(x, inv_scale)
        return u.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        x, inv_scale = ctx.saved_tensors
        slope = torch.mul(x, inv_scale).square_().mul_(-0.5).exp_()  # sqrt(2 pi) * density of z = x / c
        slope.mul_(grad).mul_(inv_scale * (2.0 * ACTIVATION_RANGE / math.sqrt(2.0 * math.pi)))
        return slope.to(x.dtype), None, None


class BatchLabels:
    """One training batch's labels and the statistics every feature quantizer derives from them.

    :func:`set_class_labels` builds one per step and shares it, so the bincount, the per-sample official scale and
    the label check (a host sync) run once per step instead of once per quantizer. Plain tensors, never saved.

    Args:
        labels: Class of every sample of the batch.
        class_counts: Training-set class sizes (needed by ``paper`` mode only).
    """

    def __init__(self, labels: Tensor, class_counts: Tensor | None) -> None:
        self.labels = labels
        self.class_counts = class_counts
        self._official_inverse_scale: Tensor | None = None
        self._class_batch_counts: Tensor | None = None

    @property
    def official_inverse_scale(self) -> Tensor:
        """Per-sample 1 / c, c = 2 - b_y / sum_k b_k^2 with b_k the batch class counts (float64)."""
        if self._official_inverse_scale is None:
            batch_counts = torch.bincount(self.labels).to(torch.float64)
            self._official_inverse_scale = 1.0 / (2.0 - batch_counts[self.labels] / batch_counts.square().sum())
        return self._official_inverse_scale

    @property
    def class_batch_counts(self) -> Tensor:
        """Batch count of every class of the training set (checks that every label has a class count)."""
        if self._class_batch_counts is None:
            if self.class_counts is None:
                raise ValueError(
                    "ClimbQ mode 'paper' needs the training-set class counts: pass class_counts to set_class_labels"
                )
            num_classes = self.class_counts.numel()
            if int(self.labels.max()) >= num_classes:
                raise ValueError(f"ClimbQ got label {int(self.labels.max())} but only {num_classes} class counts")
            self._class_batch_counts = torch.bincount(self.labels, minlength=num_classes)
        return self._class_batch_counts


def paper_standardise(x: Tensor, stats: BatchLabels) -> Tensor:
    """(x - mu_y) / (c_y sigma_y) with per-class batch statistics and c_k = 2 - n_k / N."""
    batch_counts = stats.class_batch_counts.to(x.dtype)
    labels, class_counts = stats.labels, stats.class_counts
    assert class_counts is not None  # checked by class_batch_counts
    num_classes = class_counts.numel()
    flat = x.reshape(x.shape[0], -1)
    per_sample = flat.shape[1]
    sums = torch.zeros(num_classes, dtype=x.dtype, device=x.device).index_add(0, labels, flat.sum(1))
    mean = sums / (batch_counts * per_sample).clamp_min(1.0)
    deviation = flat - mean[labels].unsqueeze(1)
    squares = torch.zeros_like(sums).index_add(0, labels, deviation.square().sum(1))
    std = (squares / (batch_counts * per_sample - 1.0).clamp_min(1.0)).sqrt().clamp_min(_EPS)
    # A class with fewer than two samples in the batch has no usable statistics: N(0, 1) as at test time.
    usable = batch_counts >= 2
    mean = torch.where(usable, mean, torch.zeros_like(mean))
    std = torch.where(usable, std, torch.ones_like(std))
    counts = class_counts.to(device=x.device, dtype=x.dtype)
    scale = 2.0 - counts / counts.sum()
    shape = (-1, *([1] * (x.dim() - 1)))
    return (x - mean[labels].view(shape)) / (scale * std)[labels].view(shape)


class ClimbQConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose forward pass uses the ClimbQ-quantized weight; ``weight`` stays the fp master copy."""

    weight_quantizer: ClimbQWeightQuantizer

    def __init__(self, *args: Any, bits: int = 4, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._mark(bits)

    @classmethod
    def convert(cls, conv: nn.Conv2d, bits: int) -> ClimbQConv2d:
        """Turn a plain ``nn.Conv2d`` into a ``ClimbQConv2d`` in place (same object, parameters and hooks)."""
        if type(conv) is not nn.Conv2d:
            raise ValueError(f"ClimbQ can only quantize plain nn.Conv2d layers, got {type(conv).__name__}")
        conv.__class__ = cls
        assert isinstance(conv, ClimbQConv2d)
        conv._mark(bits)
        return conv

    def _mark(self, bits: int) -> None:
        self.weight_quantizer = ClimbQWeightQuantizer(bits)
        self.quantized_by = "climbq"
        self.weight_bits = bits

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight_quantizer(self.weight), self.bias)


class ClimbQBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` followed by a ClimbQ feature quantizer (the quantized conv's features, before the ReLU)."""

    act_quantizer: ClimbQActivationQuantizer

    def __init__(self, *args: Any, bits: int = 4, mode: Mode = "official", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._mark(bits, mode)

    @classmethod
    def convert(cls, bn: nn.BatchNorm2d, bits: int, mode: Mode) -> ClimbQBatchNorm2d:
        """Turn a plain ``nn.BatchNorm2d`` into a ``ClimbQBatchNorm2d`` in place."""
        if type(bn) is not nn.BatchNorm2d:
            raise ValueError(f"ClimbQ can only quantize the output of plain nn.BatchNorm2d, got {type(bn).__name__}")
        bn.__class__ = cls
        assert isinstance(bn, ClimbQBatchNorm2d)
        bn._mark(bits, mode)
        return bn

    def _mark(self, bits: int, mode: Mode) -> None:
        self.act_quantizer = ClimbQActivationQuantizer(bits, mode)
        self.activation_bits = bits

    def forward(self, x: Tensor) -> Tensor:
        return self.act_quantizer(super().forward(x))


def _excluded(name: str, exclude: list[str]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in exclude)


def _conv_bn_pairs(model: nn.Module) -> list[tuple[str, str | None]]:
    """(conv name, name of the plain ``nn.BatchNorm2d`` that normalises its output, or None), in execution order.

    Found from one forward pass (imbcompress.models.trace): the BatchNorm is the module whose input is the conv's
    output tensor, so this holds for any architecture, whatever its module names. A conv followed by another kind of
    normalisation (e.g. timm's fused ``BatchNormAct2d``) gets a weight quantizer but no feature quantizer.
    """
    calls = trace(model)
    consumers: dict[int, list[Call]] = {}
    for call in calls:
        for tensor in call.inputs:
            consumers.setdefault(tensor, []).append(call)
    pairs: dict[str, str | None] = {}
    for call in calls:
        if not isinstance(call.module, nn.Conv2d) or call.name in pairs:
            continue
        followers = [c for c in consumers.get(call.output, []) if type(c.module) is nn.BatchNorm2d]
        bn = followers[0] if len(followers) == 1 else None
        pairs[call.name] = bn.name if bn is not None and bn.module.num_features == call.module.out_channels else None
    return list(pairs.items())


def climbq_record(model: nn.Module, bits: int, mode: Mode = "official", exclude: list[str] | None = None) -> dict:
    """Structural-transform record quantizing every conv of ``model`` (and its BatchNorm output) except ``exclude``.

    Args:
        model: The model (its module names are resolved now, so the record replays without the callback).
        bits: Bit width of weights and features (2..8).
        mode: "official" or "paper".
        exclude: Module names (or name prefixes such as "layer1") kept in full precision.
    """
    check_bits(bits)
    check_mode(mode)
    exclude = list(exclude or [])
    names = {name for name, _ in model.named_modules()}
    unknown = [prefix for prefix in exclude if not any(_excluded(name, [prefix]) for name in names)]
    if unknown:
        raise ValueError(f"ClimbQ exclude names {unknown} match no module of the model")
    pairs = [(conv, bn) for conv, bn in _conv_bn_pairs(model) if not _excluded(conv, exclude)]
    if not pairs:
        raise ValueError(f"ClimbQ found no convolution to quantize (exclude={exclude})")
    return {
        "kind": "climbq",
        "bits": bits,
        "mode": mode,
        "weight_layers": [conv for conv, _ in pairs],
        "activation_layers": [bn for _, bn in pairs if bn is not None],
    }


@register_transform("climbq")
def apply_climbq(model: nn.Module, record: dict[str, Any]) -> None:
    """Quantize the layers named in a ``climbq_record`` in place."""
    bits, mode = record["bits"], record["mode"]
    check_bits(bits)
    check_mode(mode)
    convs = [(name, model.get_submodule(name)) for name in record["weight_layers"]]
    for name, conv in convs:
        check_not_quantized(conv, name, "climbq")
    for _, conv in convs:
        ClimbQConv2d.convert(conv, bits)  # type: ignore[arg-type]
    for name in record["activation_layers"]:
        ClimbQBatchNorm2d.convert(model.get_submodule(name), bits, mode)  # type: ignore[arg-type]


def activation_quantizers(model: nn.Module) -> list[ClimbQActivationQuantizer]:
    """All ClimbQ feature quantizers of ``model``."""
    return [module for module in model.modules() if isinstance(module, ClimbQActivationQuantizer)]


def set_class_labels(model: nn.Module, labels: Tensor, class_counts: Tensor | list[int] | None = None) -> None:
    """Give every feature quantizer the current training batch's labels (and the training-set class counts).

    Used only in training mode; call :func:`clear_class_labels` after the step.
    """
    counts = None if class_counts is None else torch.as_tensor(class_counts, device=labels.device)
    shared = BatchLabels(labels, counts)
    for quantizer in activation_quantizers(model):
        quantizer.labels = labels
        quantizer.class_counts = counts
        quantizer.batch_labels = shared


def clear_class_labels(model: nn.Module) -> None:
    """Remove the batch labels from every feature quantizer (back to the label-free rule)."""
    for quantizer in activation_quantizers(model):
        quantizer.labels = None
        quantizer.class_counts = None
        quantizer.batch_labels = None
