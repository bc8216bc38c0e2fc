"""Training throughput of ResNet-20 under ClimbQ and ClimbQ+ (HomoVar loss), as a ratio to the plain training step.

ResNet-20 with option-B shortcuts, as in the official code (21 quantized convs and feature maps).

One training step = set the batch labels on the feature quantizers, forward, loss (cross-entropy, or the HomoVar
loss for ClimbQ+), backward, an SGD update, clear the labels; batch of random 32x32 images with long-tailed labels,
on the CPU. The variants are timed round-robin in the same process (a change in machine load hits them alike);
each figure is the median over repeats.

    python3 benchmarks/bench_climbq.py --batch-size 128 --repeats 5 --steps 3
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from timing import Step, median_step_seconds, parse_step_args, step_batch, step_mode
from torch import Tensor, nn

from imbcompress.compress.climbq import apply_climbq, clear_class_labels, climbq_record, set_class_labels
from imbcompress.compress.homovar import HomoVarLoss
from imbcompress.models import build_model

VARIANTS = {"plain": None, "climbq_w4": 4, "climbq_w2": 2, "climbq+_w4": 4, "climbq+_w2": 2}
CLASS_COUNTS = [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100]  # CIFAR-10-LT, rho 50


def _model(bits: int | None, channels_last: bool) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet20", 10, shortcut="B")  # the official code's model
    if bits is not None:
        apply_climbq(model, climbq_record(model, bits))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.train()


def make_step(variant: str, mode: str) -> Step:
    """A closure running one optimisation step of ``variant`` in ``mode`` (``timing.STEP_MODES``)."""
    bf16, channels_last = step_mode(mode)
    model = _model(VARIANTS[variant], channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.04, momentum=0.9, weight_decay=1e-4)
    homovar = HomoVarLoss(CLASS_COUNTS) if variant.startswith("climbq+") else None

    def step(images: Tensor, labels: Tensor) -> None:
        set_class_labels(model, labels, CLASS_COUNTS)
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            features = model.forward_features(images)
            logits = model.forward_head(features)
            if homovar is None:
                loss = F.cross_entropy(logits.float(), labels)
            else:
                loss = homovar(SimpleNamespace(features=features, logits=logits, targets=labels, stage="train"))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        clear_class_labels(model)

    return step


def _long_tailed_labels(batch_size: int) -> Tensor:
    generator = torch.Generator().manual_seed(0)
    weights = torch.tensor(CLASS_COUNTS, dtype=torch.float)
    return torch.multinomial(weights, batch_size, replacement=True, generator=generator)


def measure(batch_size: int, repeats: int, steps: int, mode: str, clock: Callable[[], float]) -> dict[str, float]:
    """Median seconds per training step of every variant."""
    images = step_batch(batch_size, step_mode(mode)[1])
    labels = _long_tailed_labels(batch_size)
    runs = {variant: make_step(variant, mode) for variant in VARIANTS}
    return median_step_seconds(runs, images, labels, repeats, steps, clock)


def main() -> None:
    args = parse_step_args(__doc__.splitlines()[0], default_modes="bf16")
    print("| mode | variant | step (ms) | images/s | throughput vs plain |")
    print("|---|---|---|---|---|")
    for mode in args.modes.split(","):
        seconds = measure(args.batch_size, args.repeats, args.steps, mode, clock=args.clock_fn)
        for variant, value in seconds.items():
            ratio = seconds["plain"] / value
            print(f"| {mode} | {variant} | {1000 * value:.0f} | {args.batch_size / value:.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
