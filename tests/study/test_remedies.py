"""The remedies axis: expansion (ids, parents with the same remedy, plan.json), bad entries, re-running a change."""

import json
from pathlib import Path

import pytest

from imbcompress.study.cli import main
from imbcompress.study.plan import GENERATED_FRAGMENT, expand, load_plan, save_plan
from imbcompress.study.remedy_check import remedy_problems
from imbcompress.study.spec import KD_CLASS_PATH, load_study

from .conftest import write_study

REPO = Path(__file__).resolve().parents[2]
LA = "imbcompress.callbacks.LogitAdjustedLoss"
LDAM_FRAGMENT = str(REPO / "configs" / "remedies" / "ldam_drw.yaml")


def la(tau: float = 1.0) -> dict:
    return {"callbacks": [{"class_path": LA, "init_args": {"tau": tau}}], "label": "LA"}


def remedies(tau: float = 1.0) -> dict:
    deferred = {"sampler": "deferred", "sampler_switch_epoch": 3}
    return {"ldam": {"fragments": [LDAM_FRAGMENT]}, "la": la(tau), "cbs": deferred}


def test_remedies_expand_with_parents_under_the_same_remedy(tmp_path):
    plan = expand(load_study(write_study(tmp_path, remedies=remedies())), tmp_path / "out")
    runs = plan.by_id()
    assert len(runs) == 2 * 3 * 4  # variants x methods x (ce + 3 remedies), one seed
    assert list(plan.remedies) == ["ce", "ldam", "la", "cbs"]  # ce is added first
    assert "exponential-r100/prune/seed0" in runs  # ce runs keep the ids of a study without remedies
    prune = runs["exponential-r100/prune@ldam/seed0"]
    assert prune.remedy == "ldam" and prune.method == "prune" and prune.config == "prune@ldam"
    assert prune.dir == str(tmp_path.resolve() / "out/runs/exponential-r100/prune@ldam/seed0")
    assert prune.deps == ["exponential-r100/fp32@ldam/seed0"]
    parent_ckpt = str(Path(runs["exponential-r100/fp32@ldam/seed0"].dir) / "checkpoints" / "last.ckpt")
    command = prune.command(["imbc"])
    assert command[command.index("--model.init_args.init_from") + 1] == parent_ckpt
    assert prune.configs[-2:] == [str(tmp_path.resolve() / "frags/prune.yaml"), LDAM_FRAGMENT]  # after the method's
    assert LDAM_FRAGMENT in prune.config_sha256
    kd = runs["balanced/kd@la/seed0"]
    assert kd.deps == ["balanced/fp32@la/seed0"]
    assert [cb["class_path"] for cb in kd.callbacks] == [KD_CLASS_PATH, LA]  # teacher: FP32 with the same remedy
    assert kd.callbacks[0]["init_args"]["teacher_checkpoint"].endswith("balanced/fp32@la/seed0/checkpoints/last.ckpt")
    assert str(Path(kd.dir) / GENERATED_FRAGMENT) in kd.command(["imbc"])
    sampled = runs["balanced/fp32@cbs/seed0"]
    sampler_args = [arg for arg in sampled.args if "sampler" in arg]
    assert sampler_args == ["--data.init_args.sampler=deferred", "--data.init_args.sampler_switch_epoch=3"]
    assert runs["balanced/fp32/seed0"].callbacks == [] and not runs["balanced/fp32/seed0"].deps
    position = {run.id: i for i, run in enumerate(plan.runs)}
    assert all(position[dep] < position[run.id] for run in plan.runs for dep in run.deps)


