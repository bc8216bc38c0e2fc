"""Model-size accounting (SPEC §5): parameters, NNZ, weight storage in bits and [C24]'s Mib column.

Rules, for every model (dense, pruned, masked or quantized):

- ``nnz``: nonzeros of the effective ``weight`` of every convolution and linear module (the [C24]/Distiller
  rule: no biases, no BatchNorm). Zeros left by ``torch.nn.utils.prune`` or Lightning's ``ModelPruning`` count as
  pruned, because the effective ``weight`` is the masked tensor.
- ``dense_weights``: element count of those weights (what ``nnz`` would be without any zero).
- ``sparsity``: ``1 - nnz / reference_nnz`` when the unpruned architecture's count is given; otherwise
  ``1 - nnz / dense_weights``. A physically pruned model no longer knows its unpruned size, so its sparsity
  against the original architecture needs the reference count (e.g. ``model_size(dense_model)["nnz"]``).
- ``weight_storage_bits``: sum over conv/linear weights of nonzeros x the module's ``weight_bits`` (32 when the
  module has none), plus every other parameter (BatchNorm affine, biases, quantizer parameters) at 32 bits.
  Buffers (BatchNorm running statistics) are not counted, as in SPEC §5.
- ``paper_mibit``: [C24] Table A8's figure, ``nnz x (A + W) / 2 / 2**20``, applied to every NNZ with one pair of
  bit widths: W = the smallest ``weight_bits`` in the model (32 if none) and A = ``activation_bits`` (32 if None).
  That uniform rule is the one that reproduces the paper: ResNet-20 FP32 8.18, (A8,W4) 1.53, (A3,W3) 0.76,
  ResNet-56 (B) 25.98 and 4.87 Mib (the paper truncates to two decimals). Counting the full-precision stem conv
  and classifier at 32 bits instead would give 1.56, 0.79 and 4.89. It is a comparison column, not a storage size.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import torch
from torch import Tensor, nn

FULL_PRECISION_BITS = 32
_WEIGHT_NAMES = ("weight", "weight_orig")  # "weight_orig": the dense tensor behind a torch.nn.utils.prune mask
WeightModule = nn.modules.conv._ConvNd | nn.Linear


def weight_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(name, module)`` for every convolution and linear module (the modules NNZ counts)."""
    for name, module in model.named_modules():
        if isinstance(module, WeightModule):
            yield name, module


def _weight(module: nn.Module) -> Tensor:
    """The effective weight (with a torch.nn.utils.prune mask applied, it is a plain tensor attribute)."""
    return cast(Tensor, module.weight)


def dense_weight_count(model: nn.Module) -> int:
    """Element count of all conv/linear weights (NNZ of the model if it had no zeros)."""
    return sum(_weight(module).numel() for _, module in weight_modules(model))


def _other_parameter_count(model: nn.Module) -> int:
    count = 0
    for module in model.modules():
        is_weight_module = isinstance(module, WeightModule)
        for name, param in module.named_parameters(recurse=False):
            if not (is_weight_module and name in _WEIGHT_NAMES):
                count += param.numel()
    return count


def _paper_weight_bits(model: nn.Module) -> int:
    widths = [int(getattr(module, "weight_bits", FULL_PRECISION_BITS)) for _, module in weight_modules(model)]
    return min(widths, default=FULL_PRECISION_BITS)


@torch.no_grad()
def model_size(
    model: nn.Module, activation_bits: int | None = None, reference_nnz: int | None = None
) -> dict[str, int | float]:
    """Size figures of ``model`` (see the module docstring for the exact rules).

    Args:
        model: Any ``nn.Module``; conv and linear modules may carry an int ``weight_bits``.
        activation_bits: Activation bit width for the ``paper_mibit`` column (None: 32, full precision).
        reference_nnz: NNZ of the unpruned architecture; when given, ``sparsity`` is relative to it.

    Returns:
        ``total_params``, ``nnz``, ``dense_weights``, ``sparsity``, ``weight_storage_bits``,
        ``weight_storage_mib`` (bytes / 2**20), ``weight_storage_mibit`` (bits / 2**20) and ``paper_mibit``.
    """
    if activation_bits is not None and activation_bits < 1:
        raise ValueError(f"activation_bits must be a positive int or None, got {activation_bits!r}")
    if reference_nnz is not None and reference_nnz < 1:
        raise ValueError(f"reference_nnz must be a positive int or None, got {reference_nnz!r}")
    nnz = dense = weight_bits = 0
    for _, module in weight_modules(model):
        nonzero = int(torch.count_nonzero(_weight(module)))
        nnz += nonzero
        dense += _weight(module).numel()
        weight_bits += nonzero * int(getattr(module, "weight_bits", FULL_PRECISION_BITS))
    storage_bits = weight_bits + FULL_PRECISION_BITS * _other_parameter_count(model)
    paper_bits = nnz * (_paper_weight_bits(model) + (activation_bits or FULL_PRECISION_BITS)) / 2
    reference = reference_nnz if reference_nnz is not None else dense
    return {
        "total_params": sum(param.numel() for param in model.parameters()),
        "nnz": nnz,
        "dense_weights": dense,
        "sparsity": 1.0 - nnz / reference if reference else 0.0,
        "weight_storage_bits": storage_bits,
        "weight_storage_mib": storage_bits / 8 / 2**20,
        "weight_storage_mibit": storage_bits / 2**20,
        "paper_mibit": paper_bits / 2**20,
    }
