"""Several runs at once per GPU (or on the CPU), with each run's peak memory and time recorded."""

import json
import os
from pathlib import Path

from imbcompress.study import usage
from imbcompress.study.cli import main
from imbcompress.study.plan import load_plan
from imbcompress.study.scheduler import run_plan
from imbcompress.study.state import read_status

from .conftest import write_study
from .test_runner import make_plan


def fake_nvidia_smi(tmp_path: Path, monkeypatch) -> Path:
    """An nvidia-smi on PATH that lists the GPU processes the fake fits announce in ``smi/``."""
    smi_dir = tmp_path / "smi"
    smi_dir.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncat {smi_dir}/* 2>/dev/null\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SMI_DIR", str(smi_dir))
    return smi_dir


def test_runs_per_gpu_packs_runs_and_records_peak_memory(tmp_path, fake_env, fake_prefix, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch)
    monkeypatch.setattr(usage, "GPU_SAMPLE_SECONDS", 0.05)
    monkeypatch.setenv("FAKE_FIT_SECONDS", "1.0")
    plan = make_plan(tmp_path, methods={"a": {}, "b": {}}, imbalance=[], reference="a")  # 2 independent runs
    states = run_plan(plan, fake_prefix, jobs=2, gpus=[3], echo=lambda _: None)  # 2 runs packed on GPU 3
    assert set(states.values()) == {"done"}
    statuses = [read_status(run.dir) for run in plan.runs]
    assert {s["cuda_visible_devices"] for s in statuses} == {"3"} and {s["slot"] for s in statuses} == {0, 1}
    assert all(s["peak_gpu_mib"] == 300.0 and s["peak_rss_mib"] > 1 and s["duration_s"] >= 1.0 for s in statuses)
    starts = sorted(s["started"] for s in statuses)
    ends = sorted(s["ended"] for s in statuses)
    assert starts[1] <= ends[0]  # both ran at the same time


def test_runs_per_gpu_on_the_cpu_runs_n_at_once(tmp_path, fake_env, fake_prefix, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    path = write_study(tmp_path)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--runs-per-gpu", "2", "--command", " ".join(fake_prefix)]) == 0
    assert {call["omp"] for call in fake_env()} == {str(max(1, (os.cpu_count() or 1) // 2))}
    statuses = [read_status(run.dir) for run in load_plan(out).runs]
    assert {s["slot"] for s in statuses} == {0, 1} and all(s["peak_rss_mib"] > 1 for s in statuses)
    assert all(s.get("peak_gpu_mib") is None for s in statuses)


def test_jobs_and_runs_per_gpu_are_exclusive(tmp_path, capsys):
    path = write_study(tmp_path)
    assert main(["run", str(path), "--jobs", "2", "--runs-per-gpu", "2", "--dry-run"]) == 2
    assert "give one of them" in capsys.readouterr().err
    assert main(["run", str(path), "--runs-per-gpu", "0", "--dry-run"]) == 2


def test_gpu_query_sums_a_group_and_ignores_foreign_and_bad_lines(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    lines = ["999999999, 80", "not a line", "", f"{os.getpid()}, 42", f"{os.getpid()}, 8"]  # 999999999: no such pid
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\n" + "".join(f"echo '{line}'\n" for line in lines))
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert usage.gpu_memory_by_group() == {os.getpgid(0): 50.0}


def test_status_json_is_plain(tmp_path, fake_env, fake_prefix):
    plan = make_plan(tmp_path)
    run_plan(plan, fake_prefix, jobs=1, gpus=[], echo=lambda _: None)
    status = json.loads((Path(plan.runs[0].dir) / "run_status.json").read_text())
    assert isinstance(status["peak_rss_mib"], float) and status["cuda_visible_devices"] is None
