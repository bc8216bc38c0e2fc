"""Re-running a changed study: a changed run that already ran is refused, or redone with --rerun-changed."""

import json
from pathlib import Path

from imbcompress.study.cli import main
from imbcompress.study.plan import load_plan

from .conftest import write_study


def run_study(path: Path, out: Path, prefix: list[str], *extra: str) -> int:
    return main(["run", str(path), "--out", str(out), "--command", " ".join(prefix), *extra])


def test_changed_args_of_finished_runs_are_refused_and_nothing_is_rewritten(tmp_path, fake_env, fake_prefix, capsys):
    out = tmp_path / "out"
    assert run_study(write_study(tmp_path), out, fake_prefix) == 0
    plan_before, study_before = (out / "plan.json").read_bytes(), (out / "study.yaml").read_bytes()
    calls = len(fake_env())
    path = write_study(tmp_path, args=["--trainer.max_epochs=50"])
    assert run_study(path, out, fake_prefix) == 2
    err = capsys.readouterr().err
    assert "changes the definition of 6 run(s)" in err
    assert "-'--trainer.max_epochs=1' +'--trainer.max_epochs=50'" in err
    assert "--out NEW_DIR" in err and "--rerun-changed" in err
    assert (out / "plan.json").read_bytes() == plan_before and (out / "study.yaml").read_bytes() == study_before
    assert len(fake_env()) == calls
    assert len((out / "invocations.log").read_text().splitlines()) == 1


def test_unchanged_rerun_and_added_runs_still_work(tmp_path, fake_env, fake_prefix):
    out = tmp_path / "out"
    assert run_study(write_study(tmp_path), out, fake_prefix) == 0
    assert run_study(write_study(tmp_path), out, fake_prefix) == 0  # nothing to do
    assert len(fake_env()) == 6
    assert run_study(write_study(tmp_path, seeds=[0, 1]), out, fake_prefix) == 0  # new runs only
    assert len(fake_env()) == 12


def test_the_same_study_from_another_checkout_is_not_a_change(tmp_path, fake_env, fake_prefix, capsys):
    """The config files at other paths with the same contents (a moved repository, another worktree)."""
    out = tmp_path / "out"
    for name in ("one", "two", "three"):
        (tmp_path / name).mkdir()
    assert run_study(write_study(tmp_path / "one"), out, fake_prefix) == 0
    assert run_study(write_study(tmp_path / "two"), out, fake_prefix) == 0
    assert len(fake_env()) == 6  # nothing ran again
    assert str(tmp_path / "two" / "frags") in (out / "plan.json").read_text()  # the plan names the files it used now
    path = write_study(tmp_path / "three")
    (tmp_path / "three" / "frags" / "prune.yaml").write_text("trainer: {max_epochs: 9}\n")
    assert run_study(path, out, fake_prefix) == 2
    assert "changes the definition of 2 run(s)" in capsys.readouterr().err


def test_changed_fragment_content_counts_as_a_change(tmp_path, fake_env, fake_prefix, capsys):
    out = tmp_path / "out"
    path = write_study(tmp_path)
    assert run_study(path, out, fake_prefix) == 0
    (tmp_path / "frags" / "prune.yaml").write_text("trainer: {max_epochs: 9}\n")
    assert run_study(path, out, fake_prefix) == 2
    err = capsys.readouterr().err
    assert "prune.yaml has changed content" in err and "2 run(s): balanced/prune/seed0" in err


def test_rerun_changed_redoes_changed_runs_and_dependants_and_keeps_the_old_ones(tmp_path, fake_env, fake_prefix):
    out = tmp_path / "out"
    assert run_study(write_study(tmp_path), out, fake_prefix) == 0
    methods = {
        "fp32": {},
        "prune": {"fragments": ["frags/prune.yaml"], "init_from": "fp32", "args": ["--x=1"]},
        "kd": {"fragments": ["frags/quant.yaml"], "teacher": "fp32", "distill": {"alpha": 0.7, "temperature": 1}},
    }

    def redone(since: int) -> list[str]:
        return sorted(Path(c["run_dir"]).relative_to(out / "runs").as_posix() for c in fake_env()[since:])

    assert run_study(write_study(tmp_path, methods=methods), out, fake_prefix, "--rerun-changed") == 0
    assert redone(6) == ["balanced/prune/seed0", "exponential-r100/prune/seed0"]  # exactly the changed runs
    old_kd = (out / "runs/balanced/kd/seed0/metrics.json").read_bytes()
    methods["fp32"] = {"args": ["--trainer.max_epochs=3"]}
    assert run_study(write_study(tmp_path, methods=methods), out, fake_prefix, "--rerun-changed") == 0
    assert len(redone(8)) == 6  # fp32 changed: its dependants are redone too
    kept = out / "replaced" / "2"
    assert (kept / "runs/balanced/kd/seed0/metrics.json").read_bytes() == old_kd
    assert (out / "replaced" / "1" / "runs/balanced/prune/seed0/metrics.json").is_file()
    assert "--trainer.max_epochs=3" not in (kept / "plan.json").read_text()
    assert "--trainer.max_epochs=3" in load_plan(out).by_id()["balanced/fp32/seed0"].args
    assert json.loads((out / "runs/balanced/fp32/seed0/run_status.json").read_text())["attempt"] == 1
