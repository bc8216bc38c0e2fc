"""``study adopt``: take a finished fit trained outside a study as one of its runs, instead of training it again.

A run is adopted only when its saved configuration (``DIR/config.yaml``, what the fit really ran) is the study's
planned configuration for that run, up to settings that cannot change the trained weights:

- where it wrote (``run_dir``, the logger, ``default_root_dir``), the progress bar, how often it validated
  (validation never updates the weights), and the checkpoint it resumed from (resuming is exact);
- ``trainer.max_steps``, when the adopted run took exactly the planned number of steps with the same
  ``max_epochs`` (then both stop at the same step and their schedules see the same step total);
- an option the adopted run's configuration does not have (added to imbcompress after it ran), when the study
  plans that option's default (the behaviour the run had).

Any other difference refuses the adoption, listing each. Only runs that start from nothing are adopted (none of
the study's runs as ``init_from``, teacher or PTQ source: their parents' files would differ). The copy lands
atomically in the study's run directory with ``adopted.json`` (source, checks, accepted differences); the report
lists adopted runs.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from imbcompress.atomic import write_json_atomic
from imbcompress.host import code_revision, revision_text
from imbcompress.locks import RUN_LOCK_FILE, FileLock
from imbcompress.study.plan import RUN_CONFIG, Run
from imbcompress.study.remedy_check import import_class
from imbcompress.study.spec import LAST_CKPT
from imbcompress.study.state import LOCK_FILE, STATUS_FILE, is_done, now, update_status

ADOPTED_FILE = "adopted.json"
# settings that decide where a fit writes, what it shows and how often it validates, never the trained weights
NEUTRAL_KEYS = (
    "run_dir",
    "ckpt_path",
    "weights_only",
    "trainer.logger",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.check_val_every_n_epoch",
)
_MISSING = object()


@dataclass
class Comparison:
    """How an adopted run's configuration differs from the planned one.

    Attributes:
        neutral: keys that differ but cannot change the trained weights (:data:`NEUTRAL_KEYS`).
        accepted: (key, why) for the other differences that provably train the same weights.
        refused: one line per difference that may change the weights.
    """

    neutral: list[str] = field(default_factory=list)
    accepted: list[tuple[str, str]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys to leaf values; a list of mappings is flattened by index (``trainer.callbacks[0].class_path``)."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list) and tree and all(isinstance(item, dict) for item in tree):
        return {
            key: value for index, item in enumerate(tree) for key, value in flatten(item, f"{prefix}[{index}]").items()
        }
    else:
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for name, value in items:
        flat.update(flatten(value, f"{prefix}.{name}" if prefix else str(name)))
    return flat


def _neutral_setting(key: str) -> str | None:
    """The entry of :data:`NEUTRAL_KEYS` that ``key`` is (or lies under), or None."""
    return next((name for name in NEUTRAL_KEYS if key == name or key.startswith((f"{name}.", f"{name}["))), None)


def _default_of(planned: dict[str, Any], key: str) -> Any:
    """The default of the constructor argument ``key`` names (``<obj>.init_args.<name>``), or ``_MISSING``."""
    owner, sep, name = key.rpartition(".init_args.")
    class_path = planned.get(f"{owner}.class_path")
    if not sep or "." in name or not isinstance(class_path, str):
        return _MISSING
    cls = import_class(class_path)
    try:
        parameter = None if cls is None else inspect.signature(cls).parameters.get(name)
    except (TypeError, ValueError):  # no signature to read
        return _MISSING
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return _MISSING
    return parameter.default


def compare(planned: dict, adopted: dict, adopted_steps: int | None) -> Comparison:
    """Classify every difference between the planned and the adopted run's configuration (both as saved YAML)."""
    flat_planned, flat_adopted = flatten(planned), flatten(adopted)
    result = Comparison()
    for key in sorted(set(flat_planned) | set(flat_adopted)):
        want, have = flat_planned.get(key, _MISSING), flat_adopted.get(key, _MISSING)
        if want == have:
            continue
        neutral = _neutral_setting(key)
        if neutral is not None:
            if neutral not in result.neutral:
                result.neutral.append(neutral)
        elif key == "trainer.max_steps":
            _compare_max_steps(want, have, flat_planned, flat_adopted, adopted_steps, result)
        elif have is _MISSING and want is not _MISSING and want == _default_of(flat_planned, key):
            why = f"not in the adopted run's configuration; the study plans its default {want!r}"
            result.accepted.append((key, why))
        else:
            shown = ["(absent)" if value is _MISSING else repr(value) for value in (want, have)]
            result.refused.append(f"{key}: the study plans {shown[0]}, the run has {shown[1]}")
    return result


def _compare_max_steps(want, have, planned: dict, adopted: dict, steps: int | None, result: Comparison) -> None:
    epochs = planned.get("trainer.max_epochs"), adopted.get("trainer.max_epochs")
    if isinstance(want, int) and want > 0 and steps == want and epochs[0] == epochs[1]:
        result.accepted.append(
            ("trainer.max_steps", f"the study plans {want}, the run has {have} and stopped after {steps} steps "
             f"with the same max_epochs ({epochs[0]}): the same steps and step total")
        )  # fmt: skip
    else:
        result.refused.append(
            f"trainer.max_steps: the study plans {want!r}, the run has {have!r} and took {steps} step(s) "
            f"(max_epochs {epochs[0]!r} planned, {epochs[1]!r} in the run)"
        )


