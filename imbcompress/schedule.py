"""Learning-rate schedule arithmetic: step counts and the per-step multiplier (pure Python, no Trainer).

The task turns the Trainer's settings into :class:`StepPlan` once and hands :func:`lr_lambda` to ``LambdaLR``
(updated every optimisation step).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

Scheduler = Literal["multistep", "cosine", "constant"]


@dataclass(frozen=True)
class StepPlan:
    """A schedule in optimisation steps.

    Attributes:
        warmup_steps: Length of the linear warm-up.
        total_steps: Steps of the whole run (the cosine reaches 0 there).
        milestone_steps: Steps at which "multistep" multiplies the rate by ``gamma``.
    """

    warmup_steps: int
    total_steps: int
    milestone_steps: tuple[int, ...]


def plan_steps(
    steps_per_epoch: int,
    max_epochs: int | None,
    max_steps: int | None,
    warmup_epochs: float,
    milestones: Sequence[int] | None,
) -> StepPlan:
    """Convert epoch-based settings to steps.

    Args:
        steps_per_epoch: Optimisation steps per epoch (>= 1).
        max_epochs: The Trainer's ``max_epochs``; None or <= 0 when unlimited.
        max_steps: The Trainer's ``max_steps``; None or <= 0 when unlimited. The run ends at whichever comes first.
        warmup_epochs: Warm-up length in epochs (fractions allowed).
        milestones: Epochs of the "multistep" decays; None for 50 % and 75 % of the run.
    """
    epochs = max_epochs if max_epochs is not None and max_epochs > 0 else None
    limit = max_steps if max_steps is not None and max_steps > 0 else None
    total = steps_per_epoch * epochs if epochs is not None else (limit or 1)
    if limit is not None:
        total = min(total, limit)
    total = max(1, total)
    if milestones is not None:
        milestone_steps = tuple(int(epoch) * steps_per_epoch for epoch in milestones)
    else:  # 50 % and 75 % of the run, in steps, so a one-epoch run does not start at lr x gamma^2
        milestone_steps = (total // 2, (3 * total) // 4)
    return StepPlan(int(warmup_epochs * steps_per_epoch), total, milestone_steps)


def lr_factor(
    step: int, scheduler: str, warmup_steps: int, total_steps: int, milestone_steps: Sequence[int], gamma: float
) -> float:
    """Learning-rate multiplier at optimisation step ``step`` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if scheduler == "multistep":
        return gamma ** sum(step >= milestone for milestone in milestone_steps)
    if scheduler == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def lr_lambda(scheduler: str, plan: StepPlan, gamma: float) -> Callable[[int], float]:
    """The multiplier as a plain function of the step, for ``torch.optim.lr_scheduler.LambdaLR``.

    A function, not a callable object: ``LambdaLR`` would store an object's attributes in checkpoints and restore
    them over the values computed for the resumed run.
    """
    return lambda step: lr_factor(step, scheduler, plan.warmup_steps, plan.total_steps, plan.milestone_steps, gamma)
