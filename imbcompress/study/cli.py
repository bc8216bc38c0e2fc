"""``imbcompress study run|status|report``: the study command (argparse; not a LightningCLI)."""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imbcompress.study.attempt import DEFAULT_COMMAND, execute_run
from imbcompress.study.changes import Changes, describe_changes, find_changes, set_aside
from imbcompress.study.plan import PLAN_FILE, Plan, expand, left_out, load_plan, save_plan, select_run_ids
from imbcompress.study.scheduler import detect_gpus, run_plan
from imbcompress.study.slurm import SlurmParams, describe, submit, write_dry_run
from imbcompress.study.spec import load_study
from imbcompress.study.state import INVOCATIONS_FILE, STATES, StudyLock, now, plan_states, read_status

FAILED_EXIT = 1
USAGE_EXIT = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imbcompress study", description="Run grids of fits and report them.")
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="run (or continue) every unfinished run of a study")
    run.add_argument("study", help="study YAML file (docs/study.md)")
    run.add_argument("--out", help="output directory (default: studies/<study name>)")
    run.add_argument(
        "--jobs", type=int, default=None, help="runs at once (default 1); each gets its share of CPU threads / GPUs"
    )
    run.add_argument(
        "--runs-per-gpu",
        type=int,
        default=None,
        help="pack N runs on each visible GPU at once (N x GPUs slots); without GPUs: N runs on the CPU",
    )
    run.add_argument(
        "--only",
        nargs="+",
        metavar="GLOB",
        help="run only the runs whose id matches one of these shell-style patterns (e.g. 'exponential-r100/*') "
        "and the runs they start from; the others stay pending (local executor)",
    )
    run.add_argument("--executor", choices=["local", "slurm"], default="local")
    run.add_argument("--dry-run", action="store_true", help="print the runs (local) or write sbatch previews (slurm)")
    run.add_argument("--command", help=f"command that runs one fit (default: {shlex.join(DEFAULT_COMMAND)})")
    run.add_argument(
        "--rerun-changed",
        action="store_true",
        help="when the study file changed runs that already ran: run those and their dependants again, moving "
        "their old directories to OUT/replaced/<n>/",
    )
    run.add_argument(
        "--restart-corrupt",
        action="store_true",
        help="a run whose checkpoints/last.ckpt is corrupt: move it to last.ckpt.corrupt-<n> and restart the run "
        "from scratch (without this flag such a run fails with a message naming the file)",
    )
    run.add_argument("--slurm-partition", default=None)
    run.add_argument("--slurm-time-min", type=int, default=24 * 60)
    run.add_argument("--slurm-cpus", type=int, default=4, help="CPU cores per run")
    run.add_argument("--slurm-gpus", type=int, default=1, help="GPUs per run (>1: DDP inside the run)")
    run.add_argument("--slurm-mem-gb", type=int, default=16)
    status = sub.add_parser("status", help="counts and a table of done/running/failed/blocked/pending runs")
    status.add_argument("dir", help="study output directory")
    report = sub.add_parser("report", help="tables, figures and report.md from the finished runs")
    report.add_argument("dir", help="study output directory")
    report.add_argument("--out", help="report directory (default: DIR/report)")
    estimate = sub.add_parser("plan", help="expand a study and, given a measured throughput, estimate its time")
    estimate.add_argument("study", help="study YAML file (docs/study.md)")
    estimate.add_argument(
        "--throughput",
        required=True,
        help="JSON file of a measurement: images_per_s_per_run, runs_per_gpu, gpus, device, source",
    )
    estimate.add_argument("--classes", type=int, default=10, help="classes of the dataset (default: CIFAR-10's 10)")
    estimate.add_argument(
        "--train-per-class", type=int, default=5000, help="training images per class (default: CIFAR-10's 5000)"
    )
    adopt = sub.add_parser(
        "adopt",
        help="take a finished fit trained outside the study as one of its runs, when its saved configuration is "
        "the run's up to settings that cannot change the weights (docs/study.md)",
    )
    adopt.add_argument("study", help="study YAML file")
    adopt.add_argument("run_id", help="the study's run, e.g. exponential-r100/fp32/seed0")
    adopt.add_argument("source", help="the finished fit's run directory (config.yaml, metrics.json, checkpoints/)")
    adopt.add_argument("--out", help="the study's output directory (default: studies/<study name>)")
    one = sub.add_parser("run-one", help="run one run of a planned study (what a SLURM job executes)")
    one.add_argument("dir", help="study output directory")
    one.add_argument("run_id")
    one.add_argument("--command", help="command that runs one fit")
    one.add_argument("--restart-corrupt", action="store_true", help="as for `study run`")
    return parser


def _prefix(command: str | None) -> list[str]:
    return shlex.split(command) if command else list(DEFAULT_COMMAND)


