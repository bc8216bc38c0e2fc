"""Expand a study into runs: one directory, one command and its dependencies per (variant, method, remedy, seed)."""

from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from imbcompress.atomic import write_json_atomic
from imbcompress.study.remedies import BASELINE, Remedy, config_key
from imbcompress.study.spec import KD_CLASS_PATH, LAST_CKPT, Method, Study, Variant

PLAN_FILE = "plan.json"
GENERATED_FRAGMENT = "study_fragment.yaml"
RUN_CONFIG = "config.yaml"  # what a fit writes into its run directory (the merged configuration)


@dataclass
class Run:
    """One run of the study: everything needed to launch, resume and report it (plain data, JSON-able).

    ``kind`` is the ``imbcompress`` command it runs: ``fit``; ``ptq`` (whose ``args`` name the checkpoint it
    quantizes); or ``test``, a post-hoc remedy's run (its ``configs`` are the ``ce`` run's saved configuration, then
    the remedy's fragments; its ``args`` name that run's checkpoint). ``method`` and ``remedy`` are names from the
    study file.
    """

    id: str
    dir: str
    variant: dict
    method: str
    seed: int
    deps: list[str] = field(default_factory=list)
    configs: list[str] = field(default_factory=list)
    config_sha256: dict[str, str] = field(default_factory=dict)
    callbacks: list[dict] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    remedy: str = BASELINE
    kind: str = "fit"

    @property
    def config(self) -> str:
        """The configuration the run belongs to in the report (``method``, or ``method@remedy``)."""
        return config_key(self.method, self.remedy)

    def command(self, command_prefix: list[str], resume: bool = False, fragment: str | None = None) -> list[str]:
        """The full command line; with ``resume`` a fit continues from ``checkpoints/last.ckpt``.

        ``fragment`` replaces the generated fragment's path (``RUN/study_fragment.yaml``), e.g. for validation.
        """
        cmd = [*command_prefix, self.kind]
        for config in self.configs:
            cmd += ["--config", config]
        if self.callbacks:
            cmd += ["--config", fragment or str(Path(self.dir) / GENERATED_FRAGMENT)]
        cmd += self.args
        if resume and self.kind == "fit":  # a PTQ or test run writes no checkpoint: it starts again
            cmd += ["--ckpt_path", str(Path(self.dir) / LAST_CKPT)]
        return cmd

    def fragment_text(self) -> str:
        """The generated config fragment that appends the run's inline callbacks (and its distillation teacher)."""
        return yaml.safe_dump({"trainer": {"callbacks+": self.callbacks}}, sort_keys=False)


@dataclass
class Plan:
    """All runs of a study in dependency order, plus what the report needs to label them."""

    name: str
    study_path: str
    out_dir: str
    reference: str
    methods: dict[str, dict]
    variants: list[dict]
    seeds: list[int]
    runs: list[Run]
    remedies: dict[str, dict] = field(default_factory=lambda: {BASELINE: Remedy(BASELINE).record()})

    def by_id(self) -> dict[str, Run]:
        """Runs keyed by id."""
        return {run.id: run for run in self.runs}


def select_run_ids(plan: Plan, patterns: list[str]) -> set[str]:
    """The ids of the runs that match one of ``patterns`` (shell-style globs on run ids, e.g.
    ``exponential-r100/*`` or ``*@ldam_drw/seed1``) and of every run they start from (dependencies, transitively).

    Raises:
        ValueError: a pattern matches no run (the message names it and shows what run ids look like).
    """
    by_id = plan.by_id()
    chosen: set[str] = set()
    for pattern in patterns:
        matched = {rid for rid in by_id if fnmatch.fnmatchcase(rid, pattern)}
        if not matched:
            examples = ", ".join(list(by_id)[:3])
            raise ValueError(
                f"--only {pattern!r}: matches no run of study {plan.name!r} (run ids are variant/method/seed, "
                f"e.g. {examples}; `imbcompress study run STUDY --dry-run` lists them all)"
            )
        chosen |= matched
    stack = list(chosen)
    while stack:
        for dep in by_id[stack.pop()].deps:
            if dep not in chosen:
                chosen.add(dep)
                stack.append(dep)
    return chosen


