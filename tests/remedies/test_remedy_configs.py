"""Every configs/remedies fragment through the real CLI on generated data, stacked the way users combine them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import CONFIGS, QUIET, fake_data_args, fit, host_precision
from fakedata import make_fake_cifar

from imbcompress.cli import run_cli
from imbcompress.models.heads import CosineLinear
from imbcompress.task import ImbalanceClassifier

FRAGMENTS = sorted((CONFIGS / "remedies").glob("*.yaml"))
EXPECTED = {
    "class_balanced": {"method": "class_balanced", "beta": 0.9999, "gamma": 0.0},
    "focal": {"method": "focal", "gamma": 2.0},
    "ldam_drw": {
        "method": "ldam_drw",
        "max_margin": 0.5,
        "scale": 30.0,
        "drw_epoch": None,
        "drw_fraction": 0.8,
        "drw_beta": 0.9999,
        "drw_start_epoch": 1,  # int(0.8 * 2 epochs)
        "classifier": "cosine",  # the fragment sets model.init_args.classifier
    },
    "logit_adjusted": {"method": "logit_adjusted", "tau": 1.0},
    "sampler_class_balanced": {"method": "sampler_class_balanced"},
    "sampler_sqrt": {"method": "sampler_square_root"},
    "sampler_progressive": {"method": "sampler_progressive"},
    "sampler_deferred": {"method": "sampler_deferred", "switch_epoch": 1},
    "posthoc_logit_adjustment": {"method": "posthoc_logit_adjustment", "tau": 1.0},
    "posthoc_tau_norm": {"method": "posthoc_tau_norm", "tau": 1.0},
}
# Two batches per epoch: on the command line "1" is parsed as the float 1.0, which Lightning reads as "all batches"
# (Trainer's limit_train_batches is typed float | int, float first).
SHORT = ["--trainer.max_epochs=2", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=0"]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_cifar(tmp_path_factory.mktemp("cifar"), train_per_class=40, test_per_class=2)


def _base(root: Path) -> list[str]:
    return [
        f"--config={CONFIGS / 'trainer/cpu.yaml'}",
        f"--config={CONFIGS / 'model/resnet20.yaml'}",
        f"--config={CONFIGS / 'data/cifar10_exp100.yaml'}",
        *fake_data_args(root),
        "--data.init_args.imbalance_ratio=4",
        "--data.init_args.batch_size=32",
    ]


def test_every_remedy_fragment_has_an_expected_record() -> None:
    assert {path.stem for path in FRAGMENTS} == set(EXPECTED)


@pytest.mark.parametrize("fragment", FRAGMENTS, ids=lambda p: p.stem)
def test_every_remedy_fragment_runs_and_is_recorded(fragment: Path, cifar_root: Path, tmp_path: Path) -> None:
    extra = ["--data.init_args.sampler_switch_epoch=1"] if fragment.stem == "sampler_deferred" else []
    metrics = fit([*_base(cifar_root), f"--config={fragment}", *extra, *SHORT], tmp_path / "run")
    assert metrics["remedies"] == [EXPECTED[fragment.stem]]
    assert metrics["test"]["num_samples"] == 20


def test_remedy_fragments_stack_with_compression_fragments(cifar_root: Path, tmp_path: Path) -> None:
    fragments = ["compress/prune_severe", "compress/dorefa_a3w3", "remedies/logit_adjusted", "remedies/sampler_sqrt"]
    args = [*_base(cifar_root), *[f"--config={CONFIGS / f'{name}.yaml'}" for name in fragments], *SHORT]
    metrics = fit(args, tmp_path / "run")
    assert [r["method"] for r in metrics["compression"]] == ["filter_pruning", "dorefa"]
    assert [r["method"] for r in metrics["remedies"]] == ["sampler_square_root", "logit_adjusted"]
    assert metrics["model_size"]["nnz"] == 6_688


POSTHOC_LA = f"--config={CONFIGS / 'remedies/posthoc_logit_adjustment.yaml'}"


def _test(run: Path, out: Path, *extra: str) -> None:
    """`imbcompress test` of a fitted run's last checkpoint with its config.yaml (plus ``extra``) into ``out``."""
    ckpt = run / "checkpoints/last.ckpt"
    run_cli(["test", f"--config={run / 'config.yaml'}", *extra, f"--ckpt_path={ckpt}", f"--run_dir={out}", *QUIET])


def test_ldam_fragment_trains_a_cosine_classifier_that_reloads_with_compression(
    cifar_root: Path, tmp_path: Path
) -> None:
    fragments = ["compress/prune_severe", "compress/dorefa_a3w3", "remedies/ldam_drw"]
    args = [*_base(cifar_root), *[f"--config={CONFIGS / f'{name}.yaml'}" for name in fragments], *SHORT]
    run = tmp_path / "run"
    metrics = fit(args, run)
    assert metrics["model"]["classifier"] == "cosine" and metrics["remedies"][0]["classifier"] == "cosine"
    ckpt = run / "checkpoints/last.ckpt"
    reloaded = ImbalanceClassifier.load_from_checkpoint(ckpt)
    assert isinstance(reloaded.model.classifier, CosineLinear) and reloaded.model.classifier.bias is None
    _test(run, tmp_path / "again", *host_precision(args))
    again = json.loads((tmp_path / "again/metrics.json").read_text())
    assert again["test"] == metrics["test"] and again["compression"] == metrics["compression"]
    with pytest.raises(ValueError, match="needs a classifier with a bias.*CosineLinear"):
        _test(run, tmp_path / "posthoc", POSTHOC_LA, *host_precision(args))
    assert not (tmp_path / "posthoc").exists()  # a failed test leaves nothing behind


def test_posthoc_fragment_on_a_trained_run_at_test(cifar_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    fitted = fit([*_base(cifar_root), f"--config={CONFIGS / 'compress/prune_severe.yaml'}", *SHORT], run)
    assert fitted["remedies"] == []
    ckpt = run / "checkpoints/last.ckpt"
    before = ckpt.read_bytes()
    _test(run, tmp_path / "posthoc", POSTHOC_LA)
    adjusted = json.loads((tmp_path / "posthoc/metrics.json").read_text())
    assert adjusted["remedies"] == [EXPECTED["posthoc_logit_adjustment"]]
    assert adjusted["compression"] == fitted["compression"] and ckpt.read_bytes() == before


def test_unknown_sampler_fails_at_parse_time_listing_the_choices(
    cifar_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        run_cli(["fit", *_base(cifar_root), "--data.init_args.sampler=balanced", f"--run_dir={tmp_path}"])
    assert "instance_balanced" in capsys.readouterr().err
    assert not (tmp_path / "checkpoints").exists()
