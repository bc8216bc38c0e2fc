"""Pure aggregation maths (SPEC §3): performance gap, robustness ratio, difference, over seeds.

Inputs are plain records, one per finished run::

    {"variant": "step-r100-m5", "method": "qat_a3w3", "seed": 0, "macro_f1": 0.61, ...}

Gaps and the macro-F1 they come from are fractions; the difference Delta_c - Delta_u is reported in points.
"""

from __future__ import annotations

import math
from collections import defaultdict

BALANCED = "balanced"
GUARD_POINTS = 0.5


def performance_gap(f1_balanced: float, f1_imbalanced: float) -> float:
    """Delta_M = (F1_bal - F1_imb) / F1_bal; NaN when the balanced F1 is 0."""
    if f1_balanced == 0:
        return math.nan
    return (f1_balanced - f1_imbalanced) / f1_balanced


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1); NaN for what cannot be computed (std of one value)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def metric_by_seed(records: list[dict], metric: str = "macro_f1") -> dict[tuple[str, str], dict[int, float]]:
    """(variant, method) -> {seed: metric}."""
    table: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for record in records:
        table[(record["variant"], record["method"])][record["seed"]] = float(record[metric])
    return dict(table)


def seed_gaps(records: list[dict]) -> dict[tuple[str, str], dict[int, float]]:
    """(imbalanced variant, method) -> {seed: gap}, pairing each run with the balanced run of the same seed.

    A seed without its balanced counterpart has no gap (it is left out, never paired with another seed).
    """
    f1 = metric_by_seed(records)
    gaps: dict[tuple[str, str], dict[int, float]] = {}
    for (variant, method), by_seed in f1.items():
        if variant == BALANCED:
            continue
        balanced = f1.get((BALANCED, method), {})
        paired = {seed: performance_gap(balanced[seed], value) for seed, value in by_seed.items() if seed in balanced}
        if paired:
            gaps[(variant, method)] = paired
    return gaps


def _ratio(numerator: float, denominator: float, guard: float) -> float:
    return numerator / denominator if abs(denominator) >= guard else math.nan


def robustness(
    gaps_compressed: dict[int, float], gaps_uncompressed: dict[int, float], guard_points: float = GUARD_POINTS
) -> dict:
    """Compare a compressed configuration's gaps with the uncompressed reference's, seed by seed.

    Args:
        gaps_compressed: seed -> Delta_c (fraction).
        gaps_uncompressed: seed -> Delta_u (fraction), same variant.
        guard_points: R is undefined where |Delta_u| is below this many points.

    Returns:
        ``seeds`` (paired seeds), ``diff_points`` (mean, std of Delta_c - Delta_u in points),
        ``ratio_of_means`` (mean Delta_c / mean Delta_u, NaN under the guard) and ``ratio_per_seed``
        (mean, std of Delta_c / Delta_u over the seeds whose |Delta_u| passes the guard).
    """
    guard = guard_points / 100
    seeds = sorted(set(gaps_compressed) & set(gaps_uncompressed))
    comp = [gaps_compressed[s] for s in seeds]
    unc = [gaps_uncompressed[s] for s in seeds]
    per_seed = [_ratio(c, u, guard) for c, u in zip(comp, unc)]
    return {
        "seeds": seeds,
        "diff_points": mean_std([100 * (c - u) for c, u in zip(comp, unc)]),
        "ratio_of_means": _ratio(mean_std(comp)[0], mean_std(unc)[0], guard) if seeds else math.nan,
        "ratio_per_seed": mean_std(per_seed),
    }


def gap_summary(records: list[dict], reference: str | dict[str, str], guard_points: float = GUARD_POINTS) -> list[dict]:
    """One row per (imbalanced variant, method): gap mean/std over seeds and, for compressed methods, R.

    Args:
        records: one dict per finished run (``variant``, ``method``, ``seed``, ``macro_f1``).
        reference: the uncompressed method that compressed ones are compared with, or a mapping from each method
            to its own reference (with remedies: ``qat@ldam`` -> ``fp32@ldam``; a method missing from it is not
            compared).
        guard_points: see :func:`robustness`.

    Returns:
        Rows with ``variant``, ``method``, ``n_seeds``, ``gap`` (mean, std) and, unless the method is its
        reference or the reference is missing, the keys of :func:`robustness`.
    """
    gaps = seed_gaps(records)
    rows = []
    for (variant, method), by_seed in sorted(gaps.items()):
        row = {"variant": variant, "method": method, "n_seeds": len(by_seed), "gap": mean_std(list(by_seed.values()))}
        own_reference = reference.get(method, method) if isinstance(reference, dict) else reference
        reference_gaps = gaps.get((variant, own_reference))
        if method != own_reference and reference_gaps:
            row.update(robustness(by_seed, reference_gaps, guard_points))
        rows.append(row)
    return rows


def paired_differences(values: dict[int, float], baseline: dict[int, float]) -> list[float]:
    """``values - baseline`` for each seed both have, in seed order."""
    return [values[seed] - baseline[seed] for seed in sorted(set(values) & set(baseline))]


def paired_difference(values: dict[int, float], baseline: dict[int, float]) -> float:
    """Mean over the seeds both have of ``values - baseline`` (a NaN difference left out; NaN when none is left)."""
    return mean_std(paired_differences(values, baseline))[0]


def smallest_class_f1(per_class_f1: list[float], train_counts: list[int]) -> float:
    """F1 of the class with the fewest training images; the mean over the tied smallest classes (a step profile's
    minority classes); NaN without counts or per-class F1."""
    if not per_class_f1 or len(per_class_f1) != len(train_counts):
        return math.nan
    smallest = min(train_counts)
    tied = [f1 for f1, count in zip(per_class_f1, train_counts) if count == smallest]
    return sum(tied) / len(tied)