def _check_changes(plan: Plan, rerun_changed: bool) -> tuple[Plan | None, Changes]:
    """The previous plan of ``--out`` and what the new one changes; refuses a changed run unless asked to redo it."""
    out = Path(plan.out_dir)
    if not (out / PLAN_FILE).is_file():
        return None, Changes()
    previous = load_plan(out)
    if previous.name != plan.name:
        raise ValueError(f"--out {out}: holds study {previous.name!r}, not {plan.name!r}; choose another directory")
    changes = find_changes(previous, plan)
    if changes.changed and not rerun_changed:
        raise ValueError(describe_changes(changes, out))
    return previous, changes


def _prepare_out(plan: Plan, argv: list[str], rerun_changed: bool) -> None:
    """Check the previous plan of ``--out`` (:func:`_check_changes`), log the command, write the plan and study."""
    out = Path(plan.out_dir)
    previous, changes = _check_changes(plan, rerun_changed)
    if previous is not None and changes.changed:
        target = set_aside(previous, changes.affected())
        print(f"--rerun-changed: moved {len(changes.affected())} run(s) and the previous plan to {target}")
    if changes.dropped:
        print(f"note: {len(changes.dropped)} run(s) of the previous plan are no longer in the study (kept on disk)")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / INVOCATIONS_FILE, "a") as handle:
        handle.write(f"{now()}  cwd={Path.cwd()}  imbcompress study {shlex.join(argv)}\n")
    save_plan(plan)
    if Path(plan.study_path).is_file():
        shutil.copyfile(plan.study_path, out / "study.yaml")


@contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM (e.g. a batch system stopping us) raises SystemExit, which unwinds the scheduler and stops its runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_local(plan: Plan, args: argparse.Namespace, only: set[str] | None) -> int:
    """Run the plan's unfinished runs (of ``only``, the ids ``--only`` selected; None: all) on this machine."""
    prefix = _prefix(args.command)
    runs = [run for run in plan.runs if only is None or run.id in only]
    if args.dry_run:
        _check_changes(plan, args.rerun_changed)
        for run in runs:
            after = f"  # after {', '.join(run.deps)}" if run.deps else ""
            print(f"{run.id}:{after}\n  {shlex.join(run.command(prefix))}")
        print(f"{len(runs)} run(s){_of_plan(only, plan)}; nothing was started (--dry-run)")
        return 0
    with StudyLock(plan.out_dir), _sigterm_exits():  # lock first, so a refused second run changes nothing
        _prepare_out(plan, args.argv, args.rerun_changed)
        states = run_plan(plan, prefix, jobs=args.jobs, lock=False, restart_corrupt=args.restart_corrupt, only=only)
    counts = Counter(states.values())
    finished = "study finished" if only is None else f"--only: {len(runs)} run(s){_of_plan(only, plan)} finished"
    print(f"{finished}: " + ", ".join(f"{state} {counts[state]}" for state in STATES if counts[state]))
    return 0 if counts["done"] == len(states) else FAILED_EXIT


def _of_plan(only: set[str] | None, plan: Plan) -> str:
    return "" if only is None else f" of the study's {len(plan.runs)} (--only, with the runs they start from)"


def _run_slurm(plan: Plan, args: argparse.Namespace) -> int:
    params = SlurmParams(
        partition=args.slurm_partition, time_min=args.slurm_time_min, cpus_per_run=args.slurm_cpus,
        gpus_per_run=args.slurm_gpus, mem_gb=args.slurm_mem_gb, restart_corrupt=args.restart_corrupt,
    )  # fmt: skip
    _prepare_out(plan, args.argv, args.rerun_changed)
    prefix = shlex.split(args.command) if args.command else None
    if args.dry_run:
        print(describe(write_dry_run(plan, params, prefix)))
        return 0
    job_ids, _ = submit(plan, params, prefix)
    print(f"submitted {len(job_ids)} SLURM job(s); follow with `imbcompress study status {plan.out_dir}`")
    return 0


def _slots(jobs: int | None, runs_per_gpu: int | None) -> int:
    """Runs at once: ``--jobs``, or ``--runs-per-gpu`` x the visible GPUs (x 1 without GPUs)."""
    for name, value in (("--jobs", jobs), ("--runs-per-gpu", runs_per_gpu)):
        if value is not None and value < 1:
            raise ValueError(f"{name}: invalid value {value} (allowed: an integer >= 1)")
    if runs_per_gpu is None:
        return jobs or 1
    if jobs is not None:
        raise ValueError(f"--jobs {jobs} and --runs-per-gpu {runs_per_gpu}: give one of them")
    return runs_per_gpu * max(1, len(detect_gpus()))


def cmd_run(args: argparse.Namespace) -> int:
    """``study run``: validate, expand, then run locally or on SLURM."""
    study = load_study(args.study)
    args.jobs = _slots(args.jobs, args.runs_per_gpu)
    if args.only and args.executor == "slurm":
        raise ValueError("--only works with the local executor (--executor local); SLURM submits every unfinished run")
    plan = expand(study, args.out or Path("studies") / study.name)
    only = select_run_ids(plan, args.only) if args.only else None  # a bad pattern fails before any work
    for line in left_out(study):
        print(line)
    if not args.dry_run:
        _validate(plan, _prefix(args.command))
    return _run_slurm(plan, args) if args.executor == "slurm" else _run_local(plan, args, only)