def run_id(variant: Variant | dict, method: str, seed: int, remedy: str = BASELINE) -> str:
    """Stable id of a run, e.g. ``exponential-r100/qat_a3w3/seed0`` or ``exponential-r100/qat_a3w3@ldam_drw/seed0``."""
    key = variant.key if isinstance(variant, Variant) else variant["key"]
    return f"{key}/{config_key(method, remedy)}/seed{seed}"


def file_digests(paths: list[str]) -> dict[str, str]:
    """SHA-256 of each existing config file, so a plan notices when a fragment's content changed."""
    return {path: hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in paths if Path(path).is_file()}


def _distill_callback(teacher_dir: Path, distill: dict) -> dict:
    init_args = {"teacher_checkpoint": str(teacher_dir / LAST_CKPT), **distill}
    return {"class_path": KD_CLASS_PATH, "init_args": init_args}


def _ptq_args(method: Method, parent_dir: Path, run_dir: Path, seed: int) -> list[str]:
    """``imbcompress ptq`` arguments: the parent run's config and checkpoint, every calibration setting explicit."""
    assert method.ptq is not None
    calibration_seed = method.ptq["calibration_seed"]
    return [
        "--config", str(parent_dir / RUN_CONFIG), "--ckpt_path", str(parent_dir / LAST_CKPT), "--run_dir", str(run_dir),
        "--calibration", method.ptq["calibration"], "--calibration_size", str(method.ptq["calibration_size"]),
        "--calibration_seed", str(seed if calibration_seed is None else calibration_seed),
    ]  # fmt: skip


def _posthoc_run(out_dir: Path, variant: Variant, method: Method, remedy: Remedy, seed: int) -> Run:
    """A post-hoc remedy's run: ``imbcompress test`` of the ``ce`` run of the same method, variant and seed, with the
    remedy's callbacks (the parent's saved configuration first, so the remedy's ``callbacks+`` append to its own)."""
    rid, parent = run_id(variant, method.name, seed, remedy.name), run_id(variant, method.name, seed)
    run_dir, parent_dir = out_dir / "runs" / rid, out_dir / "runs" / parent
    return _new_run(
        rid, run_dir, variant, method, remedy, seed,
        kind="test",
        deps=[parent],
        configs=[str(parent_dir / RUN_CONFIG), *remedy.fragments],
        config_sha256=file_digests(list(remedy.fragments)),  # the parent's config.yaml is written by its fit
        callbacks=[dict(cb) for cb in remedy.callbacks],
        args=["--ckpt_path", str(parent_dir / LAST_CKPT), "--run_dir", str(run_dir)],
    )  # fmt: skip


def _new_run(
    rid: str, run_dir: Path, variant: Variant, method: Method, remedy: Remedy, seed: int, **fields: Any
) -> Run:
    """The run ``rid`` (in ``run_dir``) with its command fields (``kind``, ``deps``, ``configs``, ``args``, ...)."""
    return Run(rid, str(run_dir), asdict(variant), method.name, seed, remedy=remedy.name, **fields)


def applies(method: Method, remedy: Remedy) -> bool:
    """Whether ``method`` has runs under ``remedy``: every pair except a post-hoc remedy with a PTQ method (an int8
    ONNX model, which ``imbcompress test`` cannot adjust)."""
    return not (remedy.posthoc and method.ptq is not None)


def left_out(study: Study) -> list[str]:
    """One line per (method, remedy) pair without runs (:func:`applies`), saying why; empty when there is none."""
    return [
        f"{config_key(name, remedy.name)}: no runs (remedy {remedy.name!r} is post-hoc, applied by `imbcompress test` "
        f"to a checkpoint, and PTQ method {name!r} writes an int8 ONNX model, not a checkpoint)"
        for name, method in study.methods.items()
        for remedy in study.remedies.values()
        if not applies(method, remedy)
    ]


