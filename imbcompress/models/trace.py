"""What a forward pass does, found by running one: the order modules execute in and which module feeds which.

Compression methods use this to find layers by their place in the network (the first conv, the last linear, the
BatchNorm that normalises a conv's output) instead of by the registry models' module names, so they work on any
architecture (timm, torchvision). The pass runs in eval mode without gradients (BatchNorm statistics and dropout
are untouched) on one random image, and each module's own train/eval flag is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

DEFAULT_INPUT_SIZE = (3, 32, 32)
"""The example image of a trace when none is given (any CIFAR-sized convnet accepts it)."""


@dataclass(frozen=True)
class Call:
    """One module call of a traced forward pass (recorded when the call returns)."""

    name: str
    module: nn.Module
    inputs: tuple[int, ...]  # id() of the tensor arguments (unique within one trace)
    output: int  # id() of the output tensor (0 when it is not a tensor)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode for the block, then give each its own flag back."""
    flags = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags.items():
            module.training = training


def example_input(model: nn.Module, input_size: Sequence[int] | None = None) -> Tensor:
    """One random image of ``input_size`` (C, H, W; default 3x32x32) on the model's device and in its dtype."""
    reference = next(iter(model.parameters()), None)
    size = tuple(input_size) if input_size is not None else DEFAULT_INPUT_SIZE
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, *size, generator=generator)
    if reference is None:
        return image
    dtype = reference.dtype if reference.is_floating_point() else torch.float32
    return image.to(reference.device, dtype)


def input_sizes(model: nn.Module, input_size: Sequence[int] | None = None) -> list[tuple[int, ...]]:
    """The example sizes to try: the given one, else 32x32 and then the model's own ``default_input_size``."""
    if input_size is not None:
        return [tuple(input_size)]
    sizes: list[tuple[int, ...]] = [DEFAULT_INPUT_SIZE]
    own = getattr(model, "default_input_size", None)
    if own is not None and tuple(own) != DEFAULT_INPUT_SIZE:
        sizes.append(tuple(own))
    return sizes


def _submodules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    # Every module, not only the leaves: a quantized conv (DoReFaConv2d, ClimbQConv2d) has a quantizer child.
    for name, module in model.named_modules():
        if name:
            yield name, module


def _tensor_ids(values: Any) -> tuple[int, ...]:
    return tuple(id(value) for value in values if isinstance(value, Tensor))


@torch.no_grad()
def _trace_once(model: nn.Module, image: Tensor) -> list[Call]:
    calls: list[Call] = []
    alive: list[Any] = []  # every tensor seen stays referenced until the trace ends, so no id() is reused

    def hook(name: str) -> Any:
        def record(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            alive.append((inputs, output))
            calls.append(Call(name, module, _tensor_ids(inputs), id(output) if isinstance(output, Tensor) else 0))

        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in _submodules(model)]
    try:
        with eval_mode(model):
            model(image)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def trace(model: nn.Module, input_size: Sequence[int] | None = None) -> list[Call]:
    """Every module call of one forward pass, in the order the calls return (see :func:`traced_size`)."""
    return traced_size(model, input_size)[1]


def traced_size(model: nn.Module, input_size: Sequence[int] | None = None) -> tuple[tuple[int, ...], list[Call]]:
    """The example size that ran and every module call of that forward pass, in the order the calls return (for
    a module without children: the order they run in; a container comes after its children).

    Args:
        model: The model.
        input_size: (C, H, W) of the example image; default 3x32x32, then the model's ``default_input_size``
            (e.g. 224x224 for a transformer with a fixed input size).

    Raises:
        ValueError: The model does not run on any of the example sizes.
    """
    errors = []
    for size in input_sizes(model, input_size):
        try:
            return size, _trace_once(model, example_input(model, size))
        except (RuntimeError, AssertionError, ValueError) as err:
            errors.append(f"{'x'.join(map(str, size))}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    raise ValueError(f"{type(model).__name__} could not run an example image to find its layers ({'; '.join(errors)})")


def execution_order(model: nn.Module, input_size: Sequence[int] | None = None) -> list[str]:
    """Names of the modules in the order their first call returns (a leaf: the order it runs in)."""
    return list(dict.fromkeys(call.name for call in trace(model, input_size)))
