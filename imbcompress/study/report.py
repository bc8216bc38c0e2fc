"""``study report``: read every finished run's metrics.json and write tables, figures and report.md."""

from __future__ import annotations

import csv
import math
import os
import shutil
import tempfile
from collections import Counter
from datetime import datetime
from pathlib import Path

from imbcompress.host import describe_host, host_text, revision_text
from imbcompress.study.adopt import adopted_runs, describe_adoption
from imbcompress.study.aggregate import GUARD_POINTS, gap_summary, smallest_class_f1
from imbcompress.study.figures import gap_figure, heatmap_figure
from imbcompress.study.plan import Plan
from imbcompress.study.recovery import Axes, damage_tables, recovery_tables
from imbcompress.study.remedies import BASELINE, config_key
from imbcompress.study.state import INVOCATIONS_FILE, STATES, plan_states, read_metrics, read_status
from imbcompress.study.tables import Table, gap_tables, metric_tables, robustness_tables, size_table

LONG_COLUMNS = [
    "variant", "method", "n_seeds", "gap_mean_pct", "gap_std_pct", "diff_mean_points", "diff_std_points",
    "R_of_means", "R_per_seed_mean", "R_per_seed_std",
]  # fmt: skip


def load_records(plan: Plan) -> tuple[list[dict], list[str]]:
    """One record per finished run (see :mod:`imbcompress.study.aggregate`) and the class names.

    ``method`` is the run's configuration (``method`` or ``method@remedy``); ``base_method`` and ``remedy`` are
    the study file's names. ``code`` and ``fit_code`` say what trained the weights: for a ``test`` run (a post-hoc
    remedy) those of the run whose checkpoint it tested, not the test command's own commit.
    """
    records: list[dict] = []
    class_names: list[str] = []
    read = {run.id: read_metrics(run.dir) for run in plan.runs}  # each metrics.json once
    for run in plan.runs:
        metrics = read[run.id]
        if metrics is None:
            continue
        trained = read.get(run.deps[0]) if run.kind == "test" else metrics
        test = metrics["test"]
        per_class_f1 = test.get("per_class", {}).get("f1", [])
        records.append(
            {
                "variant": run.variant["key"],
                "method": run.config,
                "base_method": run.method,
                "remedy": run.remedy,
                "seed": run.seed,
                "macro_f1": test["macro_f1"],
                "accuracy": test.get("accuracy", math.nan),
                "per_class_f1": per_class_f1,
                "tail_f1": smallest_class_f1(per_class_f1, metrics.get("train_class_counts") or []),
                "model_size": metrics.get("model_size") or {},
                "versions": metrics.get("versions") or {},
                "code": (trained or {}).get("code"),
                "fit_code": (trained or {}).get("fit_code"),
                "precision": metrics.get("precision"),
                "host": metrics.get("host"),
            }
        )
        class_names = class_names or list(metrics.get("class_names") or [])
    return records, class_names


def method_names(plan: Plan) -> list[str]:
    """Methods in study order with the reference first."""
    return [plan.reference, *(m for m in plan.methods if m != plan.reference)]


def method_labels(plan: Plan) -> dict[str, str]:
    """Display name of every method (its ``label`` in the study file, else its name)."""
    return {name: info.get("label") or name for name, info in plan.methods.items()}


def remedy_labels(plan: Plan) -> dict[str, str]:
    """Display name of every remedy (``ce`` first)."""
    return {name: info.get("label") or name for name, info in plan.remedies.items()}


def configurations(plan: Plan) -> list[str]:
    """The report's configurations: every method under ``ce``, then every method under each remedy."""
    return [config_key(method, remedy) for remedy in plan.remedies for method in method_names(plan)]


def configuration_labels(plan: Plan) -> dict[str, str]:
    """``Method`` under ``ce``, ``Method + Remedy`` under a remedy."""
    methods, remedies = method_labels(plan), remedy_labels(plan)
    return {
        config_key(m, r): methods[m] if r == BASELINE else f"{methods[m]} + {remedies[r]}"
        for r in plan.remedies
        for m in plan.methods
    }


