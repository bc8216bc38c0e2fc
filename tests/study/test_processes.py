"""A run's fit dies with its study process, and a run directory is locked by the fit that uses it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imbcompress.locks import RUN_LOCK_FILE, LockHeld, hold_run_dir_lock, holder
from imbcompress.study import attempt
from imbcompress.study.scheduler import run_plan
from imbcompress.study.state import read_status

from .test_runner import REPO, make_plan, start_hanging_study

HOLD_LOCK = "import sys, time; from imbcompress.locks import hold_run_dir_lock; hold_run_dir_lock(sys.argv[1]); "
HOLD_LOCK += "print('held', flush=True); time.sleep(60)"


def gone(pid: int) -> bool:
    """Whether a process has ended (a zombie nobody reaped counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (FileNotFoundError, ProcessLookupError):
        return True


def hold_in_another_process(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)], stdout=subprocess.PIPE, env=env, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_killing_only_the_study_process_ends_its_fit(tmp_path, fake_env, fake_prefix):
    _, out, proc = start_hanging_study(tmp_path, fake_prefix, "balanced/fp32")
    run_dir = out / "runs" / "balanced" / "fp32" / "seed0"
    fit_pid = read_status(run_dir)["pid"]
    assert holder(run_dir / RUN_LOCK_FILE) is not None  # the fit holds its directory
    os.kill(proc.pid, signal.SIGKILL)  # the study process alone, not its group
    proc.wait()
    deadline = time.monotonic() + 20
    while not gone(fit_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone(fit_pid)
    assert holder(run_dir / RUN_LOCK_FILE) is None


def test_fit_in_its_own_process_group(tmp_path, fake_env, fake_prefix):
    plan = make_plan(tmp_path)
    proc = attempt.launch(plan.runs[0], fake_prefix)
    assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)
    assert proc.wait(timeout=60) == 0


def test_second_fit_on_a_locked_run_directory_fails_at_once(tmp_path):
    run_dir = tmp_path / "run"
    other = hold_in_another_process(run_dir)
    try:
        with pytest.raises(LockHeld, match=rf"run directory {run_dir} is in use by another fit .*pid {other.pid}"):
            hold_run_dir_lock(run_dir)
        from imbcompress.cli import run_cli

        configs = [f"--config={REPO / 'configs' / name}" for name in ("trainer/cpu.yaml", "model/resnet20.yaml")]
        with pytest.raises(LockHeld, match=f"pid {other.pid}"):
            run_cli(["fit", *configs, "--config", str(REPO / "configs/data/cifar10.yaml"), f"--run_dir={run_dir}"])
        assert sorted(p.name for p in run_dir.iterdir()) == [RUN_LOCK_FILE]  # nothing written
    finally:
        other.kill()
        other.wait()


def test_study_does_not_start_a_second_fit_in_a_busy_directory(tmp_path, fake_env, fake_prefix, monkeypatch):
    plan = make_plan(tmp_path)
    busy = plan.by_id()["balanced/fp32/seed0"]
    other = hold_in_another_process(Path(busy.dir))
    monkeypatch.setattr(attempt, "LOCK_WAIT_SECONDS", 0.5)
    try:
        states = run_plan(plan, fake_prefix, jobs=1, gpus=[], echo=lambda _: None)
    finally:
        other.kill()
        other.wait()
    assert states[busy.id] == "failed" and states["balanced/kd/seed0"] == "blocked"
    assert f"pid {other.pid}" in read_status(busy.dir)["error"]
    assert busy.dir not in [call["run_dir"] for call in fake_env()]
    assert states["exponential-r100/kd/seed0"] == "done"


def test_corrupt_checkpoint_is_named_and_restarted_only_when_asked(tmp_path, fake_env, fake_prefix, monkeypatch):
    plan = make_plan(tmp_path)
    monkeypatch.setenv("FAKE_FIT_DIE", "runs/balanced/fp32")
    run_plan(plan, fake_prefix, jobs=1, gpus=[], echo=lambda _: None)
    monkeypatch.delenv("FAKE_FIT_DIE")
    run = plan.by_id()["balanced/fp32/seed0"]
    ckpt = Path(run.dir) / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:-30])  # truncated, as by a full disk
    calls = len(fake_env())
    states = run_plan(plan, fake_prefix, jobs=1, gpus=[], echo=lambda _: None)
    assert states[run.id] == "failed" and len(fake_env()) == calls  # refused before launching
    error = read_status(run.dir)["error"]
    assert f"checkpoint {ckpt} is corrupt" in error and "--restart-corrupt" in error
    corrupt = ckpt.read_bytes()
    lines = []
    states = run_plan(plan, fake_prefix, jobs=1, gpus=[], echo=lines.append, restart_corrupt=True)
    assert set(states.values()) == {"done"}
    assert (ckpt.parent / "last.ckpt.corrupt-1").read_bytes() == corrupt  # kept aside, not deleted
    assert fake_env()[calls]["run_dir"] == run.dir and fake_env()[calls]["resume"] is None  # from scratch
    assert any("restart (corrupt checkpoints/last.ckpt moved to last.ckpt.corrupt-1" in line for line in lines)


def test_run_dir_lock_is_released_when_the_in_process_fit_ends(tmp_path):
    from imbcompress.cli import run_cli
    from imbcompress.locks import release_run_dir_locks

    run_dir = tmp_path / "run"
    hold_run_dir_lock(run_dir)
    assert holder(run_dir / RUN_LOCK_FILE) is not None
    release_run_dir_locks()
    assert holder(run_dir / RUN_LOCK_FILE) is None
    configs = [f"--config={REPO / 'configs' / name}" for name in ("trainer/cpu.yaml", "model/resnet20.yaml")]
    configs += [f"--config={REPO / 'configs/data/cifar10.yaml'}", f"--data.init_args.root={tmp_path / 'none'}"]
    with pytest.raises(Exception, match="none"):  # the fit locks its directory, then fails: no data there
        run_cli(["fit", *configs, f"--run_dir={run_dir}", "--trainer.enable_progress_bar=false"])
    assert holder(run_dir / RUN_LOCK_FILE) is None  # handed back for the next fit, even in this process
