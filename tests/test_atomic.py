"""Atomic writes: whole files only, with the permissions the user's umask gives any new file."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import CONFIGS, fake_data_args, fit
from fakedata import make_fake_cifar

from imbcompress.atomic import atomic_write, current_umask, write_json_atomic


@pytest.fixture
def umask_077() -> Iterator[None]:
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_current_umask_reads_without_changing_it(umask_077: None) -> None:
    assert current_umask() == 0o077
    assert current_umask() == 0o077


def test_files_follow_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "open.json", {"a": 1})
        os.umask(0o077)
        write_json_atomic(tmp_path / "private.json", {"a": 1})
        os.umask(0o027)
        atomic_write(tmp_path / "group.bin", lambda handle: handle.write(b"x"))
    finally:
        os.umask(previous)
    assert (_mode(tmp_path / "open.json"), _mode(tmp_path / "private.json")) == (0o644, 0o600)
    assert _mode(tmp_path / "group.bin") == 0o640


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    def fail(handle: object) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "x.json", fail)
    assert list(tmp_path.iterdir()) == []


def test_metrics_json_of_a_fit_under_umask_077_is_private(tmp_path: Path, umask_077: None) -> None:
    root = make_fake_cifar(tmp_path / "data", train_per_class=4, test_per_class=2)
    args = [f"--config={CONFIGS / 'trainer/cpu.yaml'}", f"--config={CONFIGS / 'model/resnet20.yaml'}"]
    args += ["--data=imbcompress.data.ImbalancedDataModule", *fake_data_args(root), "--trainer.max_steps=1"]
    fit(args, tmp_path / "run")
    assert _mode(tmp_path / "run/metrics.json") == 0o600