def reference_of(plan: Plan) -> dict[str, str]:
    """Each configuration's uncompressed reference: the reference method with the same remedy."""
    return {config_key(m, r): config_key(plan.reference, r) for r in plan.remedies for m in plan.methods}


def _pct(value: float) -> str:
    return "" if math.isnan(value) else f"{100 * value:.3f}"


def _num(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.4f}"


def write_long_csv(summary: list[dict], path: Path) -> Path:
    """Every cell of the gap/robustness tables with all its numbers, one row per (variant, method)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(LONG_COLUMNS)
        for row in summary:
            diff = row.get("diff_points", (math.nan, math.nan))
            per_seed = row.get("ratio_per_seed", (math.nan, math.nan))
            writer.writerow(
                [row["variant"], row["method"], row["n_seeds"], _pct(row["gap"][0]), _pct(row["gap"][1])]
                + [_num(diff[0]), _num(diff[1]), _num(row.get("ratio_of_means", math.nan))]
                + [_num(per_seed[0]), _num(per_seed[1])]
            )
    return path


def _timing(plan: Plan) -> str:
    statuses = [read_status(run.dir) for run in plan.runs]
    done = [s for s in statuses if s.get("state") == "done" and not s.get("adopted_from")]  # adopted: ran elsewhere
    finished_h = sum(float(s.get("total_s") or s.get("duration_s") or 0) for s in done) / 3600
    all_h = sum(float(s.get("total_s") or s.get("duration_s") or 0) for s in statuses) / 3600
    starts = [s["first_started"] for s in statuses if s.get("first_started")]
    ends = [s["ended"] for s in statuses if s.get("ended")]
    span = ""
    if starts and ends:
        hours = (datetime.fromisoformat(max(ends)) - datetime.fromisoformat(min(starts))).total_seconds() / 3600
        span = f"; wall clock {min(starts)} to {max(ends)} ({hours:.2f} h)"
    return (
        f"{finished_h:.2f} h of run time in the {len(done)} finished run(s) the study ran (all attempts), "
        f"{all_h:.2f} h including failed attempts{span}"
    )


def _invocations(plan: Plan) -> list[str]:
    path = Path(plan.out_dir) / INVOCATIONS_FILE
    return path.read_text().splitlines() if path.is_file() else ["(none recorded)"]


def _distinct(texts: list[str], empty: str) -> str:
    seen = list(dict.fromkeys(texts))
    return " | ".join(seen) or empty


def _software(records: list[dict]) -> str:
    """The package versions and precision the runs recorded in their metrics.json (each distinct set once)."""
    texts = []
    for record in records:
        text = ", ".join(f"{name} {version}" for name, version in record["versions"].items()) or "versions not recorded"
        texts.append(text + f"; precision {record['precision'] or 'not recorded'}")
    return _distinct(texts, "no finished runs")


def _trained_by(record: dict) -> str:
    """The code that trained a run: each commit of its fit commands in order (``fit_code``), else its ``code``."""
    texts: list[str] = []
    for code in record.get("fit_code") or [record.get("code")]:
        text = revision_text(code)
        if not texts or texts[-1] != text:  # resumed at the same commit: once
            texts.append(text)
    return " then ".join(texts)


def _code(records: list[dict]) -> str:
    """The imbcompress commits that trained the runs (their metrics.json), each with its number of runs (most first)."""
    counts = Counter(_trained_by(record) for record in records)
    texts = [f"{text} ({count} run{'s' * (count != 1)})" for text, count in counts.most_common()]
    return ", ".join(texts) or "no finished runs"


def _machines(records: list[dict]) -> str:
    """The machines the runs recorded in their metrics.json (each distinct one once)."""
    texts = [host_text(record["host"]) if record.get("host") else "not recorded" for record in records]
    return _distinct(texts, "no finished runs")


def _unfinished(states: dict[str, str]) -> list[str]:
    """The "partial study" note: which runs have no results yet, by state (empty when every run is done)."""
    missing = {state: [rid for rid, s in states.items() if s == state] for state in STATES if state != "done"}
    if not any(missing.values()):
        return []
    done = sum(1 for s in states.values() if s == "done")
    lines = [
        f"**Partial study: {done} of {len(states)} runs have results.** Tables and figures use the finished runs "
        "only; a cell without results shows –. Runs without results:",
        "",
    ]
    lines += [f"- {state} ({len(ids)}): {', '.join(ids)}" for state, ids in missing.items() if ids]
    return [*lines, ""]


def _remedy_line(plan: Plan) -> list[str]:
    if len(plan.remedies) < 2:
        return []
    names = ", ".join(f"`{name}` ({label})" for name, label in remedy_labels(plan).items())
    lines = [
        f"- Remedies: {names}. Each applies to every method; a remedy's runs start from (and are compared with) "
        f"`{plan.reference}` trained with the same remedy."
    ]
    posthoc = [f"`{name}`" for name, record in plan.remedies.items() if record.get("posthoc")]
    if posthoc:
        lines.append(
            f"- Post-hoc remedies ({', '.join(posthoc)}) train nothing: each of their runs is `imbcompress test` of "
            f"the same method's `{BASELINE}` checkpoint with the remedy applied at test (none for a PTQ method)."
        )
    return lines


def _adopted(plan: Plan) -> list[str]:
    """The runs taken in with ``study adopt`` (trained outside the study; their time is not in the line above)."""
    records = adopted_runs(plan.runs)
    if not records:
        return []
    return [
        f"- Adopted runs ({len(records)}; trained outside the study by the same configuration, their training time "
        "is not counted above; `study adopt`, docs/study.md):",
        *(f"  - {describe_adoption(record)}" for record in records.values()),
    ]


def _header(plan: Plan, records: list[dict]) -> list[str]:
    states = plan_states(plan)
    counts = Counter(states.values())
    state_text = ", ".join(f"{state} {counts[state]}" for state in STATES)
    return [
        f"# Study report: {plan.name}",
        "",
        f"- Study file: `{plan.study_path}`; output directory `{plan.out_dir}`",
        f"- Runs: {len(plan.runs)} ({state_text}); {len(records)} with results; seeds {plan.seeds}",
        f"- Reference (uncompressed) configuration: `{plan.reference}`",
        *_remedy_line(plan),
        f"- Machine of the runs (their metrics.json): {_machines(records)}; report written on: "
        f"{host_text(describe_host())}",
        f"- Software of the runs (their metrics.json): {_software(records)}",
        f"- imbcompress code of the runs (their metrics.json; a run resumed at another commit names each, in order): "
        f"{_code(records)}",
        f"- Time: {_timing(plan)}",
        *_adopted(plan),
        "- Commands (`invocations.log`):",
        "",
        *(f"      {line}" for line in _invocations(plan)),
        "",
        "Gap Δ = (F1_bal − F1_imb) / F1_bal per seed (each imbalanced run paired with the balanced run of the same "
        "seed), then mean±std (sample std, ddof=1) over seeds. R is the ratio of the mean gaps, Δ_c / Δ_u, "
        f"left empty where |mean Δ_u| < {GUARD_POINTS} points; `gaps_long.csv` also has the per-seed ratio "
        "(mean±std over the seeds that pass the guard) and Δ_c − Δ_u in points.",
        "",
        *_unfinished(states),
    ]


def _figures(plan: Plan, records, summary, class_names, methods, out: Path) -> list[Path]:
    labels = configuration_labels(plan)
    paths = [gap_figure(summary, plan.variants, methods, out / "gap_vs_rho.png", labels)]
    for variant in plan.variants:
        path = out / f"per_class_f1_{variant['key']}.png"
        paths.append(heatmap_figure(records, variant, methods, class_names, path, labels))
    return [p for p in paths if p is not None]


REPORT_SUFFIXES = (".md", ".csv", ".png")
REPORT_FILE = "report.md"


def _kept(out: Path) -> list[Path]:
    """The files of ``out`` that a new report keeps: Markdown pages other than report.md (a findings page)."""
    if not out.is_dir():
        return []
    return [p for p in out.iterdir() if p.is_file() and p.suffix == ".md" and p.name != REPORT_FILE]


def _check_target(out: Path) -> None:
    """Refuse to replace a directory that is not a previous report (it would be swapped out and removed)."""
    if not out.exists():
        return
    if not out.is_dir() or any(p.is_dir() or p.suffix not in REPORT_SUFFIXES for p in out.iterdir()):
        raise ValueError(
            f"report directory {out}: exists and holds files a report does not write; choose another --out"
        )


def _swap_into_place(new: Path, out: Path) -> None:
    """Put the complete new report directory where ``out`` is, replacing a previous report."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(new, 0o777 & ~umask)  # mkdtemp makes 0700; a report is as readable as any directory
    if not out.exists():
        new.rename(out)
        return
    previous = out.with_name(f".{out.name}.previous-{os.getpid()}")
    out.rename(previous)
    new.rename(out)
    shutil.rmtree(previous)


