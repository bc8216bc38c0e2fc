"""Post-hoc remedies in a study: their runs test the cross-entropy runs' checkpoints instead of training again."""

import csv
import json
from pathlib import Path

from imbcompress.study.attempt import prepare_run
from imbcompress.study.cli import main
from imbcompress.study.plan import expand, left_out, load_plan
from imbcompress.study.remedies import is_posthoc
from imbcompress.study.spec import load_study
from imbcompress.study.state import plan_states

from .conftest import write_study

REPO = Path(__file__).resolve().parents[2]
POSTHOC_LA = str(REPO / "configs" / "remedies" / "posthoc_logit_adjustment.yaml")
TAU_NORM = str(REPO / "configs" / "remedies" / "posthoc_tau_norm.yaml")
LDAM = str(REPO / "configs" / "remedies" / "ldam_drw.yaml")
POSTHOC = {"class_path": "imbcompress.callbacks.PostHocAdjustment", "init_args": {"method": "tau_norm", "tau": 1.0}}
PTQ = {"ptq": {"calibration_size": 20}, "init_from": "fp32"}


def test_only_remedies_that_adjust_at_test_are_post_hoc(tmp_path):
    assert is_posthoc((POSTHOC_LA,), (), None) and is_posthoc((TAU_NORM,), (), None)
    assert is_posthoc((), (POSTHOC,), None) and is_posthoc((POSTHOC_LA,), (POSTHOC,), None)
    assert not is_posthoc((POSTHOC_LA,), (), "class_balanced")  # a sampler changes training
    assert not is_posthoc((POSTHOC_LA, LDAM), (), None)  # a loss remedy trains: the fit tests with both
    loss = {"class_path": "imbcompress.callbacks.LogitAdjustedLoss", "init_args": {"tau": 1.0}}
    assert not is_posthoc((), (POSTHOC, loss), None)
    head = tmp_path / "head.yaml"
    head.write_text(f"model: {{init_args: {{classifier: cosine}}}}\ntrainer: {{callbacks+: [{json.dumps(POSTHOC)}]}}\n")
    assert not is_posthoc((str(head),), (), None)  # a classifier setting changes the model that is trained
    replace = tmp_path / "replace.yaml"
    replace.write_text(f"trainer: {{callbacks: [{json.dumps(POSTHOC)}]}}\n")
    assert not is_posthoc((str(replace),), (), None)  # replaces the method's callbacks: refused by the remedy check
    assert not is_posthoc((), (), None) and not is_posthoc((str(tmp_path / "missing.yaml"),), (), None)


def test_a_post_hoc_remedy_tests_the_cross_entropy_checkpoint_of_each_method(tmp_path):
    remedies = {"la": {"fragments": [POSTHOC_LA]}, "tn": {"callbacks": [POSTHOC]}, "ldam": {"fragments": [LDAM]}}
    study = load_study(write_study(tmp_path, remedies=remedies))
    assert study.remedies["la"].posthoc and study.remedies["tn"].posthoc and not study.remedies["ldam"].posthoc
    plan = expand(study, tmp_path / "out")
    runs = plan.by_id()
    assert len(runs) == 2 * 3 * 4  # every method has runs under every remedy
    run, parent = runs["exponential-r100/prune@la/seed0"], Path(runs["exponential-r100/prune/seed0"].dir)
    assert (run.kind, run.deps, run.method, run.remedy) == ("test", ["exponential-r100/prune/seed0"], "prune", "la")
    assert run.command(["imbc"], resume=True) == [
        "imbc", "test", "--config", str(parent / "config.yaml"), "--config", POSTHOC_LA,
        "--ckpt_path", str(parent / "checkpoints/last.ckpt"), "--run_dir", run.dir,
    ]  # fmt: skip
    assert list(run.config_sha256) == [POSTHOC_LA]  # the parent's config.yaml does not exist before its fit
    inline = runs["balanced/kd@tn/seed0"]
    assert inline.deps == ["balanced/kd/seed0"] and inline.callbacks == [POSTHOC]  # via the generated fragment
    assert inline.command(["imbc"])[-5] == str(Path(inline.dir) / "study_fragment.yaml")
    assert runs["balanced/kd@ldam/seed0"].kind == "fit"  # a loss remedy trains its models
    assert plan.remedies["la"]["posthoc"] is True and plan.remedies["ldam"]["posthoc"] is False
    position = {r.id: i for i, r in enumerate(plan.runs)}
    assert all(position[dep] < position[r.id] for r in plan.runs for dep in r.deps)


