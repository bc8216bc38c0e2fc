"""Execution with a fake fit: ordering, parallel slots, failure isolation, resume after kills, the lock."""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from imbcompress.study.attempt import launch, lost_attempt_seconds
from imbcompress.study.cli import main
from imbcompress.study.plan import expand, load_plan
from imbcompress.study.scheduler import detect_gpus, run_plan, slot_envs
from imbcompress.study.spec import load_study
from imbcompress.study.state import StudyLock, plan_states, read_status, update_status

from .conftest import write_study

REPO = Path(__file__).resolve().parents[2]


def make_plan(tmp_path, **overrides):
    plan = expand(load_study(write_study(tmp_path, **overrides)), tmp_path / "out")
    Path(plan.out_dir).mkdir(parents=True, exist_ok=True)
    return plan


def snapshot(plan) -> dict[str, tuple[bytes, int]]:
    """metrics.json content and mtime of every finished run."""
    result = {}
    for run in plan.runs:
        path = Path(run.dir) / "metrics.json"
        if path.exists():
            result[run.id] = (path.read_bytes(), path.stat().st_mtime_ns)
    return result


def start_hanging_study(tmp_path, fake_prefix, hang: str) -> tuple[Path, Path, subprocess.Popen]:
    """`study run` as its own process group, returned once the fake fit of run ``hang`` (seed 0) hangs."""
    path = write_study(tmp_path)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "imbcompress.study.cli", "run", str(path), "--out", str(out)]
    cmd += ["--command", " ".join(fake_prefix)]
    env = {**os.environ, "FAKE_FIT_HANG": f"runs/{hang}", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    marker = out / "runs" / hang / "seed0" / "hanging"
    deadline = time.monotonic() + 60
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), "the hanging run never started"
    return path, out, proc


