"""The tables of a study with remedies: does a remedy give back what compression took, and does it change R?

- Recovery: for every imbalanced variant, one row per (method, remedy other than ``ce``): macro-F1, the smallest
  class's F1, the gap and R of ``method@remedy`` next to the same method trained with plain cross-entropy, and the
  difference.
- Compression damage: for every variant, one row per compressed method: what compression costs in macro-F1 and in
  the smallest class's F1 under each remedy (``method@remedy`` − the reference trained with the same remedy,
  paired by seed). A remedy reduces the damage on the tail where its tail-F1 difference is nearer 0 than with
  ``ce``.

The numbers come from the same per-seed maths as the gap and robustness tables (``aggregate.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from imbcompress.study.aggregate import (
    BALANCED,
    mean_std,
    metric_by_seed,
    paired_difference,
    paired_differences,
    seed_gaps,
)
from imbcompress.study.remedies import BASELINE, config_key
from imbcompress.study.tables import Table, fmt, variant_label

HEADER_METRICS = ("macro-F1", "tail F1", "gap")


@dataclass
class Axes:
    """What the rows are: base methods (reference first), remedies (``ce`` first) and their display names."""

    methods: list[str]
    remedies: list[str]
    reference: str
    method_labels: dict[str, str]
    remedy_labels: dict[str, str]


def _delta(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value + 0.0:+.1f}"


def _ratio(row: dict | None) -> str:
    ratio = math.nan if row is None else row.get("ratio_of_means", math.nan)
    return "–" if math.isnan(ratio) else f"{ratio + 0.0:.2f}"


def _metric_cells(per_seed: dict, variant: str, key: str, baseline: str) -> list[str]:
    """Remedy value, baseline value (mean±std over seeds) and their paired difference."""
    values, base = per_seed.get((variant, key), {}), per_seed.get((variant, baseline), {})
    return [
        fmt(*mean_std(list(values.values()))),
        fmt(*mean_std(list(base.values()))),
        _delta(paired_difference(values, base)),
    ]


def _header(axes: Axes) -> list[str]:
    ce = axes.remedy_labels.get(BASELINE, BASELINE)
    header = ["method", "remedy"]
    for name in HEADER_METRICS:
        header += [name, f"{name} ({ce})", f"Δ {name}"]
    return [*header, "R", f"R ({ce})"]


def _note(axes: Axes) -> str:
    ce = axes.remedy_labels.get(BASELINE, BASELINE)
    return (
        f"Each remedy next to the same method trained with {ce}: mean±std over seeds in %; Δ = remedy − {ce} in "
        "points, mean over the seeds both have (macro-F1 and tail F1: positive = the remedy gives F1 back; gap: "
        "negative = a smaller gap). Tail F1 = F1 of the class with the fewest training images (the mean over the "
        f"tied smallest classes of a step profile). R against `{axes.reference}` with the same remedy (R ({ce}): "
        f"with {ce}); – for `{axes.reference}` itself and where |Δ_u| < 0.5 points."
    )


def recovery_tables(records: list[dict], summary: list[dict], variants: list[dict], axes: Axes) -> list[Table]:
    """One recovery table per imbalanced variant (none when the study has no remedy besides ``ce``).

    Args:
        records: one per finished run, with ``variant``, ``method`` (the configuration, e.g. ``qat@ldam``),
            ``seed``, ``macro_f1`` and ``tail_f1``.
        summary: :func:`~imbcompress.study.aggregate.gap_summary` of the same records, each configuration against
            the reference with its own remedy.
        variants: the plan's variants.
        axes: the methods and remedies, in report order.
    """
    remedies = [r for r in axes.remedies if r != BASELINE]
    if not remedies:
        return []
    per_seed = {"f1": metric_by_seed(records), "tail": metric_by_seed(records, "tail_f1"), "gap": seed_gaps(records)}
    rows_of = {(row["variant"], row["method"]): row for row in summary}
    tables = []
    for variant in (v for v in variants if v["profile"] != BALANCED):
        rows = []
        for method in axes.methods:
            for remedy in remedies:
                key, ce = config_key(method, remedy), config_key(method, BASELINE)
                row = [axes.method_labels.get(method, method), axes.remedy_labels.get(remedy, remedy)]
                for name in ("f1", "tail", "gap"):
                    row += _metric_cells(per_seed[name], variant["key"], key, ce)
                r_cells = [_ratio(rows_of.get((variant["key"], k))) for k in (key, ce)]
                rows.append(row + (["–", "–"] if method == axes.reference else r_cells))
        title = f"Recovery, {variant_label(variant)}"
        tables.append(Table(f"recovery_{variant['key']}", title, _header(axes), rows, _note(axes)))
    return tables


def _paired_cell(values: dict[int, float], baseline: dict[int, float]) -> str:
    """Mean±std over the seeds both have of ``values - baseline``, in signed points."""
    mean, std = mean_std(paired_differences(values, baseline))
    return _delta(mean) + ("" if math.isnan(std) else f"±{100 * std:.1f}")


def damage_tables(records: list[dict], variants: list[dict], axes: Axes) -> list[Table]:
    """One compression-damage table per variant (none when the study has no remedy besides ``ce``).

    Args:
        records: as for :func:`recovery_tables`.
        variants: the plan's variants.
        axes: the methods and remedies, in report order.
    """
    if len(axes.remedies) < 2:
        return []
    per_seed = {"f1": metric_by_seed(records), "tail": metric_by_seed(records, "tail_f1")}
    names = {"f1": "macro-F1", "tail": "tail F1"}
    header = ["method"] + [
        f"Δ {names[metric]} ({axes.remedy_labels.get(remedy, remedy)})"
        for remedy in axes.remedies
        for metric in ("f1", "tail")
    ]
    tables = []
    for variant in variants:
        rows = []
        for method in (m for m in axes.methods if m != axes.reference):
            row = [axes.method_labels.get(method, method)]
            for remedy in axes.remedies:
                key, reference = config_key(method, remedy), config_key(axes.reference, remedy)
                for metric in ("f1", "tail"):
                    table = per_seed[metric]
                    row.append(_paired_cell(table.get((variant["key"], key), {}),
                                            table.get((variant["key"], reference), {})))  # fmt: skip
            rows.append(row)
        reference_label = axes.method_labels.get(axes.reference, axes.reference)
        note = (
            f"What compression costs under each remedy: the method trained with the remedy − `{axes.reference}` "
            f"({reference_label}) trained with the same remedy, paired by seed, mean±std over seeds in points "
            "(negative = compression lost F1). Tail F1 = F1 of the class with the fewest training images. A remedy "
            f"reduces the compression damage on the tail where its Δ tail F1 is nearer 0 than with "
            f"{axes.remedy_labels.get(BASELINE, BASELINE)}; the recovery table has the levels."
        )
        title = f"Compression damage by remedy, {variant_label(variant)}"
        tables.append(Table(f"damage_{variant['key']}", title, header, rows, note))
    return tables
