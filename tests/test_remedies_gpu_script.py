"""benchmarks/remedies_gpu.sh refuses bad arguments before it writes anything (its fits need a GPU)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks/remedies_gpu.sh"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["0"], {}, "EPOCHS must be a positive integer, got '0'"),
        (["200", "-1"], {}, "SEED must be a non-negative integer, got '-1'"),
        (["200", "0"], {"FIT_LIMIT": "10m"}, "FIT_LIMIT must be a positive integer, got '10m'"),
    ],
)
def test_bad_arguments_exit_2_naming_the_setting_before_writing(
    args: list[str], env: dict[str, str], message: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", str(SCRIPT), str(out), *args], env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True
    )
    assert done.returncode == 2 and message in done.stderr
    assert not out.exists()
