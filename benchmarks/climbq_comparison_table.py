"""The table of ``benchmarks/climbq_comparison.sh``: final-epoch and validation-selected test metrics per row.

Reads ``<out>/fp32/metrics.json`` and, per row and seed, ``<out>/<row>_s<seed>/metrics.json`` (final epoch),
``<out>/<row>_s<seed>/best/metrics.json`` (the checkpoint with the best validation macro-F1) and that checkpoint's
epoch. Each row's compression record is checked against what the row claims to be, so a mistyped override fails
here instead of printing a wrong label. Values are percentages: the mean over seeds, then each seed's value. A row
not yet finished for every seed given (no ``metrics.json``, or no tested best checkpoint) is left out and named on
stderr, so the table can be read while the comparison still runs.

    python3 benchmarks/climbq_comparison_table.py runs/climbq_comparison --seeds 0 1
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from seed_table import seed_cell, table_main

# row name -> (label, expected compression record fields, expected remedies record)
CB_REMEDY = [{"method": "class_balanced", "beta": 0.999, "gamma": 0.0}]
ROWS: dict[str, tuple[str, dict[str, Any], list[dict[str, Any]]]] = {
    "dorefa_w2a2": ("DoReFa (W2, A2), stem + classifier FP", {"method": "dorefa", "weight_bits": 2}, []),
    "climbq_stem_fp": (
        "ClimbQ 2-bit, stem FP",
        {"method": "climbq", "homovar": False, "exclude": ["stem.conv"]},
        [],
    ),
    "climbq": ("ClimbQ 2-bit, stem quantized (official)", {"method": "climbq", "homovar": False, "exclude": None}, []),
    "climbqplus_official": ("ClimbQ+ official", {"method": "climbq", "homovar_mode": "official"}, []),
    "climbqplus_paper": ("ClimbQ+ paper", {"method": "climbq", "homovar_mode": "paper"}, []),
    "climbq_cb": (
        "ClimbQ + class-balanced CE, mean of w_y CE (HomoVar's reduction)",
        {"method": "climbq", "homovar_mode": "class_balanced"},
        [],
    ),
    "climbq_cb_remedy": (
        "ClimbQ + class_balanced remedy (weighted mean)",
        {"method": "climbq", "homovar": False},
        CB_REMEDY,
    ),
}


def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SystemExit(f"missing {path}: run benchmarks/climbq_comparison.sh to the end first")
    return json.loads(path.read_text())


def _scores(metrics: dict[str, Any]) -> tuple[float, float, float]:
    """Accuracy, macro-F1 and the F1 of the class with the fewest training images, in %."""
    test, counts = metrics["test"], metrics["train_class_counts"]
    smallest = min(range(len(counts)), key=counts.__getitem__)
    return 100 * test["accuracy"], 100 * test["macro_f1"], 100 * test["per_class"]["f1"][smallest]


def _check(run: Path, metrics: dict[str, Any], expected: dict[str, Any], remedies: list[dict[str, Any]]) -> None:
    records = metrics["compression"]
    if len(records) != 1 or any(records[0].get(key) != value for key, value in expected.items()):
        raise SystemExit(f"{run}: compression record {records} does not match the row's settings {expected}")
    if metrics.get("remedies", []) != remedies:
        raise SystemExit(f"{run}: remedies {metrics.get('remedies')} do not match the row's {remedies}")
    if records[0].get("weight_bits") != 2 or records[0].get("activation_bits") != 2:
        raise SystemExit(f"{run}: expected 2-bit weights and activations, got {records[0]}")


def _finished(run: Path) -> bool:
    """Whether a row's run has its final metrics, its validation-selected checkpoint and that checkpoint's test."""
    return all((run / name).is_file() for name in ("metrics.json", "best/metrics.json", "checkpoints/best.ckpt"))


def _check_seeds_differ(name: str, orders: dict[int, Any]) -> None:
    """Seeds of a row start from one parent on one subset: only the training order (``data.shuffle_seed``) makes
    them two runs. Refuse seeds that trained on the same order (they are one run twice; metrics without the key,
    from before it was recorded, are not checked)."""
    seen: dict[Any, int] = {}
    for seed, order in orders.items():
        if order is not None and order in seen:
            raise SystemExit(
                f"{name}: seeds {seen[order]} and {seed} trained on the same batches (data.shuffle_seed {order} in "
                "both metrics.json): they are one run twice, not two seeds. Rerun with the seed as shuffle seed"
            )
        seen.setdefault(order, seed)


def _row(out: Path, name: str, seeds: list[int]) -> list[str]:
    label, expected, remedies = ROWS[name]
    final, best, epochs, orders = [], [], [], {}
    for seed in seeds:
        run = out / f"{name}_s{seed}"
        metrics = _load(run / "metrics.json")
        _check(run, metrics, expected, remedies)
        orders[seed] = (metrics.get("data") or {}).get("shuffle_seed")
        final.append(_scores(metrics))
        best.append(_scores(_load(run / "best" / "metrics.json")))
        checkpoint = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
        epochs.append(str(int(checkpoint["epoch"]) + 1))
    _check_seeds_differ(name, orders)
    columns = [seed_cell([s[i] for s in final]) for i in range(3)] + ["/".join(epochs)]
    return [label, *columns, *(seed_cell([s[i] for s in best]) for i in range(3))]


def table(out: Path, seeds: list[int]) -> tuple[list[str], list[str]]:
    """The lines to print (the data, the FP32 parent, then the markdown table) and the rows left out."""
    parent = _load(out / "fp32" / "metrics.json")
    counts, names = parent["train_class_counts"], parent["class_names"]
    smallest = min(range(len(counts)), key=counts.__getitem__)
    accuracy, macro_f1, small_f1 = _scores(parent)
    lines = [
        f"data: {parent['data'].get('dataset')}, {sum(counts)} training images after a val_fraction = "
        f"{parent['data'].get('val_fraction')} split; smallest class {names[smallest]} ({counts[smallest]} images)",
        f"FP32 parent (final epoch): accuracy {accuracy:.2f}, macro-F1 {macro_f1:.2f}, F1 smallest {small_f1:.2f}",
        "",
    ]
    header = ["method", "final: accuracy", "final: macro-F1", "final: F1 smallest class", "best epoch (val)"]
    header += ["val-best: accuracy", "val-best: macro-F1", "val-best: F1 smallest class"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    missing = []
    for name in ROWS:
        done = sum(_finished(out / f"{name}_s{seed}") for seed in seeds)
        if done < len(seeds):
            missing.append(f"{name} ({done} of {len(seeds)} seeds)")
            continue
        lines.append("| " + " | ".join(_row(out, name, seeds)) + " |")
    return lines, missing


if __name__ == "__main__":
    table_main(table, __doc__.splitlines()[0], "the comparison's output directory")
