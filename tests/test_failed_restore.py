"""A fit whose checkpoint cannot be restored leaves its run directory exactly as it found it.

Each case would otherwise leave ``config.yaml``, a TensorBoard events file and ``.fit.lock`` behind: the trace of
a run that never happened.
"""

from __future__ import annotations

import fcntl
import shutil
from pathlib import Path

import pytest
import torch
from cli_helpers import CONFIGS, QUIET, ddp_fit_process, fake_data_args, fit, host_precision, make_learnable_cifar
from fakedata import make_fake_cifar

from imbcompress.cli import run_cli
from imbcompress.errors import SettingsError
from imbcompress.locks import RUN_LOCK_FILE, FileLock, holder

BASE = [f"--config={CONFIGS / 'trainer/cpu.yaml'}", f"--config={CONFIGS / 'model/resnet20.yaml'}"]
TINY = ["--data.init_args.batch_size=8", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=0"]


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A finished 1-epoch fit of 2 steps (its run dir, with checkpoints/last.ckpt and metrics.json), and its args."""
    root = make_learnable_cifar(tmp_path_factory.mktemp("data"), train_per_class=4, test_per_class=2)
    args = [*BASE, "--data=imbcompress.data.ImbalancedDataModule", *fake_data_args(root), *TINY]
    args += ["--trainer.max_epochs=1"]
    run = tmp_path_factory.mktemp("runs") / "done"
    fit(args, run)
    return run, args


def run_fit(args: list[str], run_dir: Path) -> None:
    run_cli(["fit", *args, *QUIET, *host_precision(args), f"--run_dir={run_dir}"])


def contents(run_dir: Path) -> dict[str, bytes | None]:
    """Every path under ``run_dir`` with its bytes (None for a directory)."""
    return {str(p.relative_to(run_dir)): None if p.is_dir() else p.read_bytes() for p in sorted(run_dir.rglob("*"))}


def edited_checkpoint(done: Path, tmp_path: Path, edit: str) -> Path:
    """The finished fit's last.ckpt, edited: only its model weights, or an optimizer state of another model."""
    checkpoint = torch.load(done / "checkpoints/last.ckpt", weights_only=True)
    if edit == "weights-only":
        checkpoint = checkpoint["state_dict"]
    else:
        groups = checkpoint["optimizer_states"][0]["param_groups"]
        groups.append(dict(groups[0]))  # a parameter group the model does not have
    path = tmp_path / f"{edit}.ckpt"
    torch.save(checkpoint, path)
    return path


def failing_resumes(done: Path, args: list[str], tmp_path: Path) -> dict[str, tuple[list[str], str | None]]:
    """Resumes that cannot restore ``done``'s checkpoint: (arguments, message) per case; None: Lightning's own."""
    last = done / "checkpoints/last.ckpt"
    cifar100 = make_fake_cifar(tmp_path / "cifar100", dataset="cifar100", train_per_class=1, test_per_class=1, size=8)
    return {
        "weights-only": (
            [*args, f"--ckpt_path={edited_checkpoint(done, tmp_path, 'weights-only')}"],
            r"--ckpt_path='.*weights-only.ckpt' is not a checkpoint written by `imbcompress fit`",
        ),
        "compression": (
            [*args, f"--config={CONFIGS / 'compress/prune_mild.yaml'}", f"--ckpt_path={last}"],
            r"--ckpt_path='.*last.ckpt' was trained with the compression \[\], but this configuration applies "
            r"\['filter_pruning'",
        ),
        "classes": (
            [*args, *fake_data_args(cifar100, "cifar100"), f"--ckpt_path={last}"],
            r"--ckpt_path='.*last.ckpt': its keys/shapes do not match architecture resnet20: 2 of another shape "
            r"\(first: classifier.weight \(10, 64\) vs \(100, 64\)",
        ),
        "optimizer-state": ([*args, f"--ckpt_path={edited_checkpoint(done, tmp_path, 'optimizer')}"], None),
    }


CASES = ("weights-only", "compression", "classes", "optimizer-state")


@pytest.mark.parametrize("case", CASES)
def test_a_failed_restore_leaves_no_run_dir(case: str, done: tuple[Path, list[str]], tmp_path: Path) -> None:
    args, message = failing_resumes(*done, tmp_path)[case]
    run_dir = tmp_path / "runs" / "new"
    with pytest.raises(SettingsError if message else ValueError, match=message or "parameter group"):
        run_fit(args, run_dir)
    assert not (tmp_path / "runs").exists()  # no config.yaml, events file, hparams.yaml or .fit.lock, no folder


@pytest.mark.parametrize("case", ["compression", "optimizer-state"])
def test_a_failed_resume_leaves_an_existing_run_dir_byte_identical(
    case: str, done: tuple[Path, list[str]], tmp_path: Path
) -> None:
    run, args = done
    before = contents(run)
    assert "config.yaml" in before and RUN_LOCK_FILE in before and "metrics.json" in before
    assert any(name.startswith("events.out.tfevents.") for name in before)
    resume, _ = failing_resumes(run, args, tmp_path)[case]
    with pytest.raises(ValueError):
        run_fit(resume, run)
    assert contents(run) == before  # nothing added, nothing rewritten (the lock file's holder line included)


def test_a_correct_resume_after_a_failed_one_keeps_the_earlier_files(
    done: tuple[Path, list[str]], tmp_path: Path
) -> None:
    run, args = done
    child = tmp_path / "child"
    shutil.copytree(run, child)
    first = contents(child)
    with pytest.raises(ValueError):
        run_fit(failing_resumes(run, args, tmp_path)["optimizer-state"][0], child)
    assert contents(child) == first
    metrics = fit([*args, "--trainer.max_epochs=2", f"--ckpt_path={child / 'checkpoints/last.ckpt'}"], child)
    assert metrics["resumed_from"] == str(child / "checkpoints/last.ckpt")
    after = contents(child)
    events = [name for name in first if name.startswith("events.out.tfevents.")]
    assert events and all(name in after for name in events)  # the first fit's logs are kept, the resume adds its own
    assert len([name for name in after if name.startswith("events.out.tfevents.")]) > len(events)
    assert RUN_LOCK_FILE in after and "checkpoints/last.ckpt" in after


def test_a_lock_put_back_removes_the_file_it_created_and_restores_one_it_found(tmp_path: Path) -> None:
    path = tmp_path / "d" / RUN_LOCK_FILE
    lock = FileLock(path, "test").acquire()
    assert path.read_text().startswith("pid ")
    lock.release(put_back=True)
    assert not path.exists()
    path.write_text("pid 1 since earlier\n")
    lock = FileLock(path, "test").acquire()
    assert path.read_text() != "pid 1 since earlier\n"
    lock.release(put_back=True)
    assert path.read_text() == "pid 1 since earlier\n"
    assert holder(path) is None and path.read_text() == "pid 1 since earlier\n"  # a probe puts it back too


def test_a_lock_taken_on_a_file_removed_meanwhile_is_taken_on_the_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / RUN_LOCK_FILE
    path.write_text("pid 1 since earlier\n")
    real_flock = fcntl.flock
    removed: list[bool] = []

    def flock_after_the_holder_removed_the_file(handle: object, operation: int) -> None:
        if not removed:  # the holder put its lock back (removed the file) between this open and this flock
            path.unlink()
            removed.append(True)
        real_flock(handle, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_the_holder_removed_the_file)
    lock = FileLock(path, "test").acquire()
    monkeypatch.setattr(fcntl, "flock", real_flock)
    try:
        assert removed and path.exists()
        with open(path) as other, pytest.raises(BlockingIOError):  # the file on disk is the one held
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        lock.release()


@pytest.mark.slow
def test_a_ddp_fit_failing_at_setup_leaves_no_run_dir(done: tuple[Path, list[str]], tmp_path: Path) -> None:
    """Under DDP rank 0 owns the run directory and puts it back; the other rank writes nothing there."""
    _, args = done
    data = args[args.index("--data=imbcompress.data.ImbalancedDataModule") :]  # the data and run-length settings
    remedies = [f"--config={CONFIGS / 'remedies/logit_adjusted.yaml'}", f"--config={CONFIGS / 'remedies/focal.yaml'}"]
    result = ddp_fit_process([*data, *remedies], tmp_path / "runs" / "new")
    assert result.returncode != 0
    assert "LogitAdjustedLoss" in result.stderr and "FocalLoss" in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "runs").exists()  # no config.yaml, events file, hparams.yaml or .fit.lock, no folder
