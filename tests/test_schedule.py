"""Learning-rate schedule arithmetic, without a Trainer."""

from __future__ import annotations

import pytest

from imbcompress.schedule import StepPlan, lr_factor, lr_lambda, plan_steps


def test_epochs_become_steps_and_the_shorter_limit_wins() -> None:
    assert plan_steps(10, 8, None, 0.5, None) == StepPlan(5, 80, (40, 60))
    assert plan_steps(10, 8, 30, 0.0, None) == StepPlan(0, 30, (15, 22))  # max_steps ends the run first
    assert plan_steps(10, -1, 25, 0.0, [1, 2]) == StepPlan(0, 25, (10, 20))  # unlimited epochs
    assert plan_steps(10, None, None, 0.0, None).total_steps == 1  # never 0 (the cosine divides by it)


def test_multistep_defaults_to_half_and_three_quarters_of_a_one_epoch_run() -> None:
    plan = plan_steps(4, 1, None, 0.0, None)
    factor = lr_lambda("multistep", plan, 0.1)
    assert [factor(step) for step in range(4)] == pytest.approx([1.0, 1.0, 0.1, 0.01])


def test_lr_factor_shapes() -> None:
    assert lr_factor(0, "multistep", 4, 100, [50, 75], 0.1) == pytest.approx(0.25)  # warm-up
    assert lr_factor(3, "cosine", 4, 100, [], 0.1) == pytest.approx(1.0)
    assert lr_factor(52, "cosine", 4, 100, [], 0.1) == pytest.approx(0.5)  # half-way after the warm-up
    assert lr_factor(500, "cosine", 4, 100, [], 0.1) == pytest.approx(0.0)
    assert lr_factor(99, "constant", 0, 100, [50], 0.1) == 1.0