def _validate(plan: Plan, prefix: list[str]) -> None:
    """Parse the runs' fit configurations before anything starts (imports torch: only ``study run`` does this)."""
    from imbcompress.study.validate import uses_imbcompress, validate_runs

    if uses_imbcompress(prefix):
        checked = validate_runs(plan)
        print(f"checked the fit configuration of {checked} kind(s) of run: all parse")


def _note(state: str, status: dict) -> str:
    if state in ("failed", "blocked"):
        # the last log line is usually the error message itself
        last = [line for line in (status.get("log_tail") or "").splitlines() if line.strip()][-1:]
        return ": ".join([status.get("error") or "", *last])[:160]
    if state == "pending" and status.get("state") in ("running", "interrupted"):
        return "interrupted; resumes from last.ckpt"
    if status.get("adopted_from"):
        return f"adopted from {status['adopted_from']} (study adopt)"
    return ""


def cmd_status(args: argparse.Namespace) -> int:
    """``study status``: counts, then one line per run."""
    plan = load_plan(args.dir)
    states = plan_states(plan)
    counts = Counter(states.values())
    print(f"study {plan.name}: {len(states)} runs: " + ", ".join(f"{s} {counts[s]}" for s in STATES))
    width = max(len(run_id) for run_id in states)
    print(f"{'run':<{width}}  {'state':<8} {'attempt':>7} {'exit':>5} {'time (s)':>9}  note")
    for run in plan.runs:
        status, state = read_status(run.dir), states[run.id]
        rc = status.get("returncode")
        print(
            f"{run.id:<{width}}  {state:<8} {status.get('attempt', ''):>7} {'' if rc is None else rc:>5} "
            f"{status.get('duration_s', ''):>9}  {_note(state, status)}"
        )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``study report``: write tables, figures and report.md."""
    from imbcompress.study.report import write_report  # matplotlib: only when a report is asked for

    path = write_report(load_plan(args.dir), args.out)
    print(f"report written to {path}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """``study plan``: the runs of a study and its estimated time at a measured throughput (imports torch)."""
    from imbcompress.study.estimate import describe_estimate, estimate, load_throughput

    throughput = load_throughput(args.throughput)
    study = load_study(args.study)
    plan = expand(study, Path("studies") / "estimate")  # directories are not used
    for line in left_out(study):
        print(line)
    result = estimate(plan, throughput, args.classes, args.train_per_class)
    print(describe_estimate(plan, result, throughput, args.classes, args.train_per_class))
    return 0


def cmd_adopt(args: argparse.Namespace) -> int:
    """``study adopt``: check a finished fit against the planned run, then copy it in (``adopt.py``)."""
    from imbcompress.study.adopt import adopt, check_adoption

    study = load_study(args.study)
    plan = expand(study, args.out or Path("studies") / study.name)
    run = plan.by_id().get(args.run_id)
    if run is None:
        raise ValueError(f"run_id: no run {args.run_id!r} in study {plan.name!r} (e.g. {plan.runs[0].id})")
    source = Path(args.source).resolve()
    checked = check_adoption(run, source)  # before the study's lock and plan are written
    with StudyLock(plan.out_dir):  # not while a `study run` uses the directory
        _prepare_out(plan, args.argv, rerun_changed=False)
        record = adopt(run, source, checked)
    accepted = ", ".join(item["key"] for item in record["accepted_differences"]) or "none"
    print(f"{run.id}: adopted {source} ({record['steps']} steps; differences that cannot change the weights: "
          f"{', '.join(record['neutral_differences']) or 'none'}; accepted: {accepted})")  # fmt: skip
    return 0


def cmd_run_one(args: argparse.Namespace) -> int:
    """``study run-one``: one run in the foreground."""
    plan = load_plan(args.dir)
    runs = plan.by_id()
    if args.run_id not in runs:
        raise ValueError(f"run_id: unknown run {args.run_id!r} in {args.dir}")
    state = execute_run(runs[args.run_id], _prefix(args.command), restart_corrupt=args.restart_corrupt)
    print(f"{args.run_id}: {state}")
    return 0 if state == "done" else FAILED_EXIT


COMMANDS = {
    "run": cmd_run, "status": cmd_status, "report": cmd_report, "plan": cmd_plan, "run-one": cmd_run_one,
    "adopt": cmd_adopt,
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``imbcompress study ...``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    try:
        return COMMANDS[args.action](args)
    except (ValueError, RuntimeError) as error:
        print(f"imbcompress study {args.action}: error: {error}", file=sys.stderr)
        return USAGE_EXIT


if __name__ == "__main__":
    sys.exit(main())
