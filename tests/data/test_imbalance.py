"""Class counts against every row of SPEC §1's tables, and the seeded subset / split choices."""

from __future__ import annotations

import pytest
import torch

from imbcompress.data.imbalance import class_counts, derive_seed, select_indices, stratified_split

STEP_TAIL = {2: 2500, 10: 500, 20: 250, 50: 100, 100: 50}  # int(5000 / rho)
EXPONENTIAL = {
    2: ([5000, 4629, 4286, 3968, 3674, 3401, 3149, 2916, 2700, 2500], 36223),
    10: ([5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500], 20431),
    20: ([5000, 3584, 2569, 1842, 1320, 946, 678, 486, 348, 250], 17023),
    50: ([5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100], 13996),
    100: ([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], 12406),
    200: ([5000, 2775, 1540, 854, 474, 263, 146, 81, 45, 25], 11203),
}
CIFAR100_LT = {10: (19573, 50), 50: (12608, 10), 100: (10847, 5), 200: (9502, 2)}


@pytest.mark.parametrize("rho", sorted(STEP_TAIL))
@pytest.mark.parametrize("minority", [2, 5, 8])
def test_step_counts_match_spec_table(rho: int, minority: int) -> None:
    counts = class_counts("step", 10, 5000, rho, minority_classes=minority)
    assert counts == [5000] * (10 - minority) + [STEP_TAIL[rho]] * minority


@pytest.mark.parametrize("rho", sorted(EXPONENTIAL))
def test_exponential_counts_match_spec_table(rho: int) -> None:
    expected, total = EXPONENTIAL[rho]
    counts = class_counts("exponential", 10, 5000, rho)
    assert counts == expected
    assert sum(counts) == total


def test_linear_counts_match_spec() -> None:
    counts = class_counts("linear", 10, 5000, 10)
    assert counts == [5000, 4500, 4000, 3500, 3000, 2500, 2000, 1500, 1000, 500]
    assert sum(counts) == 27500


@pytest.mark.parametrize("rho", sorted(CIFAR100_LT))
def test_cifar100_lt_totals_and_tails(rho: int) -> None:
    total, tail = CIFAR100_LT[rho]
    counts = class_counts("exponential", 100, 500, rho)
    assert (sum(counts), counts[0], counts[-1]) == (total, 500, tail)


def test_balanced_and_head_last() -> None:
    assert class_counts("balanced", 10, 5000) == [5000] * 10
    first = class_counts("exponential", 10, 5000, 100)
    assert class_counts("exponential", 10, 5000, 100, head="last") == first[::-1]
    assert class_counts("step", 10, 5000, 10, minority_classes=2, head="last") == [500, 500] + [5000] * 8


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"profile": "exponential", "imbalance_ratio": 0.5}, "imbalance_ratio must be >= 1"),
        ({"profile": "step", "imbalance_ratio": 10}, "minority_classes in 1..9"),
        ({"profile": "step", "imbalance_ratio": 10, "minority_classes": 0}, "minority_classes in 1..9"),
        ({"profile": "step", "imbalance_ratio": 10, "minority_classes": 10}, "minority_classes in 1..9"),
        ({"profile": "exponential", "imbalance_ratio": 10, "minority_classes": 2}, "only applies to profile 'step'"),
        ({"profile": "balanced", "imbalance_ratio": 10}, "must be 1 for profile 'balanced'"),
        ({"profile": "zipf", "imbalance_ratio": 10}, "profile must be one of"),
        ({"profile": "linear", "imbalance_ratio": 10, "head": "middle"}, "head must be one of"),
    ],
)
def test_invalid_settings_are_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        class_counts(num_classes=10, n_max=5000, **kwargs)


@pytest.mark.parametrize("profile", ["step", "exponential"])
def test_a_class_with_zero_images_is_an_error(profile: str) -> None:
    minority = 3 if profile == "step" else None
    with pytest.raises(ValueError, match=r"leaves classes \[.*9\] with zero training images"):
        class_counts(profile, 10, 5000, 10_000, minority_classes=minority)


def _labels(per_class: list[int], seed: int = 0) -> torch.Tensor:
    labels = torch.repeat_interleave(torch.arange(len(per_class)), torch.tensor(per_class))
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


def test_select_indices_takes_the_counts_of_each_class() -> None:
    labels = _labels([50, 40, 30])
    chosen = select_indices(labels, [50, 10, 3], seed=0)
    assert chosen.dtype == torch.int64
    assert torch.equal(chosen, chosen.sort().values)
    assert len(set(chosen.tolist())) == len(chosen)
    assert torch.bincount(labels[chosen], minlength=3).tolist() == [50, 10, 3]


def test_select_indices_is_seeded() -> None:
    labels = _labels([100, 100, 100])
    counts = [60, 30, 10]
    first = select_indices(labels, counts, seed=3)
    assert torch.equal(first, select_indices(labels.clone(), counts, seed=3))
    assert not torch.equal(first, select_indices(labels, counts, seed=4))


def test_select_indices_subsets_are_nested_across_ratios() -> None:
    labels = _labels([100, 100])
    small = set(select_indices(labels, [100, 10], seed=1).tolist())
    large = set(select_indices(labels, [100, 50], seed=1).tolist())
    assert small <= large


def test_select_indices_too_few_images_names_the_class() -> None:
    with pytest.raises(ValueError, match="class 1 has 5 training images but 6 were asked for"):
        select_indices(_labels([10, 5]), [10, 6], seed=0)


def test_stratified_split_keeps_every_class_on_both_sides() -> None:
    labels = _labels([100, 20, 2])
    kept, held = stratified_split(labels, 0.1, seed=0)
    assert sorted(kept.tolist() + held.tolist()) == list(range(len(labels)))
    assert torch.bincount(labels[held], minlength=3).tolist() == [10, 2, 1]
    assert torch.bincount(labels[kept], minlength=3).tolist() == [90, 18, 1]
    again = stratified_split(labels, 0.1, seed=0)
    assert torch.equal(again[1], held)
    assert not torch.equal(stratified_split(labels, 0.1, seed=1)[1], held)


def test_stratified_split_errors() -> None:
    with pytest.raises(ValueError, match="class 1 has 1 image"):
        stratified_split(_labels([10, 1]), 0.2, seed=0)
    for fraction in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            stratified_split(_labels([10, 10]), fraction, seed=0)


def test_derive_seed_is_stable_and_rejects_negative_seeds() -> None:
    assert derive_seed(1, 2) == derive_seed(1, 2) != derive_seed(2, 1)
    with pytest.raises(ValueError, match="non-negative"):
        derive_seed(-1)
