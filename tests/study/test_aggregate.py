"""Aggregation maths against hand-computed numbers: gap, seed pairing, robustness ratio, the 0.5-point guard."""

import math

import pytest

from imbcompress.study.aggregate import gap_summary, mean_std, performance_gap, robustness, seed_gaps


def rec(variant, method, seed, f1):
    return {"variant": variant, "method": method, "seed": seed, "macro_f1": f1}


def test_performance_gap():
    assert performance_gap(0.8, 0.6) == pytest.approx(0.25)
    assert performance_gap(0.5, 0.55) == pytest.approx(-0.1)
    assert math.isnan(performance_gap(0.0, 0.3))


def test_mean_std_uses_sample_std():
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    mean, std = mean_std([0.4])
    assert mean == 0.4 and math.isnan(std)


def test_gaps_pair_each_seed_with_its_own_balanced_run():
    records = [
        rec("balanced", "fp32", 0, 0.80),
        rec("balanced", "fp32", 1, 0.90),
        rec("exp", "fp32", 0, 0.60),
        rec("exp", "fp32", 1, 0.45),
        rec("exp", "fp32", 2, 0.10),  # no balanced run for seed 2: left out, never paired with another seed
    ]
    gaps = seed_gaps(records)
    assert gaps == {("exp", "fp32"): {0: pytest.approx(0.25), 1: pytest.approx(0.5)}}


def test_robustness_ratio_difference_and_per_seed_ratio():
    result = robustness({0: 0.3, 1: 0.6}, {0: 0.2, 1: 0.3})
    assert result["seeds"] == [0, 1]
    assert result["ratio_of_means"] == pytest.approx(0.45 / 0.25)
    assert result["ratio_per_seed"][0] == pytest.approx(1.75)
    assert result["ratio_per_seed"][1] == pytest.approx(math.sqrt(2 * 0.25**2))
    assert result["diff_points"][0] == pytest.approx(20.0)
    assert result["diff_points"][1] == pytest.approx(math.sqrt(200))


@pytest.mark.parametrize(
    ("delta_u", "defined"),
    [(0.004, False), (-0.0049, False), (0.005, True), (-0.01, True), (0.0, False)],
)
def test_ratio_guard_at_half_a_point(delta_u, defined):
    result = robustness({0: 0.02}, {0: delta_u})
    assert (not math.isnan(result["ratio_of_means"])) == defined
    assert (not math.isnan(result["ratio_per_seed"][0])) == defined
    assert result["diff_points"][0] == pytest.approx(100 * (0.02 - delta_u))


def test_per_seed_ratio_skips_seeds_under_the_guard():
    result = robustness({0: 0.1, 1: 0.2}, {0: 0.001, 1: 0.1})
    assert result["ratio_per_seed"][0] == pytest.approx(2.0)
    assert result["ratio_of_means"] == pytest.approx(0.15 / 0.0505)


def test_gap_summary_rows():
    records = [
        rec("balanced", "fp32", 0, 0.8),
        rec("balanced", "q", 0, 0.7),
        rec("step-r10-m5", "fp32", 0, 0.6),
        rec("step-r10-m5", "q", 0, 0.35),
        rec("step-r2-m5", "fp32", 0, 0.798),
        rec("step-r2-m5", "q", 0, 0.69),
    ]
    rows = {(r["variant"], r["method"]): r for r in gap_summary(records, reference="fp32")}
    assert rows[("step-r10-m5", "fp32")]["gap"][0] == pytest.approx(0.25)
    assert "ratio_of_means" not in rows[("step-r10-m5", "fp32")]
    assert rows[("step-r10-m5", "q")]["ratio_of_means"] == pytest.approx(0.5 / 0.25)
    assert rows[("step-r10-m5", "q")]["diff_points"][0] == pytest.approx(25.0)
    # Delta_u = 0.25 points: R undefined, the difference still reported
    assert math.isnan(rows[("step-r2-m5", "q")]["ratio_of_means"])
    assert rows[("step-r2-m5", "q")]["diff_points"][0] == pytest.approx(100 * (0.01 / 0.7 - 0.0025))
