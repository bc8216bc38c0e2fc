"""Submit a study's runs as SLURM jobs through submitit (optional dependency), or preview them (dry run).

Each job runs ``python -m imbcompress.study.cli run-one DIR RUN_ID``, which does exactly what a local run
does (resume from ``last.ckpt``, status record, log, never rerun a finished run). Dependencies become
``--dependency=afterany:<job ids>``: a job whose dependency failed starts, sees the missing checkpoint and
records itself as blocked instead of waiting forever in the queue.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imbcompress.atomic import write_json_atomic
from imbcompress.study.plan import Plan, Run, save_plan
from imbcompress.study.state import is_done, update_status

SLURM_DIR = "slurm"


@dataclass
class SlurmParams:
    """Resources of every job.

    Args:
        partition: SLURM partition (None: the cluster default).
        time_min: wall-clock limit per run, minutes.
        cpus_per_run: CPU cores per run (also its thread count).
        gpus_per_run: GPUs per run; more than one means DDP inside the run (set ``--trainer.devices`` to match).
        mem_gb: memory per run, GB.
        additional: extra ``#SBATCH`` parameters (e.g. ``{"account": "proj"}``).
        restart_corrupt: jobs restart a run whose ``last.ckpt`` is corrupt from scratch (``--restart-corrupt``).
    """

    partition: str | None = None
    time_min: int = 24 * 60
    cpus_per_run: int = 4
    gpus_per_run: int = 1
    mem_gb: int = 16
    additional: dict[str, Any] = field(default_factory=dict)
    restart_corrupt: bool = False

    def __post_init__(self) -> None:
        for name in ("time_min", "cpus_per_run", "mem_gb"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: invalid value {getattr(self, name)} (allowed: an integer >= 1)")
        if self.gpus_per_run < 0:
            raise ValueError(f"gpus_per_run: invalid value {self.gpus_per_run} (allowed: an integer >= 0)")


def job_command(plan: Plan, run: Run, params: SlurmParams, command_prefix: list[str] | None) -> list[str]:
    """The command a job runs for one run (thread count set here: submitit's ``env`` replaces the whole env)."""
    threads = f"OMP_NUM_THREADS={params.cpus_per_run}"
    cmd = ["env", threads, sys.executable, "-m", "imbcompress.study.cli", "run-one", plan.out_dir, run.id]
    if command_prefix:
        cmd += ["--command", shlex.join(command_prefix)]
    return cmd + (["--restart-corrupt"] if params.restart_corrupt else [])


def job_specs(plan: Plan, params: SlurmParams, command_prefix: list[str] | None = None) -> list[dict]:
    """One spec per unfinished run, in submission order; ``after`` names the runs it waits for."""
    pending = [run for run in plan.runs if not is_done(run.dir)]
    names = {run.id for run in pending}
    return [
        {
            "run_id": run.id,
            "job_name": f"{plan.name}:{run.id}",
            "after": [dep for dep in run.deps if dep in names],
            "command": job_command(plan, run, params, command_prefix),
            "resources": asdict(params),
        }
        for run in pending
    ]


def _sbatch_text(spec: dict, index_of: dict[str, int], log_dir: Path) -> str:
    res = spec["resources"]
    lines = ["#!/bin/bash", f"#SBATCH --job-name={spec['job_name']}", f"#SBATCH --time={res['time_min']}"]
    if res["partition"]:
        lines.append(f"#SBATCH --partition={res['partition']}")
    lines += [f"#SBATCH --cpus-per-task={res['cpus_per_run']}", f"#SBATCH --mem={res['mem_gb']}G"]
    if res["gpus_per_run"]:
        lines.append(f"#SBATCH --gpus-per-node={res['gpus_per_run']}")
    lines += [f"#SBATCH --{key.replace('_', '-')}={value}" for key, value in res["additional"].items()]
    if spec["after"]:
        # job ids only exist after submission: the preview names the jobs it would wait for
        deps = ":".join(f"$JOB_{index_of[dep]}" for dep in spec["after"])
        lines.append(f"#SBATCH --dependency=afterany:{deps}")
    lines.append(f"#SBATCH --output={log_dir}/%j.out")
    lines.append(shlex.join(spec["command"]))
    return "\n".join(lines) + "\n"


def write_dry_run(plan: Plan, params: SlurmParams, command_prefix: list[str] | None = None) -> list[Path]:
    """Write ``DIR/slurm/jobs.json`` and one preview sbatch script per job, without submitting anything.

    Returns:
        The written paths (jobs.json first).
    """
    folder = Path(plan.out_dir) / SLURM_DIR
    specs = job_specs(plan, params, command_prefix)
    index_of = {spec["run_id"]: index for index, spec in enumerate(specs)}
    write_json_atomic(folder / "jobs.json", specs)
    paths = [folder / "jobs.json"]
    for index, spec in enumerate(specs):
        path = folder / f"job_{index:04d}.sbatch"
        path.write_text(_sbatch_text(spec, index_of, folder / "logs"))
        paths.append(path)
    return paths


def _import_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise RuntimeError(
            "--executor slurm needs the optional dependency submitit: pip install 'imbcompress[slurm]' "
            "(or pip install submitit); --dry-run works without it"
        ) from None
    return submitit


def submit(
    plan: Plan, params: SlurmParams, command_prefix: list[str] | None = None, cluster: str = "slurm"
) -> tuple[dict[str, str], list]:
    """Submit every unfinished run as a SLURM job.

    Args:
        plan: the expanded study.
        params: resources of every job.
        command_prefix: the command that runs one fit inside the job (default ``python -m imbcompress``).
        cluster: submitit cluster; ``debug`` runs the jobs in this process when their result is asked for.

    Returns:
        Run id -> job id, and the submitit jobs in submission order.
    """
    submitit = _import_submitit()
    save_plan(plan)  # the jobs read the plan from the study directory
    folder = Path(plan.out_dir) / SLURM_DIR / "logs"
    job_ids: dict[str, str] = {}
    jobs = []
    for spec in job_specs(plan, params, command_prefix):
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
        extra = dict(params.additional)
        if spec["after"]:
            extra["dependency"] = "afterany:" + ":".join(job_ids[dep] for dep in spec["after"])
        executor.update_parameters(
            name=spec["job_name"], timeout_min=params.time_min, slurm_partition=params.partition,
            cpus_per_task=params.cpus_per_run, gpus_per_node=params.gpus_per_run, mem_gb=params.mem_gb,
            slurm_additional_parameters=extra,
        )  # fmt: skip
        job = executor.submit(submitit.helpers.CommandFunction(spec["command"]))
        jobs.append(job)
        job_ids[spec["run_id"]] = str(job.job_id)
        run_dir = plan.by_id()[spec["run_id"]].dir
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        update_status(run_dir, state="submitted", slurm_job_id=str(job.job_id))
    write_json_atomic(Path(plan.out_dir) / SLURM_DIR / "submitted.json", job_ids)
    return job_ids, jobs


def describe(paths: list[Path]) -> str:
    """Human summary of a dry run."""
    with open(paths[0]) as handle:
        specs = json.load(handle)
    return f"{len(specs)} SLURM job(s) previewed (not submitted): {paths[0]} and {len(paths) - 1} sbatch script(s)"
