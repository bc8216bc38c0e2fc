"""The long-tail remedy table of docs/remedies.md: test accuracy, macro-F1 and the F1 of the three smallest classes.

Reads ``<runs>/<row>_s<seed>/metrics.json`` for every row and seed (see the commands in docs/remedies.md, "Measured")
and checks that each run is what its row says (its ``remedies`` record), that all runs share the imbalance profile,
training class counts and test-set size, that each ran with its seed as both the run seed and the subset seed
(which images the long-tailed subset keeps), and that every fit's config.yaml names the same number of epochs.
Values are percentages: the mean over the seeds given, then each seed's value in parentheses. A row not finished
for every seed given is left out and named on stderr.

    python3 benchmarks/remedies_table.py runs/remedies --seeds 0 1
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from seed_table import seed_cell, table_main

# row -> (label, the remedies record's methods)
ROWS: dict[str, tuple[str, list[str]]] = {
    "ce": ("cross-entropy", []),
    "class_balanced": ("class-balanced CE (beta 0.9999)", ["class_balanced"]),
    "focal": ("focal (gamma 2)", ["focal"]),
    "ldam_drw": ("LDAM-DRW (cosine classifier)", ["ldam_drw"]),
    "logit_adjusted": ("logit-adjusted loss (tau 1)", ["logit_adjusted"]),
    "sampler_class_balanced": ("class-balanced sampling", ["sampler_class_balanced"]),
    "posthoc_la": ("post-hoc logit adjustment of the CE model (tau 1)", ["posthoc_logit_adjustment"]),
}
TAIL = 3


def _scores(metrics: dict[str, Any]) -> list[float]:
    """Accuracy, macro-F1, then the F1 of the TAIL smallest classes (smallest first), in %."""
    test, counts = metrics["test"], metrics["train_class_counts"]
    smallest = sorted(range(len(counts)), key=counts.__getitem__)[:TAIL]
    return [100 * test["accuracy"], 100 * test["macro_f1"], *(100 * test["per_class"]["f1"][k] for k in smallest)]


def _epochs(run: Path) -> int | None:
    """``trainer.max_epochs`` of a run's config.yaml."""
    config = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    return (config.get("trainer") or {}).get("max_epochs")


def _check(run: Path, metrics: dict[str, Any], methods: list[str], seed: int, reference: dict[str, Any] | None) -> None:
    found = [record["method"] for record in metrics.get("remedies", [])]
    if found != methods:
        raise SystemExit(f"{run}: remedies {found} do not match the row's {methods}")
    imbalance = dict(metrics.get("imbalance") or {})
    if metrics.get("seed") != seed or imbalance.pop("seed", seed) != seed:
        raise SystemExit(
            f"{run}: seed {metrics.get('seed')} and subset seed {(metrics.get('imbalance') or {}).get('seed')}, "
            f"expected {seed} for both"
        )
    if reference is not None:
        other = {key: value for key, value in (reference.get("imbalance") or {}).items() if key != "seed"}
        if imbalance != other:  # the same profile; which images a seed keeps may differ
            raise SystemExit(f"{run}: imbalance {imbalance} differs from the other runs' {other}")
        for key in ("train_class_counts", "dataset"):
            if metrics.get(key) != reference.get(key):
                raise SystemExit(f"{run}: {key} {metrics.get(key)} differs from the other runs' {reference.get(key)}")
        if metrics["test"]["num_samples"] != reference["test"]["num_samples"]:
            raise SystemExit(f"{run}: tested on {metrics['test']['num_samples']} images, not the others' number")


def table(runs: Path, seeds: list[int]) -> tuple[list[str], list[str]]:
    """The markdown lines of the table and the rows left out (no finished run)."""
    reference: dict[str, Any] | None = None
    lines, missing, epochs = [], [], set()
    for name, (label, methods) in ROWS.items():
        scores = []
        for seed in seeds:
            path = runs / f"{name}_s{seed}" / "metrics.json"
            if not path.is_file():
                continue
            metrics = json.loads(path.read_text())
            _check(path.parent, metrics, methods, seed, reference)
            if not name.startswith("posthoc"):  # a test of the CE fit, not a fit
                epochs.add(_epochs(path.parent))
            reference = reference or metrics
            scores.append(_scores(metrics))
        if len(scores) < len(seeds):
            missing.append(f"{name} ({len(scores)} of {len(seeds)} seeds)")
            continue
        lines.append("| " + " | ".join([label, *(seed_cell([s[i] for s in scores]) for i in range(2 + TAIL))]) + " |")
    if reference is None:
        raise SystemExit(f"no finished run under {runs} for seeds {seeds}")
    if len(epochs - {None}) > 1:
        raise SystemExit(f"the fits ran different numbers of epochs: {sorted(epochs - {None})}")
    counts, names = reference["train_class_counts"], reference["class_names"]
    tail = sorted(range(len(counts)), key=counts.__getitem__)[:TAIL]
    tail_headers = [f"F1 {names[k]} ({counts[k]})" for k in tail]
    header = ["remedy", "accuracy", "macro-F1", *tail_headers]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *lines], missing


if __name__ == "__main__":
    table_main(table, __doc__.splitlines()[0], "directory with <row>_s<seed>/metrics.json runs")
