"""The code revision a run records: the commit of the imbcompress checkout, and whether it had uncommitted changes."""

import shutil
import subprocess
from pathlib import Path

import pytest

from imbcompress.host import PACKAGE_ROOT, code_revision, git_revision, revision_text

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(root: Path, *args: str) -> str:
    command = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def test_the_revision_of_a_checkout_its_changes_and_what_is_not_a_checkout(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    _git(repo, "init", "-q")
    (repo / "pkg/a.py").write_text("x = 1\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "one")
    head = _git(repo, "rev-parse", "HEAD")
    assert git_revision(repo) == {"commit": head, "dirty": False}
    (repo / "untracked.py").write_text("")
    assert git_revision(repo) == {"commit": head, "dirty": False}  # an untracked file is not the code that ran
    (repo / "pkg/a.py").write_text("x = 2\n")
    assert git_revision(repo) == {"commit": head, "dirty": True}
    assert git_revision(repo / "pkg") is None  # inside a checkout but not its top: an installed copy, not the code
    assert git_revision(tmp_path / "plain") is None  # no repository at all (the directory does not even exist)
    assert revision_text({"commit": head, "dirty": True}) == f"commit {head[:12]}, with uncommitted changes"
    assert revision_text(None) == "not recorded"


def test_this_process_records_the_revision_of_the_checkout_it_runs_from() -> None:
    assert code_revision() == git_revision(PACKAGE_ROOT)
    if (PACKAGE_ROOT / ".git").exists():  # the tests run from a checkout (CI clones the repository)
        assert code_revision()["commit"] == _git(PACKAGE_ROOT, "rev-parse", "HEAD")
