"""The SLURM path without a cluster: dry-run job specs and sbatch previews, the optional-dependency error."""

import json
import sys
from pathlib import Path

import pytest

from imbcompress.study.attempt import execute_run
from imbcompress.study.cli import main
from imbcompress.study.plan import expand, load_plan
from imbcompress.study.slurm import SlurmParams, submit
from imbcompress.study.spec import load_study

from .conftest import write_study


def test_slurm_dry_run_writes_jobs_without_submitting(tmp_path, fake_env, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # the dry run must not need submitit
    path = write_study(tmp_path)
    out = tmp_path / "out"
    finished = Path(expand(load_study(path), out).by_id()["balanced/fp32/seed0"].dir)
    finished.mkdir(parents=True)
    (finished / "metrics.json").write_text(json.dumps({"test": {"macro_f1": 0.9}}))
    argv = ["run", str(path), "--out", str(out), "--executor", "slurm", "--dry-run", "--slurm-partition", "gpu"]
    assert main([*argv, "--slurm-gpus", "2", "--slurm-cpus", "8"]) == 0
    assert "5 SLURM job(s) previewed (not submitted)" in capsys.readouterr().out
    specs = json.loads((out / "slurm" / "jobs.json").read_text())
    ids = [spec["run_id"] for spec in specs]
    assert "balanced/fp32/seed0" not in ids and len(ids) == 5
    kd = specs[ids.index("exponential-r100/kd/seed0")]
    assert kd["after"] == ["exponential-r100/fp32/seed0"]
    assert kd["command"][-3:] == ["run-one", str(out.resolve()), "exponential-r100/kd/seed0"]
    assert specs[ids.index("balanced/kd/seed0")]["after"] == []  # its teacher is already finished
    script = (out / "slurm" / f"job_{ids.index('exponential-r100/kd/seed0'):04d}.sbatch").read_text()
    fp32_job = ids.index("exponential-r100/fp32/seed0")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=2", "#SBATCH --cpus-per-task=8"):
        assert line in script
    assert f"#SBATCH --dependency=afterany:$JOB_{fp32_job}" in script
    assert "OMP_NUM_THREADS=8" in script
    assert not (out / "slurm" / "submitted.json").exists() and fake_env() == []


def test_submit_without_submitit_explains_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)
    plan = expand(load_study(write_study(tmp_path)), tmp_path / "out")
    with pytest.raises(RuntimeError, match=r"pip install 'imbcompress\[slurm\]'"):
        submit(plan, SlurmParams())


def test_slurm_params_are_validated():
    with pytest.raises(ValueError, match="cpus_per_run: invalid value 0"):
        SlurmParams(cpus_per_run=0)


def test_job_entry_point_runs_one_run_and_blocks_without_its_dependency(tmp_path, fake_env, fake_prefix):
    path = write_study(tmp_path)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--executor", "slurm", "--dry-run"]) == 0
    plan = load_plan(out)
    runs = plan.by_id()
    assert execute_run(runs["balanced/kd/seed0"], fake_prefix) == "blocked"
    command = " ".join(fake_prefix)
    assert main(["run-one", str(out), "balanced/fp32/seed0", "--command", command]) == 0
    assert main(["run-one", str(out), "balanced/kd/seed0", "--command", command]) == 0
    assert [Path(c["run_dir"]).parent.name for c in fake_env()] == ["fp32", "kd"]


def test_submit_through_submitit_debug_cluster(tmp_path, fake_env, fake_prefix):
    pytest.importorskip("submitit")
    plan = expand(load_study(write_study(tmp_path)), tmp_path / "out")
    job_ids, jobs = submit(plan, SlurmParams(partition="gpu"), fake_prefix, cluster="debug")
    assert list(job_ids) == [run.id for run in plan.runs]
    for job in jobs:  # the debug cluster runs a job when its result is asked for, in submission order
        job.result()
    assert len(fake_env()) == 6 and all((Path(run.dir) / "metrics.json").is_file() for run in plan.runs)
    submitted = json.loads((Path(plan.out_dir) / "slurm" / "submitted.json").read_text())
    assert submitted == job_ids