def _fit_args(study: Study, method: Method, remedy: Remedy, variant: Variant, seed: int, run_dir: Path) -> list[str]:
    args = [*study.args, *method.args, *remedy.cli_args(), *variant.cli_args()]
    return args + ["--seed_everything", str(seed), "--data.init_args.subset_seed", str(seed), "--run_dir", str(run_dir)]


def _make_run(study: Study, out_dir: Path, variant: Variant, method: Method, remedy: Remedy, seed: int) -> Run:
    if remedy.posthoc:
        return _posthoc_run(out_dir, variant, method, remedy, seed)

    def dep_dir(name: str) -> Path:
        return out_dir / "runs" / run_id(variant, name, seed, remedy.name)

    rid = run_id(variant, method.name, seed, remedy.name)
    run_dir = out_dir / "runs" / rid
    deps = [run_id(variant, dep, seed, remedy.name) for dep in method.dependencies()]
    if method.ptq is not None:
        assert method.init_from is not None
        args = _ptq_args(method, dep_dir(method.init_from), run_dir, seed)
        return _new_run(rid, run_dir, variant, method, remedy, seed, kind="ptq", deps=deps, args=args)
    callbacks = [dict(cb) for cb in method.callbacks]
    if method.teacher is not None:
        callbacks.append(_distill_callback(dep_dir(method.teacher), method.distill))
    callbacks += [dict(cb) for cb in remedy.callbacks]
    args = _fit_args(study, method, remedy, variant, seed, run_dir)
    if method.init_from is not None:
        args += ["--model.init_args.init_from", str(dep_dir(method.init_from) / LAST_CKPT)]
    configs = [*study.base, *method.fragments, *remedy.fragments]
    return _new_run(
        rid, run_dir, variant, method, remedy, seed,
        deps=deps, configs=configs, config_sha256=file_digests(configs), callbacks=callbacks, args=args,
    )  # fmt: skip


def method_order(study: Study) -> list[str]:
    """Method names with every dependency before its dependants (stable otherwise)."""
    ordered: list[str] = []

    def visit(name: str) -> None:
        if name in ordered:
            return
        for dep in study.methods[name].dependencies():
            visit(dep)
        ordered.append(name)

    for name in study.methods:
        visit(name)
    return ordered


def expand(study: Study, out_dir: str | Path) -> Plan:
    """Expand a validated study into a plan whose runs are in a valid execution order.

    Args:
        study: the validated study.
        out_dir: the study output directory; each run gets ``out_dir/runs/<id>`` (:func:`run_id`).

    Returns:
        The plan (dependencies always come before their dependants in ``plan.runs``).
    """
    out_dir = Path(out_dir).resolve()
    runs = [
        _make_run(study, out_dir, variant, study.methods[name], remedy, seed)
        for name in method_order(study)
        for remedy in study.remedies.values()
        if applies(study.methods[name], remedy)
        for variant in study.variants
        for seed in study.seeds
    ]
    methods = {
        name: {"bits": m.bits, "label": m.label or name, "kind": m.kind, "ptq": m.ptq}
        for name, m in study.methods.items()
    }
    return Plan(
        name=study.name,
        study_path=study.path,
        out_dir=str(out_dir),
        reference=study.reference,
        methods=methods,
        variants=[asdict(v) for v in study.variants],
        seeds=list(study.seeds),
        runs=runs,
        remedies={name: remedy.record() for name, remedy in study.remedies.items()},
    )


def save_plan(plan: Plan) -> None:
    """Write ``plan.json`` into the study output directory."""
    write_json_atomic(Path(plan.out_dir) / PLAN_FILE, asdict(plan))


def load_plan(out_dir: str | Path) -> Plan:
    """Read the plan a previous ``study run`` wrote into ``out_dir``."""
    path = Path(out_dir) / PLAN_FILE
    if not path.is_file():
        raise ValueError(f"study directory {out_dir}: no {PLAN_FILE} (run `imbcompress study run` first)")
    with open(path) as handle:
        data = json.load(handle)
    data["runs"] = [Run(**run) for run in data["runs"]]
    return Plan(**data)