def test_a_post_hoc_remedy_leaves_out_ptq_methods_and_says_so(tmp_path):
    methods = {"fp32": {}, "ptq_int8": PTQ}
    study = load_study(write_study(tmp_path, methods=methods, remedies={"la": {"fragments": [POSTHOC_LA]}}))
    ids = set(expand(study, tmp_path / "out").by_id())
    assert "balanced/ptq_int8/seed0" in ids and "balanced/fp32@la/seed0" in ids
    assert not any(rid.startswith(("balanced/ptq_int8@", "exponential-r100/ptq_int8@")) for rid in ids)
    assert left_out(study) == [
        "ptq_int8@la: no runs (remedy 'la' is post-hoc, applied by `imbcompress test` to a checkpoint, and PTQ "
        "method 'ptq_int8' writes an int8 ONNX model, not a checkpoint)"
    ]


def test_an_interrupted_post_hoc_run_starts_again_in_its_own_directory(tmp_path):
    plan = expand(load_study(write_study(tmp_path, remedies={"la": {"fragments": [POSTHOC_LA]}})), tmp_path / "out")
    run = plan.by_id()["balanced/fp32@la/seed0"]
    folder = Path(run.dir)
    (folder / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "hparams.yaml", "events.out.tfevents.1.vm.2.0", "run.log", "run_status.json"):
        (folder / name).write_text("left by an interrupted attempt")
    prepare_run(run)
    assert sorted(p.name for p in folder.iterdir()) == ["run.log", "run_status.json"]  # the study's own files stay
    fit = plan.by_id()["balanced/fp32/seed0"]
    (Path(fit.dir) / "checkpoints").mkdir(parents=True)
    prepare_run(fit)
    assert (Path(fit.dir) / "checkpoints").is_dir()  # a fit resumes from its checkpoint: nothing is removed


def test_post_hoc_runs_go_through_the_runner_into_the_recovery_table(tmp_path, fake_env, fake_prefix, capsys):
    out = tmp_path / "out"
    methods = {"fp32": {}, "prune": {"fragments": ["frags/prune.yaml"], "init_from": "fp32"}, "ptq_int8": PTQ}
    path = write_study(tmp_path, methods=methods, remedies={"la": {"fragments": [POSTHOC_LA], "label": "post-hoc LA"}})
    assert main(["run", str(path), "--out", str(out), "--command", " ".join(fake_prefix)]) == 0
    assert "ptq_int8@la: no runs" in capsys.readouterr().out
    calls = {Path(c["run_dir"]).relative_to(out / "runs").as_posix(): c["argv"] for c in fake_env()}
    assert len(calls) == 2 * 5  # 2 variants x (3 cross-entropy runs + 2 post-hoc tests); nothing trained twice
    assert [argv[0] for rid, argv in calls.items() if "@la" in rid] == ["test"] * 4
    assert set(plan_states(load_plan(out)).values()) == {"done"}
    for run in load_plan(out).runs:  # the fits' commit, and another for the tests: their weights are the fits'
        metrics = json.loads((Path(run.dir) / "metrics.json").read_text())
        metrics["code"] = {"commit": ("b" if run.kind == "test" else "a") * 40, "dirty": False}
        (Path(run.dir) / "metrics.json").write_text(json.dumps(metrics))
    assert main(["report", str(out)]) == 0
    with open(out / "report" / "recovery_exponential-r100.csv") as handle:
        rows = {(row["method"], row["remedy"]): row for row in csv.DictReader(handle)}
    assert rows[("prune", "post-hoc LA")]["Δ macro-F1"] == "+3.0"  # the fake test: 0.03 above the tested fit
    assert rows[("ptq_int8", "post-hoc LA")]["macro-F1"] == "–"  # no runs
    report = (out / "report" / "report.md").read_text()
    assert "- Post-hoc remedies (`la`) train nothing" in report
    assert "imbcompress code of the runs (their metrics.json" in report and "commit aaaaaaaaaaaa (10 runs)" in report
    assert "bbbbbbbb" not in report  # a test run was trained by the fit whose checkpoint it tested