def test_all_runs_finish_in_dependency_order_with_thread_shares(tmp_path, fake_env, fake_prefix):
    plan = make_plan(tmp_path)
    states = run_plan(plan, fake_prefix, jobs=2, gpus=[], echo=lambda _: None)
    assert set(states.values()) == {"done"} and len(states) == 6
    calls = fake_env()
    # the fake fails when an init_from / teacher checkpoint is missing, so "done" everywhere proves the order
    assert len(calls) == 6 and all(call["resume"] is None for call in calls)
    assert {call["omp"] for call in calls} == {str(max(1, (os.cpu_count() or 1) // 2))}
    kd = plan.by_id()["exponential-r100/kd/seed0"]
    assert "teacher_checkpoint" in (Path(kd.dir) / "study_fragment.yaml").read_text()
    assert read_status(kd.dir)["state"] == "done" and "attempt 1" in (Path(kd.dir) / "run.log").read_text()


def test_detect_gpus_keeps_a_scheduler_device_list_and_never_imports_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert detect_gpus() == [2, 3]  # physical ids, handed out as they are, not renumbered to 0, 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert detect_gpus() == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1a2b")
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        detect_gpus()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: A (UUID: GPU-a)'\necho 'GPU 1: B (UUID: GPU-b)'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_gpus() == [0, 1]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert detect_gpus() == []


def test_slot_envs_share_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)  # e.g. under `taskset -c 3`
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert slot_envs(1, [])[0]["OMP_NUM_THREADS"] == "1"
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert [env["OMP_NUM_THREADS"] for env in slot_envs(2, [])] == ["2", "2"]


def test_slot_envs_share_threads_or_gpus():
    assert slot_envs(2, [], cpus=8)[1] == {"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}
    envs = slot_envs(2, [0, 1, 2, 3], cpus=8)
    assert [env["CUDA_VISIBLE_DEVICES"] for env in envs] == ["0,1", "2,3"]
    with pytest.raises(ValueError, match="jobs: invalid value 0"):
        slot_envs(0, [])


def test_failing_run_is_isolated_and_dependants_blocked(tmp_path, fake_env, fake_prefix, monkeypatch, capsys):
    plan = make_plan(tmp_path)
    monkeypatch.setenv("FAKE_FIT_FAIL", "runs/balanced/fp32")
    states = run_plan(plan, fake_prefix, jobs=1, gpus=[], echo=lambda _: None)
    assert states["balanced/fp32/seed0"] == "failed"
    assert states["balanced/prune/seed0"] == states["balanced/kd/seed0"] == "blocked"
    assert {states[f"exponential-r100/{m}/seed0"] for m in ("fp32", "prune", "kd")} == {"done"}
    status = read_status(plan.by_id()["balanced/fp32/seed0"].dir)
    assert status["returncode"] == 3 and "boom: simulated failure" in status["log_tail"]
    assert "dependency failed" in read_status(plan.by_id()["balanced/kd/seed0"].dir)["error"]
    assert main(["status", plan.out_dir]) == 0
    out = capsys.readouterr().out
    assert "done 3, running 0, failed 1, blocked 2, pending 0" in out and "exit code 3" in out


def test_killed_run_resumes_and_finished_runs_are_kept(tmp_path, fake_env, fake_prefix, monkeypatch):
    plan = make_plan(tmp_path)
    monkeypatch.setenv("FAKE_FIT_DIE", "runs/exponential-r100/prune")
    first = run_plan(plan, fake_prefix, jobs=1, gpus=[], echo=lambda _: None)
    dead = plan.by_id()["exponential-r100/prune/seed0"]
    assert first[dead.id] == "failed" and read_status(dead.dir)["returncode"] == -signal.SIGKILL
    assert (Path(dead.dir) / "checkpoints" / "last.ckpt").exists()
    before = snapshot(plan)
    assert len(before) == 5
    monkeypatch.delenv("FAKE_FIT_DIE")
    second = run_plan(plan, fake_prefix, jobs=2, gpus=[], echo=lambda _: None)
    assert set(second.values()) == {"done"}
    calls = fake_env()[6:]
    assert [call["run_dir"] for call in calls] == [dead.dir]
    assert calls[0]["resume"] == str(Path(dead.dir) / "checkpoints" / "last.ckpt")
    after = snapshot(plan)
    assert all(after[run_id] == before[run_id] for run_id in before)
    log = (Path(dead.dir) / "run.log").read_text()
    assert "attempt 1" in log and "attempt 2" in log and "(resume)" in log


def test_killed_study_continues_with_the_same_command(tmp_path, fake_env, fake_prefix):
    path, out, proc = start_hanging_study(tmp_path, fake_prefix, "exponential-r100/fp32")
    plan = load_plan(out)
    assert plan_states(plan)["exponential-r100/fp32/seed0"] == "running"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    states = plan_states(plan)
    assert states["exponential-r100/fp32/seed0"] == "pending"
    before = snapshot(plan)
    assert main(["run", str(path), "--out", str(out), "--command", " ".join(fake_prefix)]) == 0
    assert set(plan_states(plan).values()) == {"done"}
    resumed = [c for c in fake_env() if c["run_dir"].endswith("exponential-r100/fp32/seed0")]
    assert len(resumed) == 2 and resumed[1]["resume"] is not None
    counts = {}
    for call in fake_env():
        counts[call["run_dir"]] = counts.get(call["run_dir"], 0) + 1
    assert sorted(counts.values()) == [1, 1, 1, 1, 1, 2]
    invocations = (out / "invocations.log").read_text().splitlines()
    assert len(invocations) == 2 and all("imbcompress study run " in line for line in invocations)
    assert all(snapshot(plan)[run_id] == before[run_id] for run_id in before)


def test_lock_refuses_a_second_study_run(tmp_path, fake_env, fake_prefix, capsys):
    path = write_study(tmp_path)
    out = tmp_path / "out"
    with StudyLock(out):
        code = main(["run", str(path), "--out", str(out), "--command", " ".join(fake_prefix)])
    assert code == 2 and "another `study run` is using" in capsys.readouterr().err
    assert fake_env() == [] and not (out / "plan.json").exists() and not (out / "invocations.log").exists()


def test_finished_run_is_never_started_again(tmp_path, fake_env, fake_prefix):
    plan = make_plan(tmp_path)
    run = plan.runs[0]
    Path(run.dir).mkdir(parents=True)
    (Path(run.dir) / "metrics.json").write_text(json.dumps({"test": {"macro_f1": 0.5}}))
    with pytest.raises(RuntimeError, match="refusing to start it again"):
        launch(run, fake_prefix)
    (Path(run.dir) / "metrics.json").write_text('{"test": {"macro_f1": 0.5')  # torn file: not finished
    assert plan_states(plan)[run.id] == "pending"


def test_local_dry_run_starts_nothing(tmp_path, fake_env, fake_prefix, capsys):
    path = write_study(tmp_path)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--dry-run", "--command", " ".join(fake_prefix)]) == 0
    printed = capsys.readouterr().out
    assert "exponential-r100/kd/seed0:  # after exponential-r100/fp32/seed0" in printed
    assert not out.exists() and fake_env() == []


def test_missing_command_fails_runs_without_stopping_the_study(tmp_path, fake_env):
    plan = make_plan(tmp_path)
    states = run_plan(plan, [str(tmp_path / "no-such-command")], jobs=1, gpus=[], echo=lambda _: None)
    assert states["balanced/fp32/seed0"] == "failed" and states["balanced/kd/seed0"] == "blocked"
    assert "could not start" in read_status(plan.by_id()["exponential-r100/fp32/seed0"].dir)["error"]


def test_sigterm_stops_the_study_and_its_runs(tmp_path, fake_env, fake_prefix):
    path, out, proc = start_hanging_study(tmp_path, fake_prefix, "balanced/fp32")
    time.sleep(0.5)  # the attempt has now lasted at least 0.5 s
    proc.send_signal(signal.SIGTERM)  # only the study process: it must stop its child itself
    assert proc.wait(timeout=30) == 143
    status = read_status(out / "runs" / "balanced" / "fp32" / "seed0")
    assert status["state"] == "interrupted"
    assert status["total_s"] == status["duration_s"] >= 0.5  # the interrupted attempt's time is counted
    with pytest.raises(ProcessLookupError):
        os.kill(status["pid"], 0)
    assert plan_states(load_plan(out))["balanced/fp32/seed0"] == "pending"


def test_time_of_an_attempt_lost_with_the_study_is_counted(tmp_path, fake_env, fake_prefix):
    """A run still marked ``running`` died unrecorded: its start-to-last-write time goes into ``total_s``."""
    plan = make_plan(tmp_path)
    run = plan.by_id()["balanced/fp32/seed0"]
    Path(run.dir).mkdir(parents=True)
    started = time.time() - 1000
    update_status(run.dir, state="running", started=datetime.fromtimestamp(started, UTC).isoformat(), total_s=10.0)
    log = Path(run.dir) / "run.log"
    log.write_text("epoch 3\n")
    os.utime(log, (started + 75, started + 75))
    assert lost_attempt_seconds(run.dir, read_status(run.dir)) == 75.0
    assert lost_attempt_seconds(run.dir, {**read_status(run.dir), "state": "interrupted"}) == 0.0
    proc = launch(run, fake_prefix)
    assert read_status(run.dir)["total_s"] == 85.0
    assert proc.wait(timeout=60) == 0


def test_only_runs_the_matching_runs_and_what_they_start_from(tmp_path, fake_env, fake_prefix, capsys):
    path, out = write_study(tmp_path, seeds=[0, 1]), tmp_path / "out"
    command = ["run", str(path), "--out", str(out), "--command", " ".join(fake_prefix)]
    assert main([*command, "--only", "exponential-r100/prune/seed1", "balanced/fp32/*"]) == 0
    ran = sorted(Path(call["run_dir"]).relative_to(out / "runs").as_posix() for call in fake_env())
    assert ran == ["balanced/fp32/seed0", "balanced/fp32/seed1", "exponential-r100/fp32/seed1",
                   "exponential-r100/prune/seed1"]  # fmt: skip
    assert "--only: 4 run(s) of the study's 12 (--only, with the runs they start from) finished: done 4" in (
        capsys.readouterr().out
    )
    plan = load_plan(out)
    assert len(plan.runs) == 12  # the whole study is recorded, not the selection
    states = plan_states(plan)
    assert sorted(rid for rid, state in states.items() if state == "done") == ran
    assert main(command) == 0 and len(fake_env()) == 12  # a plain run then does the other 8, not the 4 again


def test_only_refuses_an_unmatched_pattern_and_slurm_before_anything_is_written(tmp_path, fake_env, capsys):
    path, out = write_study(tmp_path), tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--only", "exponential/*"]) == 2
    assert "--only 'exponential/*': matches no run of study 'tiny'" in capsys.readouterr().err
    assert main(["run", str(path), "--out", str(out), "--only", "*", "--executor", "slurm"]) == 2
    assert "--only works with the local executor" in capsys.readouterr().err
    assert not out.exists() and fake_env() == []
