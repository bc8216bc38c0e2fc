"""Training throughput of ResNet-20 under DoReFa QAT and distillation, as a ratio to the plain training step.

One training step = forward, loss, backward and an SGD update on one batch of random 32x32 images. The variants
(plain, QAT (A8,W4), (A3,W3), (A2,W2), distillation from an FP32 ResNet-20 teacher) are timed round-robin in the
same process, so a change in machine load hits all of them alike; each figure is the median over repeats.

    python3 benchmarks/bench_qat.py --batch-size 128 --repeats 5 --steps 3
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from timing import Step, median_step_seconds, parse_step_args, step_batch, step_mode
from torch import Tensor, nn

from imbcompress.compress.distillation import DistillationTerm
from imbcompress.compress.dorefa import apply_dorefa, dorefa_record
from imbcompress.models import build_model

VARIANTS = ("plain", "qat_a8w4", "qat_a3w3", "qat_a2w2", "distill")
BITS = {"qat_a8w4": (4, 8), "qat_a3w3": (3, 3), "qat_a2w2": (2, 2)}


def _model(variant: str, channels_last: bool) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    if variant in BITS:
        weight_bits, activation_bits = BITS[variant]
        apply_dorefa(model, dorefa_record(model, weight_bits, activation_bits, None))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.train()


def make_step(variant: str, mode: str) -> Step:
    """A closure running one optimisation step of ``variant`` in ``mode`` (``timing.STEP_MODES``)."""
    bf16, channels_last = step_mode(mode)
    model = _model(variant, channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    teacher = _model("plain", channels_last) if variant == "distill" else None
    term = DistillationTerm(teacher, alpha=0.7, temperature=1.0) if teacher is not None else None

    def step(images: Tensor, labels: Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            logits = model(images)
            loss = (term.base_weight if term else 1.0) * F.cross_entropy(logits.float(), labels)
            if term is not None:
                loss = loss + term(_Context(images, logits))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


class _Context:
    """The two ``LossContext`` fields the distillation term reads."""

    stage = "train"

    def __init__(self, inputs: Tensor, logits: Tensor) -> None:
        self.inputs, self.logits = inputs, logits


def measure(batch_size: int, repeats: int, steps: int, mode: str, clock: Callable[[], float]) -> dict[str, float]:
    """Median seconds per training step of every variant."""
    images = step_batch(batch_size, step_mode(mode)[1])
    labels = torch.randint(0, 10, (batch_size,))
    runs = {variant: make_step(variant, mode) for variant in VARIANTS}
    return median_step_seconds(runs, images, labels, repeats, steps, clock)


def main() -> None:
    args = parse_step_args(__doc__.splitlines()[0], default_modes="bf16,fp32")
    print("| mode | variant | step (ms) | images/s | time vs plain |")
    print("|---|---|---|---|---|")
    for mode in args.modes.split(","):
        seconds = measure(args.batch_size, args.repeats, args.steps, mode, clock=args.clock_fn)
        for variant, value in seconds.items():
            ratio = value / seconds["plain"]
            print(f"| {mode} | {variant} | {1000 * value:.0f} | {args.batch_size / value:.0f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