def trained_steps(checkpoint: Path) -> int:
    """The optimisation steps a fit had taken when it saved ``checkpoint``."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return int(state["global_step"])


def planned_config(run: Run) -> dict:
    """The configuration the study's command for ``run`` would save as its ``config.yaml`` (parsed, not run)."""
    from imbcompress.study.validate import parsed_yaml

    with tempfile.TemporaryDirectory(prefix="imbcompress-adopt-") as scratch:
        return parsed_yaml(run, Path(scratch))


def check_adoption(run: Run, source: Path) -> tuple[Comparison, int]:
    """Everything :func:`adopt` checks before it writes; returns the comparison and the adopted run's steps.

    Raises:
        ValueError: naming the run, the source and every reason it cannot be adopted.
    """
    what = f"adopting {source} as run {run.id}"
    if run.kind != "fit":
        raise ValueError(f"{what}: only fits can be adopted, this run is a {run.kind!r}")
    if not is_done(source) or not (source / LAST_CKPT).is_file():
        raise ValueError(f"{what}: {source} is not a finished fit (it needs metrics.json and {LAST_CKPT})")
    target = Path(run.dir)
    if target.exists() and any(target.iterdir()):
        raise ValueError(f"{what}: the study's run directory {target} is not empty (the run started or was adopted)")
    if run.deps:
        raise ValueError(
            f"{what}: the run starts from other runs of the study ({', '.join(run.deps)}: its init_from, teacher "
            "or quantized checkpoint); only runs that start from nothing can be adopted"
        )
    planned = planned_config(run)
    adopted = yaml.safe_load((source / RUN_CONFIG).read_text())
    steps = trained_steps(source / LAST_CKPT)
    comparison = compare(planned, adopted, steps)
    if comparison.refused:
        raise ValueError(
            f"{what}: its configuration differs from the study's in ways that can change the trained weights "
            "(nothing was copied):\n  " + "\n  ".join(comparison.refused)
        )
    return comparison, steps


def adopt(run: Run, source: str | Path, checked: tuple[Comparison, int] | None = None) -> dict:
    """Copy the finished fit ``source`` into ``run``'s directory; returns the record.

    Args:
        run: the study's run.
        source: the finished fit's run directory.
        checked: what :func:`check_adoption` returned for them, when the caller has just checked (it parses the
            study's configuration, a few seconds); otherwise checked here.

    The source's fit lock is held while copying (a fit still writing there is refused) and put back after; a
    source on a read-only file system is copied without it (no fit can be writing there).
    """
    source = Path(source).resolve()
    comparison, steps = checked or check_adoption(run, source)
    source_metrics = json.loads((source / "metrics.json").read_text())
    record = {
        "run": run.id,
        "source": str(source),
        "adopted": now(),
        "steps": steps,
        "neutral_differences": comparison.neutral,
        "accepted_differences": [{"key": key, "why": why} for key, why in comparison.accepted],
        "source_metrics_created": source_metrics.get("created"),
        "trained_code": source_metrics.get("code"),  # None: trained before imbcompress recorded its commit
        "adopting_code": code_revision(),
    }
    target = Path(run.dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(source / RUN_LOCK_FILE, f"a fit is using {source}")
    locked = True
    try:
        lock.acquire()
    except PermissionError:  # a read-only source
        locked = False
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.adopting-", dir=target.parent))
    try:
        shutil.copytree(source, staging, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(RUN_LOCK_FILE, LOCK_FILE, STATUS_FILE))  # fmt: skip
        write_json_atomic(staging / ADOPTED_FILE, record)
        update_status(staging, state="done", adopted_from=str(source))  # no start or end: it trained elsewhere
        if target.exists():
            target.rmdir()  # empty (checked): replaced by the complete copy in one rename
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if locked:
            lock.release(put_back=True)
    return record


def adopted_runs(runs: list[Run]) -> dict[str, dict]:
    """Run id -> its ``adopted.json`` record, for the runs that were adopted."""
    records = {}
    for run in runs:
        path = Path(run.dir) / ADOPTED_FILE
        if path.is_file():
            records[run.id] = json.loads(path.read_text())
    return records


def describe_adoption(record: dict) -> str:
    """One line for the report: where the run came from and what differed."""
    accepted = "; ".join(f"`{item['key']}` ({item['why']})" for item in record["accepted_differences"])
    neutral = ", ".join(f"`{key}`" for key in record["neutral_differences"])
    trained, adopting = record.get("trained_code"), record.get("adopting_code")  # absent in older records
    code = (
        f"trained by {revision_text(trained, 'an unrecorded commit')}, adopted by {revision_text(adopting)}"
        if trained or adopting
        else "commits not recorded"
    )
    return (
        f"`{record['run']}` from `{record['source']}` ({record['steps']} steps; adopted {record['adopted']}; {code})"
        + (f"; differs only in {neutral}" if neutral else "")
        + (f"; accepted: {accepted}" if accepted else "")
    )


__all__ = [
    "ADOPTED_FILE", "Comparison", "adopt", "adopted_runs", "check_adoption", "compare", "describe_adoption", "flatten",
]  # fmt: skip
