"""Distillation loss (SPEC §4.3) against hand-computed values, and the frozen-teacher loss term."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from imbcompress.compress.distillation import DistillationTerm, distillation_loss, distillation_term
from imbcompress.models import build_model


def _softmax(values: list[float], temperature: float) -> list[float]:
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def _hand_kl(student: list[list[float]], teacher: list[list[float]], temperature: float) -> float:
    total = 0.0
    for z_s, z_t in zip(student, teacher):
        p_s, p_t = _softmax(z_s, temperature), _softmax(z_t, temperature)
        total += sum(t * math.log(t / s) for s, t in zip(p_s, p_t))
    return total / len(student)


STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
TEACHER = [[2.0, 0.0, 1.0], [0.5, 0.5, 2.0]]


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_term_is_t_squared_times_kl_teacher_to_student(temperature: float) -> None:
    value = distillation_term(torch.tensor(STUDENT), torch.tensor(TEACHER), temperature)
    expected = temperature**2 * _hand_kl(STUDENT, TEACHER, temperature)
    assert value.item() == pytest.approx(expected, rel=1e-5)
    assert value.dtype == torch.float32


def test_hand_computed_number_at_t2() -> None:
    # Worked by hand: KL per sample at T = 2 is 0.1953 and 0.1270 (mean 0.1612), times T^2 = 4.
    value = distillation_term(torch.tensor(STUDENT), torch.tensor(TEACHER), 2.0)
    assert value.item() == pytest.approx(4 * _hand_kl(STUDENT, TEACHER, 2.0), rel=1e-6)
    assert value.item() == pytest.approx(0.6446, abs=5e-4)


def test_full_loss_mixes_kl_and_cross_entropy() -> None:
    targets = torch.tensor([1, 2])
    student, teacher = torch.tensor(STUDENT), torch.tensor(TEACHER)
    ce = -(math.log(_softmax(STUDENT[0], 1)[1]) + math.log(_softmax(STUDENT[1], 1)[2])) / 2
    loss = distillation_loss(student, teacher, targets, alpha=0.7, temperature=3.0)
    assert loss.item() == pytest.approx(0.7 * 9 * _hand_kl(STUDENT, TEACHER, 3.0) + 0.3 * ce, rel=1e-5)
    bf16 = distillation_loss(student.bfloat16(), teacher.bfloat16(), targets, alpha=0.7, temperature=3.0)
    assert bf16.dtype == torch.float32
    assert distillation_term(student, student, 2.0).item() == pytest.approx(0.0, abs=1e-7)


def test_term_uses_a_frozen_teacher_and_no_gradient_reaches_it() -> None:
    torch.manual_seed(0)
    teacher, student = build_model("resnet20", 3), build_model("resnet20", 3)
    running_mean = teacher.stem.bn.running_mean.clone()
    term = DistillationTerm(teacher, alpha=0.7, temperature=2.0)
    assert term.base_weight == pytest.approx(0.3)
    teacher.train()  # e.g. a stray .train() call: the term must still use running BN statistics
    inputs = torch.randn(4, 3, 32, 32)
    logits = student(inputs)
    value = term(SimpleNamespace(inputs=inputs, logits=logits, stage="train"))
    value.backward()
    assert not teacher.training and all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert torch.equal(teacher.stem.bn.running_mean, running_mean)
    assert student.classifier.weight.grad is not None
    with torch.no_grad():
        expected = 0.7 * distillation_term(logits, teacher(inputs), 2.0)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    assert term(SimpleNamespace(inputs=inputs, logits=logits, stage="eval")).item() == 0.0


def test_teacher_follows_the_inputs_memory_format() -> None:
    teacher = build_model("resnet20", 3)
    term = DistillationTerm(teacher, alpha=0.5, temperature=1.0)
    inputs = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    term.teacher_logits(inputs)
    assert teacher.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    ("alpha", "temperature", "match"), [(1.5, 1.0, "alpha"), (-0.1, 1.0, "alpha"), (0.5, 0.0, "temperature")]
)
def test_bad_settings(alpha: float, temperature: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DistillationTerm(nn.Linear(2, 2), alpha=alpha, temperature=temperature)
