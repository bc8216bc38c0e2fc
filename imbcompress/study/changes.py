"""Re-running a study whose file changed: find the runs whose definition changed after they ran.

A finished (or started) run's directory holds what its command produced; if the study file now gives that run
another command, ``plan.json`` and ``study.yaml`` would describe something the run never did. Such changes are
refused with a message that lists them, unless the user asks for ``--rerun-changed``: then exactly the changed
runs and the runs that depend on them are moved aside (``OUT/replaced/<n>/``, with the old plan and study file)
and run again.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from imbcompress.study.plan import PLAN_FILE, Plan, Run
from imbcompress.study.state import has_checkpoint, is_done, read_status

REPLACED_DIR = "replaced"
DEFINITION_FIELDS = ("kind", "configs", "config_sha256", "callbacks", "args", "deps")
SHOWN_RUNS = 8


@dataclass
class Changes:
    """What a new plan changes about the runs an old plan already ran.

    Attributes:
        changed: run id -> lines describing the change (old vs new), for runs with results.
        dependents: runs with results that depend (transitively) on a changed run.
        dropped: run ids of the old plan that the new one no longer has.
    """

    changed: dict[str, list[str]] = field(default_factory=dict)
    dependents: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def affected(self) -> list[str]:
        """The runs to redo: the changed ones and their dependants."""
        return [*self.changed, *self.dependents]


def has_results(run: Run) -> bool:
    """Whether the run's directory holds anything a run produced (results, a checkpoint, an attempt)."""
    return is_done(run.dir) or has_checkpoint(run.dir) or int(read_status(run.dir).get("attempt") or 0) > 0


def _list_diff(name: str, old: list, new: list) -> list[str]:
    if old == new:
        return []
    removed = [item for item in old if item not in new]
    added = [item for item in new if item not in old]
    if not removed and not added:
        return [f"{name}: order changed: was {old!r}, now {new!r}"]
    return [f"{name}: " + " ".join([*(f"-{item!r}" for item in removed), *(f"+{item!r}" for item in added)])]


def _digest_diff(old: dict, new: dict) -> list[str]:
    # plans written before digests were recorded have none: nothing to compare
    return [f"config file {path} has changed content" for path in old if path in new and old[path] != new[path]]


def _contents(run: Run) -> list[str] | None:
    """The SHA-256 of each of the run's config files in order, or None when the plan did not record them all."""
    if not all(path in run.config_sha256 for path in run.configs):
        return None
    return [run.config_sha256[path] for path in run.configs]


def _configs_diff(old: Run, new: Run) -> list[str]:
    """How the config files changed. The same contents in the same order are the same configs even at other paths
    (the checkout was moved, or another worktree of the same commit runs the study)."""
    before, after = _contents(old), _contents(new)
    if before is not None and after is not None and before == after:
        return []
    return _list_diff("configs", old.configs, new.configs) + _digest_diff(old.config_sha256, new.config_sha256)


def definition_diff(old: Run, new: Run) -> list[str]:
    """Lines describing how ``new`` differs from ``old`` (empty when they are the same run).

    A remedy is part of the run's definition like any other setting (its fragments, inline callbacks and sampler
    arguments); a PTQ run's calibration settings and source checkpoint are its arguments.
    """
    lines = [f"command: was {old.kind!r}, now {new.kind!r}"] if old.kind != new.kind else []
    lines += _configs_diff(old, new)
    lines += _list_diff("inline callbacks", old.callbacks, new.callbacks)
    lines += _list_diff("args", old.args, new.args)
    return lines + _list_diff("depends on", old.deps, new.deps)


def _dependents(plan: Plan, changed: set[str]) -> list[str]:
    """Runs of ``plan`` that depend, directly or through others, on a run in ``changed`` (plan order)."""
    tainted = set(changed)
    result = []
    for run in plan.runs:  # dependencies come first in plan order
        if run.id not in tainted and any(dep in tainted for dep in run.deps):
            tainted.add(run.id)
            result.append(run.id)
    return result


def find_changes(old: Plan, new: Plan) -> Changes:
    """Compare a study's previous plan with the new one, looking only at runs that have results."""
    old_runs = old.by_id()
    changes = Changes(dropped=[rid for rid in old_runs if rid not in new.by_id()])
    for run in new.runs:
        if run.id in old_runs and has_results(run):
            diff = definition_diff(old_runs[run.id], run)
            if diff:
                changes.changed[run.id] = diff
    new_runs = new.by_id()
    changes.dependents = [rid for rid in _dependents(new, set(changes.changed)) if has_results(new_runs[rid])]
    return changes


def _ids(ids: list[str]) -> str:
    more = f" and {len(ids) - SHOWN_RUNS} more" if len(ids) > SHOWN_RUNS else ""
    return ", ".join(ids[:SHOWN_RUNS]) + more


def describe_changes(changes: Changes, out_dir: str | Path) -> str:
    """The refusal message: each distinct change with the runs it affects, then how to proceed."""
    groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for run_id, lines in changes.changed.items():
        groups[tuple(lines)].append(run_id)
    text = [
        f"--out {out_dir}: the study file changes the definition of {len(changes.changed)} run(s) that already "
        "ran; their results would be relabelled with a command they did not run:"
    ]
    for diff, ids in groups.items():
        text.append(f"  {len(ids)} run(s): {_ids(ids)}")
        text += [f"    {line}" for line in diff]
    if changes.dependents:
        text.append(f"  and {len(changes.dependents)} run(s) with results depend on them: {_ids(changes.dependents)}")
    text.append(
        "To proceed, either write this study to a new directory (--out NEW_DIR), or pass --rerun-changed to run "
        f"exactly these runs and their dependants again (their directories are moved to {Path(out_dir) / REPLACED_DIR}"
        "/<n>/ with the old plan.json and study.yaml, not deleted); or restore the previous study file."
    )
    return "\n".join(text)


def set_aside(old: Plan, run_ids: list[str]) -> Path:
    """Move the given runs' directories, the old plan and study file into a new ``OUT/replaced/<n>/``."""
    out = Path(old.out_dir)
    root = out / REPLACED_DIR
    number = 1 + max((int(p.name) for p in root.glob("*") if p.name.isdigit()), default=0)
    target = root / str(number)
    target.mkdir(parents=True)
    for name in (PLAN_FILE, "study.yaml"):
        if (out / name).is_file():
            shutil.copy2(out / name, target / name)
    for run_id in run_ids:
        source = out / "runs" / run_id
        if source.exists():
            (target / "runs" / run_id).parent.mkdir(parents=True, exist_ok=True)
            source.rename(target / "runs" / run_id)
    return target