def test_plan_json_says_what_each_remedy_applies(tmp_path):
    plan = expand(load_study(write_study(tmp_path, remedies=remedies())), tmp_path / "out")
    save_plan(plan)
    saved = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert saved["remedies"]["ce"]["label"] == "cross-entropy"
    assert saved["remedies"]["la"]["callbacks"] == [{"class_path": LA, "init_args": {"tau": 1.0}}]
    assert saved["remedies"]["ldam"]["fragments"] == [LDAM_FRAGMENT]
    run = next(r for r in saved["runs"] if r["id"] == "balanced/prune@cbs/seed0")
    assert (run["method"], run["remedy"], run["kind"]) == ("prune", "cbs", "fit")
    reloaded = load_plan(tmp_path / "out").by_id()["balanced/prune@cbs/seed0"]
    assert reloaded.remedy == "cbs" and reloaded.command(["imbc"]) == plan.by_id()[run["id"]].command(["imbc"])


BAD_REMEDIES = [
    ({"ce": {"fragments": [LDAM_FRAGMENT]}}, "remedies.ce.fragments: 'ce' is the plain cross-entropy baseline"),
    ({"nothing": {}}, "remedies.nothing: applies no remedy (give fragments, callbacks or sampler)"),
    ({"la": {"tau": 1.0}}, "remedies.la: unknown key 'tau' (allowed: fragments, callbacks, sampler"),
    ({"x": {"sampler_switch_epoch": 3}}, "remedies.x.sampler_switch_epoch: only allowed together with 'sampler'"),
    ({"x": {"sampler": "deferred", "sampler_switch_epoch": 0}}, "sampler_switch_epoch: invalid value 0"),
    ({"x": {"fragments": ["nope.yaml"]}}, "remedies.x.fragments: fragment file 'nope.yaml' not found"),
    ({"la@2": la()}, "remedies: invalid remedy name 'la@2'"),
    ({"x": {"callbacks": [LA]}}, "remedies.x.callbacks: expected a list of {class_path, init_args} mappings"),
    ([LA], "remedies: expected a non-empty mapping of remedy name -> settings"),
]


@pytest.mark.parametrize(("value", "message"), BAD_REMEDIES)
def test_bad_remedy_entries_are_rejected_naming_the_key(tmp_path, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("{", r"\{")):
        load_study(write_study(tmp_path, remedies=value))


def callback(class_path: str, **init_args) -> dict:
    return {"class_path": class_path, "init_args": init_args}


def test_remedy_settings_classes_and_conflicts_are_checked_before_any_run(tmp_path):
    (tmp_path / "frags").mkdir()
    (tmp_path / "frags" / "epochs.yaml").write_text("trainer: {max_epochs: 3}\ndata: {class_path: x.Y}\n")
    (tmp_path / "frags" / "head.yaml").write_text("model: {init_args: {classifier: norm}}\n")
    (tmp_path / "frags" / "arch.yaml").write_text("model: {init_args: {arch: resnet56, classifier: cosine}}\n")
    (tmp_path / "frags" / "replace.yaml").write_text(f"trainer: {{callbacks: [{{class_path: {LA}}}]}}\n")
    entries = {
        "typo": {"callbacks": [callback("imbcompress.callbacks.LogitAdjustLoss")]},
        "pruning": {"callbacks": [callback("imbcompress.callbacks.FilterPruning", preset="severe")]},
        "negative": la(tau=-1.0),
        "two": {"fragments": [LDAM_FRAGMENT], "callbacks": [callback(LA)]},
        "sampler": {"sampler": "balanced"},
        "deferred": {"sampler": "deferred"},
        "extra": {"fragments": ["frags/epochs.yaml"]},
        "head": {"fragments": ["frags/head.yaml"]},
        "arch": {"fragments": ["frags/arch.yaml"]},
        "replace": {"fragments": ["frags/replace.yaml"]},
        "good": {"fragments": [LDAM_FRAGMENT], "sampler": "square_root"},
    }
    plan = expand(load_study(write_study(tmp_path, remedies=entries)), tmp_path / "out")
    problems = remedy_problems(plan.remedies)
    assert len(problems) == 10 and not any(p.startswith("remedies.good") for p in problems)  # good: a cosine head
    by_name = {p.split(":")[0]: p for p in problems}
    allowed = "allowed: imbcompress.callbacks.ClassBalancedLoss, imbcompress.callbacks.FocalLoss"
    assert "'imbcompress.callbacks.LogitAdjustLoss' cannot be imported (" + allowed in by_name["remedies.typo"]
    assert "'imbcompress.callbacks.FilterPruning' is not a remedy callback" in by_name["remedies.pruning"]
    assert "LogitAdjustedLoss.tau must be a number >= 0, got -1.0" in by_name["remedies.negative"]
    assert "LDAMDRWLoss (loss remedy 'ldam_drw') and LogitAdjustedLoss" in by_name["remedies.two"]
    assert "sampler must be one of ['instance_balanced', 'class_balanced'" in by_name["remedies.sampler"]
    assert "sampler='deferred' needs sampler_switch_epoch" in by_name["remedies.deferred"]
    assert "sets trainer.max_epochs, data.class_path; a remedy fragment may only append" in by_name["remedies.extra"]
    assert "model.init_args.classifier='norm'; allowed: linear, cosine" in by_name["remedies.head"]
    assert "sets model.init_args.arch; a remedy fragment may only" in by_name["remedies.arch"]
    replace = "sets trainer.callbacks, which replaces the run's callbacks (the method's compression callbacks included)"
    assert replace in by_name["remedies.replace"] and "with trainer.callbacks+" in by_name["remedies.replace"]


