"""Report figures ([C24] Figures 2-4 style gap curves and per-class F1 heat maps), matplotlib Agg backend."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from imbcompress.study.aggregate import mean_std  # noqa: E402
from imbcompress.study.tables import variant_groups, variant_label  # noqa: E402


def _panels(variants: list[dict]) -> list[tuple[str, list[dict]]]:
    """One panel per step minority setting, then one per other profile."""
    panels = []
    for (profile, head), group in variant_groups(variants).items():
        suffix = "" if head == "first" else " (head last)"
        minorities = sorted({v["minority_classes"] for v in group if v["minority_classes"] is not None})
        if minorities:
            panels += [
                (f"{profile} μ={m}{suffix}", [v for v in group if v["minority_classes"] == m]) for m in minorities
            ]
        else:
            panels.append((profile + suffix, group))
    return panels


def _gap_panel(ax, group: list[dict], methods: list[str], gap: dict, labels: dict[str, str]) -> None:
    """One line per configuration; colours follow the method's position so they match across panels."""
    for index, method in enumerate(methods):
        points = [(v["ratio"], *gap[(v["key"], method)]) for v in group if (v["key"], method) in gap]
        if not points:
            continue
        ratios, means, stds = zip(*points)
        errors = [0.0 if math.isnan(s) else 100 * s for s in stds]
        label = labels.get(method, method)
        ax.errorbar(
            ratios, [100 * m for m in means], yerr=errors, marker="o", capsize=3, color=f"C{index}", label=label
        )
    ax.set_xscale("log")
    ticks = sorted({v["ratio"] for v in group})
    ax.set_xticks(ticks, [f"{r:g}" for r in ticks])
    ax.minorticks_off()
    ax.set_xlabel("imbalance ratio ρ")
    ax.grid(alpha=0.3)


def gap_figure(
    summary: list[dict],
    variants: list[dict],
    methods: list[str],
    path: str | Path,
    labels: dict[str, str] | None = None,
) -> Path | None:
    """Gap (%) against rho (log axis), one panel per minority setting / profile, one line per configuration."""
    panels = _panels(variants)
    gap = {(row["variant"], row["method"]): row["gap"] for row in summary}
    if not panels or not gap:  # a partial study may have no imbalanced run paired with its balanced run yet
        return None
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.2 * len(panels) + 1.8, 3.6), squeeze=False, sharey=True, layout="constrained"
    )
    for ax, (title, group) in zip(axes[0], panels):
        _gap_panel(ax, sorted(group, key=lambda v: v["ratio"]), methods, gap, labels or {})
        ax.set_title(title)
    axes[0][0].set_ylabel("macro-F1 gap (%)")
    handles: dict[str, Any] = {}
    for ax in axes[0]:
        handles.update(zip(*reversed(ax.get_legend_handles_labels())))
    if handles:
        fig.legend(handles=list(handles.values()), labels=list(handles), loc="outside right upper", fontsize="small")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def per_class_f1(records: list[dict], variant_key: str, methods: list[str]) -> list[list[float]]:
    """Mean per-class F1 over seeds, rows = methods (NaN rows for methods without results)."""
    rows = []
    for method in methods:
        runs = [r["per_class_f1"] for r in records if r["variant"] == variant_key and r["method"] == method]
        width = max((len(r) for r in runs), default=0)
        rows.append([mean_std([run[c] for run in runs if c < len(run)])[0] for c in range(width)])
    return rows


def heatmap_figure(
    records: list[dict],
    variant: dict,
    methods: list[str],
    class_names: list[str],
    path: str | Path,
    labels: dict[str, str] | None = None,
) -> Path | None:
    """Per-class test F1 (%) heat map for one data variant: configuration x class."""
    present = [m for m in methods if any(r["variant"] == variant["key"] and r["method"] == m for r in records)]
    if not present:
        return None
    values = per_class_f1(records, variant["key"], present)
    width = max(len(row) for row in values)
    grid = [[100 * v for v in row] + [math.nan] * (width - len(row)) for row in values]
    names = class_names[:width] if len(class_names) >= width else [str(c) for c in range(width)]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.5 + 0.75 * width), 1.5 + 0.45 * len(present)), layout="constrained")
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if not math.isnan(value):
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", color="w" if value < 60 else "k", fontsize=8)
    ax.set_xticks(range(width), names, rotation=45, ha="right")
    ax.set_yticks(range(len(present)), [(labels or {}).get(m, m) for m in present])
    ax.set_title(f"Per-class test F1 (%), {variant_label(variant)}")
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
