"""study plan: a study's length from a measured throughput, never from a built-in number."""

import json
from pathlib import Path

import pytest

from imbcompress.study.cli import main
from imbcompress.study.estimate import Throughput, estimate, load_throughput, makespan
from imbcompress.study.plan import expand
from imbcompress.study.spec import load_study

from .conftest import write_study
from .test_validate import BASE

EXP_R100 = sum(int(5000 * 100 ** (-i / 9)) for i in range(10))  # SPEC §1 exponential profile, rho 100


def test_estimate_counts_images_epochs_and_simulates_the_slots(tmp_path):
    methods = {"fp32": {"args": ["--trainer.max_epochs=4"]}, "q": {"init_from": "fp32"}}  # q: the study's 1 epoch
    plan = expand(load_study(write_study(tmp_path, base=BASE, methods=methods)), tmp_path / "out")
    result = estimate(plan, Throughput(images_per_s_per_run=1000.0, runs_per_gpu=2, gpus=1))
    assert result["methods"]["fp32"]["images"] == 4 * (50000 + EXP_R100)
    assert result["methods"]["q"]["images"] == 50000 + EXP_R100
    # two slots: the fp32 runs in parallel (200 s and 4*EXP_R100/1000 s), each q run after its own fp32 run
    fp32 = {"balanced": 200.0, "exp": 4 * EXP_R100 / 1000}
    expected = max(fp32["balanced"] + 50.0, fp32["exp"] + EXP_R100 / 1000)
    assert result["wall_hours"] * 3600 == pytest.approx(expected)
    assert result["run_hours"] * 3600 == pytest.approx(5 * (50000 + EXP_R100) / 1000)
    assert not (tmp_path / "out").exists()


def test_max_steps_caps_a_run_that_would_take_longer_by_epochs(tmp_path):
    # 40 epochs or 4,000 steps, whichever ends first: the balanced set (50,000 images) stops at the step budget, the
    # long-tailed one at its 40 epochs (EXP_R100 images each: fewer than 4,000 batches of 128 in all)
    args = ["--trainer.max_epochs=40", "--trainer.max_steps=4000", "--data.init_args.batch_size=128"]
    plan = expand(load_study(write_study(tmp_path, base=BASE, methods={"fp32": {"args": args}})), tmp_path / "out")
    result = estimate(plan, Throughput(images_per_s_per_run=1000.0))
    assert result["methods"]["fp32"]["images"] == 4000 * 128 + min(40 * EXP_R100, 4000 * 128)
    assert 40 * EXP_R100 < 4000 * 128 < 40 * 50000


def test_makespan_of_one_slot_is_the_sum(tmp_path):
    plan = expand(load_study(write_study(tmp_path)), tmp_path / "out")
    assert makespan(plan, {run.id: 10.0 for run in plan.runs}, 1) == 60.0


def test_throughput_file_is_checked(tmp_path, capsys):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"images_per_s_per_run": 900, "runs_per_gpu": 4, "device": "X", "source": "bench"}))
    assert load_throughput(path) == Throughput(900, 4, 1, "X", "bench")
    path.write_text(json.dumps({"images_per_s_per_run": 0}))
    with pytest.raises(ValueError, match="images_per_s_per_run: invalid value 0"):
        load_throughput(path)
    path.write_text(json.dumps({"img_s": 5}))
    study = write_study(tmp_path)
    assert main(["plan", str(study), "--throughput", str(path)]) == 2
    assert "expected a JSON object with images_per_s_per_run" in capsys.readouterr().err


@pytest.mark.parametrize("packing", [4, 8])
def test_the_committed_h200_throughputs_load(packing):
    path = Path(__file__).resolve().parents[2] / f"configs/studies/throughput/h200_resnet20_x{packing}.json"
    throughput = load_throughput(path)
    assert throughput.runs_per_gpu == packing and throughput.images_per_s_per_run > 0