def test_an_invalid_remedy_stops_study_run_before_anything_is_written(tmp_path, fake_env, capsys):
    path = write_study(tmp_path, remedies={"negative": la(tau=-1.0)})
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 2  # the default command: python -m imbcompress
    err = capsys.readouterr().err
    assert "some remedies of the study are invalid (nothing was started)" in err
    assert "remedies.negative: LogitAdjustedLoss.tau must be a number >= 0, got -1.0" in err
    assert not out.exists() and fake_env() == []


def test_a_remedy_change_is_a_definition_change(tmp_path, fake_env, fake_prefix, capsys):
    out = tmp_path / "out"

    def run(tau: float, *extra: str) -> int:
        path = write_study(tmp_path, remedies={"la": la(tau)})
        return main(["run", str(path), "--out", str(out), "--command", " ".join(fake_prefix), *extra])

    assert run(1.0) == 0
    assert len(fake_env()) == 12
    assert run(1.5) == 2
    err = capsys.readouterr().err
    assert "changes the definition of 6 run(s)" in err and "6 run(s): balanced/fp32@la/seed0" in err
    assert f"inline callbacks: -{{'class_path': '{LA}', 'init_args': {{'tau': 1.0}}}} +{{" in err
    assert run(1.5, "--rerun-changed") == 0
    redone = sorted(Path(c["run_dir"]).relative_to(out / "runs").as_posix() for c in fake_env()[12:])
    variants, changed = ("balanced", "exponential-r100"), ("fp32", "prune", "kd")
    assert redone == sorted(f"{v}/{m}@la/seed0" for v in variants for m in changed)
    assert (out / "replaced/1/runs/balanced/prune@la/seed0/metrics.json").is_file()
    assert not (out / "replaced/1/runs/balanced/prune").exists()  # the cross-entropy runs were not touched


def test_the_committed_remedies_study(tmp_path):
    plan = expand(load_study(REPO / "configs" / "studies" / "remedies_cpu.yaml"), tmp_path)
    assert list(plan.remedies) == ["ce", "ldam_drw", "logit_adjusted", "posthoc_la"]
    assert len(plan.runs) == 2 * 3 * 4 * 2
    assert [run.kind for run in plan.runs].count("test") == 2 * 3 * 2  # post-hoc LA: a test of each CE run
    assert plan.by_id()["balanced/prune_severe@posthoc_la/seed1"].deps == ["balanced/prune_severe/seed1"]
    qat = plan.by_id()["exponential-r100/qat_a3w3@logit_adjusted/seed1"]
    assert qat.deps == ["exponential-r100/fp32@logit_adjusted/seed1"]
    fragments = [str(REPO / "configs/compress/dorefa_a3w3.yaml"), str(REPO / "configs/remedies/logit_adjusted.yaml")]
    assert qat.configs[-2:] == fragments
