"""Study files: grid expansion, dependency order, fragment resolution and the bad-file errors."""

from pathlib import Path

import pytest
import yaml

from imbcompress.study.cli import main
from imbcompress.study.plan import GENERATED_FRAGMENT, expand
from imbcompress.study.spec import KD_CLASS_PATH, load_study, parse_study

from .conftest import write_study

REPO = Path(__file__).resolve().parents[2]


def test_grid_expansion_ids_and_dependency_order(tmp_path):
    imbalance = [
        {"profile": "step", "ratio": [10, 100], "minority_classes": [2, 5]},
        {"profile": "exponential", "ratio": 100},
    ]
    study = load_study(write_study(tmp_path, imbalance=imbalance, seeds=[0, 1]))
    keys = [v.key for v in study.variants]
    assert keys == ["balanced", "step-r10-m2", "step-r10-m5", "step-r100-m2", "step-r100-m5", "exponential-r100"]
    plan = expand(study, tmp_path / "out")
    ids = [run.id for run in plan.runs]
    assert len(ids) == len(set(ids)) == 6 * 3 * 2
    position = {run_id: i for i, run_id in enumerate(ids)}
    for run in plan.runs:
        assert all(position[dep] < position[run.id] for dep in run.deps)
    kd = plan.by_id()["step-r100-m5/kd/seed1"]
    assert kd.deps == ["step-r100-m5/fp32/seed1"]
    both = load_study(write_study(tmp_path, methods={"fp32": {}, "s": {"init_from": "fp32", "teacher": "fp32"}}))
    assert expand(both, tmp_path / "o2").by_id()["balanced/s/seed0"].deps == ["balanced/fp32/seed0"]
    assert kd.dir == str(tmp_path.resolve() / "out" / "runs" / "step-r100-m5" / "kd" / "seed1")


def test_run_command_carries_variant_seed_and_dependencies(tmp_path):
    plan = expand(load_study(write_study(tmp_path)), tmp_path / "out")
    runs = plan.by_id()
    prune = runs["exponential-r100/prune/seed0"]
    cmd = prune.command(["imbc"])
    assert cmd[:2] == ["imbc", "fit"]
    assert str(tmp_path.resolve() / "frags" / "prune.yaml") in cmd
    for arg in (
        "--data.init_args.profile=exponential",
        "--data.init_args.imbalance_ratio=100",
        "--trainer.max_epochs=1",
    ):
        assert arg in cmd
    fp32_ckpt = str(Path(runs["exponential-r100/fp32/seed0"].dir) / "checkpoints" / "last.ckpt")
    assert cmd[cmd.index("--model.init_args.init_from") + 1] == fp32_ckpt
    assert cmd[cmd.index("--run_dir") + 1] == prune.dir
    assert "--ckpt_path" not in cmd and "--ckpt_path" in prune.command(["imbc"], resume=True)
    kd = runs["exponential-r100/kd/seed0"]
    assert str(Path(kd.dir) / GENERATED_FRAGMENT) in kd.command(["imbc"])
    assert kd.callbacks == [
        {"class_path": KD_CLASS_PATH, "init_args": {"teacher_checkpoint": fp32_ckpt, "alpha": 0.7, "temperature": 1}}
    ]
    balanced = runs["balanced/fp32/seed0"].command(["imbc"])
    for arg in ("--data.init_args.profile=balanced", "--data.init_args.minority_classes=null"):
        assert arg in balanced  # always explicit, so a data fragment's own imbalance settings cannot leak in


def test_fragments_resolve_against_study_dir_then_cwd(tmp_path, monkeypatch):
    (tmp_path / "shared.yaml").write_text("# in cwd\n")
    sub = tmp_path / "studies"
    sub.mkdir()
    monkeypatch.chdir(tmp_path)
    path = write_study(sub, base=["frags/base.yaml", "shared.yaml"])
    assert load_study(path).base == (str(sub / "frags" / "base.yaml"), str(tmp_path / "shared.yaml"))


BAD_STUDIES = [
    ({"optimizers": ["sgd"]}, "unknown key 'optimizers'"),
    ({"imbalance": [{"profile": "step", "ratio": [10], "minority": [2]}]}, "imbalance[0]: unknown key 'minority'"),
    ({"imbalance": [{"profile": "zipf", "ratio": [10]}]}, "imbalance[0].profile: invalid value 'zipf'"),
    ({"imbalance": [{"profile": "step", "ratio": [10]}]}, "minority_classes: required for profile 'step'"),
    ({"imbalance": [{"profile": "exponential", "ratio": [0.5]}]}, "invalid value 0.5"),
    ({"base": ["frags/nope.yaml"]}, "fragment file 'frags/nope.yaml' not found"),
    ({"methods": {"fp32": {}, "q": {"init_from": "fp16"}}}, "methods.q.init_from: unknown method 'fp16'"),
    ({"methods": {"a": {"init_from": "b"}, "b": {"teacher": "a"}}}, "dependency cycle: a -> b -> a"),
    ({"methods": {"fp32": {}, "q": {"bitz": 4}}}, "methods.q: unknown key 'bitz'"),
    ({"reference": "teacher"}, "reference: unknown method 'teacher'"),
    ({"seeds": [0, 0]}, "seeds: expected a non-empty list of distinct integers"),
    ({"methods": {"fp32": {}, "q": {"distill": {"alpha": 0.5}}}}, "only allowed together with 'teacher'"),
]


@pytest.mark.parametrize(("override", "message"), BAD_STUDIES)
def test_bad_study_files_are_rejected_with_the_key_named(tmp_path, override, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        load_study(write_study(tmp_path, **override))


def test_bad_study_is_rejected_before_anything_runs(tmp_path, fake_env, fake_prefix, capsys):
    path = write_study(tmp_path, methods={"a": {"init_from": "b"}, "b": {"init_from": "a"}})
    out = tmp_path / "out"
    code = main(["run", str(path), "--out", str(out), "--command", " ".join(fake_prefix)])
    assert code == 2
    assert "dependency cycle" in capsys.readouterr().err
    assert not out.exists() and fake_env() == []


@pytest.mark.parametrize(
    ("name", "variants", "methods", "seeds"),
    [("c24_resnet20", 21, 8, 3), ("climbq_cifar10lt", 4, 7, 1), ("cpu_mini", 3, 4, 2), ("remedies_cpu", 2, 3, 2)],
)
def test_committed_study_files_parse(name, variants, methods, seeds):
    path = REPO / "configs" / "studies" / f"{name}.yaml"
    study = load_study(path, check_files=False)
    assert (len(study.variants), len(study.methods), len(study.seeds)) == (variants, methods, seeds)
    raw = yaml.safe_load(path.read_text())
    assert parse_study(raw, str(path), check_files=False).reference == raw["reference"]


@pytest.mark.parametrize("name", ["c24_resnet20", "climbq_cifar10lt", "cpu_mini", "remedies_cpu"])
def test_committed_study_fragments_exist(name):
    load_study(REPO / "configs" / "studies" / f"{name}.yaml")  # raises when a named fragment is missing


def test_shared_names_match_the_data_module():
    from imbcompress import names
    from imbcompress.data.imbalance import HEADS, PROFILES

    assert (names.PROFILES, names.HEADS) == (PROFILES, HEADS)