def _tables(plan: Plan, records: list[dict], summary: list[dict]) -> list[Table]:
    configs, labels = configurations(plan), configuration_labels(plan)
    references = reference_of(plan)
    bits = {config_key(m, r): info.get("bits") for m, info in plan.methods.items() for r in plan.remedies}
    sizes = [{**record, "method": record["base_method"]} for record in records]  # a remedy does not change sizes
    axes = Axes(method_names(plan), list(plan.remedies), plan.reference, method_labels(plan), remedy_labels(plan))
    return [
        *gap_tables(summary, plan.variants, configs, labels),
        *robustness_tables(summary, plan.variants, configs, plan.reference, labels, set(references.values())),
        *recovery_tables(records, summary, plan.variants, axes),
        *damage_tables(records, plan.variants, axes),
        *metric_tables(records, plan.variants, configs, bits, "accuracy", labels),
        *metric_tables(records, plan.variants, configs, bits, "macro_f1", labels),
        size_table(sizes, method_names(plan), plan.reference, method_labels(plan)),
    ]


def _write_all(plan: Plan, out: Path, guard_points: float) -> Path:
    records, class_names = load_records(plan)
    methods = configurations(plan)
    summary = gap_summary(records, reference_of(plan), guard_points)
    tables = _tables(plan, records, summary)
    lines = _header(plan, records)
    for table in tables:
        csv_path = table.write_csv(out)
        lines += [table.markdown(), f"CSV: [{csv_path.name}]({csv_path.name})", ""]
    long_csv = write_long_csv(summary, out / "gaps_long.csv")
    lines += [f"All gap/robustness numbers: [{long_csv.name}]({long_csv.name})", "", "## Figures", ""]
    figures = _figures(plan, records, summary, class_names, methods, out)
    if not any(path.name == "gap_vs_rho.png" for path in figures):
        lines += ["(No gap figure: no imbalanced run has a finished balanced run of the same method and seed.)", ""]
    lines += [f"![{path.stem}]({path.name})\n" for path in figures]
    report = out / REPORT_FILE
    report.write_text("\n".join(lines))
    return report


def write_report(plan: Plan, out_dir: str | Path | None = None, guard_points: float = GUARD_POINTS) -> Path:
    """Aggregate a study directory into ``out_dir`` (default ``<study dir>/report``); returns report.md's path.

    A partial study reports the finished runs and lists the others. Everything is written into a temporary
    directory beside ``out_dir`` first, which then replaces it: a failure leaves the previous report (or nothing).
    Markdown pages of ``out_dir`` other than report.md (a findings page written beside the report) are kept; the
    report's own files (report.md, CSV, PNG) are replaced, stale ones removed.
    """
    out = Path(out_dir) if out_dir is not None else Path(plan.out_dir) / "report"
    _check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    try:
        _write_all(plan, staging, guard_points)
        for page in _kept(out):  # a findings page beside the report survives its regeneration
            shutil.copy2(page, staging / page.name)
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out / "report.md"
