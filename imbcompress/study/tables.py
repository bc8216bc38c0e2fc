"""Report tables: [C24] gap and robustness layouts, [CQ]-style accuracy tables, [C24] A7-A8 model size."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from imbcompress.study.aggregate import BALANCED, mean_std, metric_by_seed
from imbcompress.study.spec import fmt_num

PROFILE_ORDER = ("step", "exponential", "linear")


@dataclass
class Table:
    """A rendered table: header and string cells, written as Markdown and CSV."""

    name: str
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""

    def markdown(self) -> str:
        """GitHub Markdown with the title as a heading and the note under it."""
        lines = [f"### {self.title}", ""]
        if self.note:
            lines += [self.note, ""]
        lines.append("| " + " | ".join(self.header) + " |")
        lines.append("|" + "|".join("---" for _ in self.header) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def write_csv(self, folder: str | Path) -> Path:
        """Write ``folder/<name>.csv``."""
        path = Path(folder) / f"{self.name}.csv"
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.header)
            writer.writerows(self.rows)
        return path


def fmt(mean: float, std: float = math.nan, scale: float = 100.0, digits: int = 1) -> str:
    """``62.1`` or ``62.1±1.2`` (scaled, e.g. fractions to percent); ``–`` when undefined."""
    if math.isnan(mean):
        return "–"
    text = f"{mean * scale:.{digits}f}"
    return text if math.isnan(std) else f"{text}±{std * scale:.{digits}f}"


def variant_groups(variants: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Imbalanced variants grouped by (profile, head), in the [C24] profile order."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for variant in variants:
        if variant["profile"] != BALANCED:
            groups[(variant["profile"], variant["head"])].append(variant)
    order = {p: i for i, p in enumerate(PROFILE_ORDER)}
    return dict(sorted(groups.items(), key=lambda item: (order.get(item[0][0], 9), item[0][1])))


def variant_label(variant: dict) -> str:
    """Short column label, e.g. ``step ρ=100 μ=5``."""
    if variant["profile"] == BALANCED:
        return "balanced"
    label = f"{variant['profile']} ρ={fmt_num(variant['ratio'])}"
    if variant["minority_classes"] is not None:
        label += f" μ={variant['minority_classes']}"
    return label if variant["head"] == "first" else f"{label} (head last)"


def _layout(group: list[dict], methods: list[str], cell, labels: dict[str, str]) -> tuple[list, list, list]:
    """Rows = rho, columns = methods; for step, the minority settings of one rho joined in one cell."""
    minorities = sorted({v["minority_classes"] for v in group if v["minority_classes"] is not None})
    rows = []
    for ratio in sorted({v["ratio"] for v in group}):
        by_minority = {v["minority_classes"]: v for v in group if v["ratio"] == ratio}
        keys = minorities or [None]
        row = [fmt_num(ratio)]
        for method in methods:
            row.append(" / ".join(cell(by_minority[m]["key"], method) if m in by_minority else "–" for m in keys))
        rows.append(row)
    return ["ρ", *(labels.get(m, m) for m in methods)], rows, minorities


def _group_title(profile: str, head: str) -> str:
    return profile + ("" if head == "first" else " (head last)")


def _minority_note(minorities: list) -> str:
    if not minorities:
        return ""
    return "Each cell: " + " / ".join(f"μ={m}" for m in minorities) + " minority classes."


def gap_tables(
    summary: list[dict], variants: list[dict], methods: list[str], labels: dict[str, str] | None = None
) -> list[Table]:
    """[C24] Tables A1-A6 layout: macro-F1 performance gap (%) per rho and configuration, mean±std over seeds."""
    gap = {(row["variant"], row["method"]): row["gap"] for row in summary}
    tables = []
    for (profile, head), group in variant_groups(variants).items():
        cell = lambda v, m: fmt(*gap.get((v, m), (math.nan, math.nan)))  # noqa: E731
        header, rows, minorities = _layout(group, methods, cell, labels or {})
        note = "Performance gap Δ = (F1_bal − F1_imb) / F1_bal in %, macro-F1, mean±std over seeds. "
        tables.append(
            Table(f"gap_{profile}_{head}", f"Performance gap, {_group_title(profile, head)}", header, rows, note)
        )
        tables[-1].note += _minority_note(minorities)
    return tables


def _robustness_cell(row: dict | None) -> str:
    if row is None or "ratio_of_means" not in row:
        return "–"
    ratio = row["ratio_of_means"]
    diff = row["diff_points"][0]
    ratio_text = "–" if math.isnan(ratio) else f"{ratio + 0.0:.2f}"  # + 0.0: no "-0.00"
    return f"{ratio_text} ({diff:+.1f})"


def robustness_tables(
    summary: list[dict],
    variants: list[dict],
    methods: list[str],
    reference: str,
    labels: dict[str, str] | None = None,
    references: set[str] | None = None,
) -> list[Table]:
    """R = mean Δ_c / mean Δ_u and, in brackets, Δ_c − Δ_u in points, for every compressed configuration.

    ``references`` are the configurations that are some configuration's reference (default: ``reference``); with
    remedies each remedy's uncompressed configuration is the reference of that remedy's compressed ones.
    """
    by_cell = {(row["variant"], row["method"]): row for row in summary}
    compressed = [m for m in methods if m not in (references or {reference})]
    same_remedy = " with the same remedy" if references and len(references) > 1 else ""
    tables = []
    for (profile, head), group in variant_groups(variants).items():
        cell = lambda v, m: _robustness_cell(by_cell.get((v, m)))  # noqa: E731
        header, rows, minorities = _layout(group, compressed, cell, labels or {})
        note = (
            f"R = mean Δ_c / mean Δ_u against `{reference}`{same_remedy} (R > 1: loses more under imbalance, less "
            "robust); in brackets Δ_c − Δ_u in points; R is – where |Δ_u| < 0.5 points. "
        )
        title = f"Robustness ratio, {_group_title(profile, head)}"
        tables.append(Table(f"robustness_{profile}_{head}", title, header, rows, note + _minority_note(minorities)))
    return tables


def _bit_groups(methods: list[str], bits: dict[str, int | None]) -> dict[str, list[str]]:
    widths = sorted({b for b in bits.values() if b is not None}, reverse=True)
    if not widths:
        return {"": methods}
    # methods without a bit width (the FP32 reference) appear in every group for comparison
    return {f"{w}-bit": [m for m in methods if bits.get(m) in (w, None)] for w in widths}


def metric_tables(
    records: list[dict],
    variants: list[dict],
    methods: list[str],
    bits: dict[str, int | None],
    metric: str,
    labels: dict[str, str] | None = None,
) -> list[Table]:
    """[CQ] Table 1 layout: rows = methods, columns = data variants, one table per bit width; in %."""
    values = {key: mean_std(list(by_seed.values())) for key, by_seed in metric_by_seed(records, metric).items()}
    header = ["method", *(variant_label(v) for v in variants)]
    tables = []
    for group, members in _bit_groups(methods, bits).items():
        rows = [
            [(labels or {}).get(m, m), *(fmt(*values.get((v["key"], m), (math.nan, math.nan))) for v in variants)]
            for m in members
        ]
        title = f"Test {metric.replace('_', '-')} (%)" + (f", {group}" if group else "")
        suffix = f"_{group}" if group else ""
        tables.append(Table(f"{metric}{suffix}", title, header, rows, "Mean±std over seeds."))
    return tables


def size_table(records: list[dict], methods: list[str], reference: str, labels: dict[str, str] | None = None) -> Table:
    """[C24] Tables A7-A8: NNZ, sparsity against the reference, weight storage and the paper's Mib figure."""
    sizes: dict[str, dict] = {}
    for record in sorted(records, key=lambda r: (r["variant"] != BALANCED, r["seed"])):
        if record.get("model_size"):
            sizes.setdefault(record["method"], record["model_size"])
    ref_nnz = sizes.get(reference, {}).get("nnz")
    header = ["method", "total params", "NNZ", "sparsity (%)", "weight storage (MiB)", "paper (Mib)"]
    rows = []
    for method in methods:
        size = sizes.get(method)
        label = (labels or {}).get(method, method)
        if size is None:
            rows.append([label, "–", "–", "–", "–", "–"])
            continue
        sparsity = 1 - size["nnz"] / ref_nnz if ref_nnz else math.nan
        rows.append(
            [
                label,
                f"{size.get('total_params', 0):,}",
                f"{size['nnz']:,}",
                fmt(sparsity),
                f"{size.get('weight_storage_mib', math.nan):.3f}",
                f"{size.get('paper_mibit', math.nan):.2f}",
            ]
        )
    note = (
        "NNZ = conv + linear weights (the [C24] rule); paper (Mib) = NNZ x (A bits + W bits) / 2, not a storage size."
    )
    return Table("model_size", "Model size", header, rows, note)
