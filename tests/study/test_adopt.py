"""``study adopt``: a finished fit trained outside the study becomes one of its runs only when it trained the same."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from imbcompress.cli import run_cli
from imbcompress.host import code_revision, revision_text
from imbcompress.locks import RUN_LOCK_FILE
from imbcompress.study.adopt import ADOPTED_FILE, compare
from imbcompress.study.cli import main
from imbcompress.study.plan import expand, load_plan
from imbcompress.study.spec import load_study
from imbcompress.study.state import plan_states

from .conftest import REPO, write_real_study

RUN = "balanced/fp32/seed0"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny study (FP32 + a pruned child) and a fit of its FP32 run's command in a directory of its own, which
    validated every 3rd epoch instead of every epoch."""
    root = tmp_path_factory.mktemp("adopt")
    methods = {
        "fp32": {},
        "pruned": {"fragments": [str(REPO / "configs/compress/prune_severe.yaml")], "init_from": "fp32"},
    }
    path = write_real_study(root, "adopt", methods)
    run = expand(load_study(path), root / "unused").by_id()[RUN]
    args = run.command([])
    args[args.index("--run_dir") + 1] = str(root / "elsewhere")
    run_cli([*args, "--trainer.check_val_every_n_epoch=3"])
    return path, root / "elsewhere"


def test_a_run_trained_by_the_same_configuration_is_adopted_byte_for_byte(trained, tmp_path, capsys):
    study, source = trained
    lock_text = (source / RUN_LOCK_FILE).read_text()
    out = tmp_path / "out"
    assert main(["adopt", str(study), RUN, str(source), "--out", str(out)]) == 0, capsys.readouterr().err
    target = out / "runs" / RUN
    for name in ("metrics.json", "config.yaml", "checkpoints/last.ckpt"):
        assert (target / name).read_bytes() == (source / name).read_bytes()
    record = json.loads((target / ADOPTED_FILE).read_text())
    assert record["source"] == str(source) and record["steps"] == 2
    assert "trainer.check_val_every_n_epoch" in record["neutral_differences"]
    assert record["accepted_differences"] == []
    trained_code = json.loads((source / "metrics.json").read_text())["code"]
    assert record["trained_code"] == trained_code and record["adopting_code"] == code_revision()
    assert (source / RUN_LOCK_FILE).read_text() == lock_text  # the source's lock is put back as found
    states = plan_states(load_plan(out))
    assert states[RUN] == "done" and states["balanced/pruned/seed0"] == "pending"
    assert main(["status", str(out)]) == 0
    assert f"adopted from {source} (study adopt)" in capsys.readouterr().out
    assert main(["report", str(out)]) == 0
    report = (out / "report" / "report.md").read_text()
    assert f"`{RUN}` from `{source}`" in report
    if trained_code:  # the tests run from a git checkout (else neither commit is recorded)
        assert f"trained by {revision_text(trained_code)}, adopted by {revision_text(code_revision())})" in report
    assert "in the 0 finished run(s) the study ran" in report  # the adopted run's training time is not the study's
    # a second adoption into the same run is refused and changes nothing
    before = sorted(path.name for path in target.iterdir())
    assert main(["adopt", str(study), RUN, str(source), "--out", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert sorted(path.name for path in target.iterdir()) == before


def test_a_run_that_trained_differently_is_refused_with_nothing_written(trained, tmp_path, capsys):
    study, source = trained
    changed = tmp_path / "changed"
    shutil.copytree(source, changed)
    config = yaml.safe_load((changed / "config.yaml").read_text())
    config["model"]["init_args"]["lr"] = 0.05
    (changed / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    assert main(["adopt", str(study), RUN, str(changed), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "model.init_args.lr: the study plans 0.1, the run has 0.05" in err and "nothing was copied" in err
    assert main(["adopt", str(study), "balanced/pruned/seed0", str(source), "--out", str(out)]) == 2
    assert f"starts from other runs of the study ({RUN}: its init_from" in capsys.readouterr().err
    assert main(["adopt", str(study), RUN, str(tmp_path), "--out", str(out)]) == 2
    assert "is not a finished fit" in capsys.readouterr().err
    assert main(["adopt", str(study), "balanced/fp32/seed9", str(source), "--out", str(out)]) == 2
    assert "run_id: no run 'balanced/fp32/seed9'" in capsys.readouterr().err
    assert not out.exists()


def _trainer(**values) -> dict:
    return {"trainer": {"max_epochs": 40, "max_steps": -1, **values}, "model": {"class_path": CLASS, "init_args": {}}}


CLASS = "imbcompress.task.ImbalanceClassifier"


def test_max_steps_may_differ_only_when_the_run_took_exactly_the_planned_steps():
    planned, adopted = _trainer(max_steps=3880), _trainer()
    assert compare(planned, adopted, 3880).accepted[0][0] == "trainer.max_steps"
    assert not compare(planned, adopted, 3880).refused
    assert compare(planned, adopted, 3879).refused  # stopped elsewhere
    assert compare(planned, _trainer(max_epochs=41), 3880).refused  # same steps, another max_epochs
    assert compare(adopted, planned, 3880).refused  # the study plans no step limit: not provable from the run


def test_an_option_added_after_the_run_is_accepted_only_at_its_default():
    planned, adopted = _trainer(), _trainer()
    planned["model"]["init_args"]["classifier"] = "linear"
    result = compare(planned, adopted, 0)
    assert [key for key, _ in result.accepted] == ["model.init_args.classifier"] and not result.refused
    planned["model"]["init_args"]["classifier"] = "cosine"
    assert compare(planned, adopted, 0).refused == [
        "model.init_args.classifier: the study plans 'cosine', the run has (absent)"
    ]
    adopted["model"]["init_args"]["label_smoothing"] = 0.1  # a setting the study does not have
    assert (
        "model.init_args.label_smoothing: the study plans (absent), the run has 0.1"
        in compare(planned, adopted, 0).refused
    )


def test_settings_that_cannot_change_the_weights_are_listed_once():
    planned = {**_trainer(check_val_every_n_epoch=5, logger=None), "run_dir": "a"}
    logger = {"class_path": "TB", "init_args": {"save_dir": "b"}}
    adopted = {**_trainer(check_val_every_n_epoch=1, logger=logger), "run_dir": "b"}
    result = compare(planned, adopted, 0)
    assert sorted(result.neutral) == ["run_dir", "trainer.check_val_every_n_epoch", "trainer.logger"]
    assert not result.refused and not result.accepted
