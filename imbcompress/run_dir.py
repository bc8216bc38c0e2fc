"""One ``fit --run_dir`` attempt: the directory as it found it, so that a fit failing before it trains puts it back.

A fit writes ``config.yaml``, TensorBoard files and its lock before Lightning restores ``--ckpt_path``; a fit
that then fails (or fails in any other way before its first optimisation step) must not leave the record of a run
that never happened, nor change the files of an earlier run in the same directory. Torch-free.
"""

from __future__ import annotations

from pathlib import Path

from imbcompress.atomic import atomic_write
from imbcompress.locks import hold_run_dir_lock, is_first_process, release_run_dir_locks
from imbcompress.names import METRICS_FILE

FIT_OUTPUTS = ("config.yaml", "hparams.yaml", "events.out.tfevents.*", METRICS_FILE, "predictions.csv", "checkpoints")
"""What a fit (or validate / test / predict) writes into its run directory (Lightning's config and TensorBoard files,
the run report, ``predict``'s predictions, the checkpoint callbacks). Only these are removed or put back, never
another program's files there (a study's ``run.log``)."""
REWRITTEN = ("config.yaml", "hparams.yaml", METRICS_FILE)
"""The outputs a fit rewrites when its directory has them already (small: their bytes are kept to put back)."""


class RunAttempt:
    """The run directory of one fit (or evaluation) as found when the fit took its lock (the evaluation began).

    Args:
        run_dir: The directory (``--run_dir``).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._created = _first_missing(self.run_dir)  # the folder this attempt creates (None: the directory exists)
        self._found: set[Path] = set()
        self._kept: dict[Path, tuple[bytes, int]] = {}  # a rewritten output's bytes and mode
        self._locked = False

    @classmethod
    def begin(cls, run_dir: str | Path, lock: bool = True) -> RunAttempt | None:
        """Lock ``run_dir`` (:func:`~imbcompress.locks.hold_run_dir_lock`) and record what it holds.

        Args:
            run_dir: The directory.
            lock: Take the run-directory lock (a fit); an evaluation (``validate`` / ``test`` / ``predict``, which
                writes to a directory no run holds) takes none.

        Returns:
            The attempt, or None in the extra ranks of a DDP run (rank 0 owns the directory).
        """
        attempt = cls(run_dir)
        if not (hold_run_dir_lock(run_dir) if lock else is_first_process()):
            return None
        attempt._locked = lock
        attempt._found = set(attempt._outputs())
        files = (attempt.run_dir / name for name in REWRITTEN)
        attempt._kept = {path: (path.read_bytes(), path.stat().st_mode) for path in files if path.is_file()}
        return attempt

    def _outputs(self) -> list[Path]:
        found = [path for pattern in FIT_OUTPUTS for path in self.run_dir.glob(pattern)]
        return found + [inner for path in found if path.is_dir() for inner in path.rglob("*")]

    def put_back(self) -> list[str]:
        """Remove the outputs the attempt added, restore those it rewrote, release the lock (its file as found) and
        remove the folders the attempt created; call while the lock is held, before the first optimisation step.

        Returns:
            The paths removed or restored, relative to the run directory.
        """
        changed: list[str] = []
        try:
            for path in sorted(set(self._outputs()) - self._found, key=lambda path: len(path.parts), reverse=True):
                if _remove(path):
                    changed.append(str(path.relative_to(self.run_dir)))
            for path, (data, mode) in self._kept.items():
                if not path.is_file() or path.read_bytes() != data:
                    _restore(path, data, mode)
                    changed.append(str(path.relative_to(self.run_dir)))
        finally:
            if self._locked:
                release_run_dir_locks(put_back=True)
        if self._created is not None:
            for folder in [self.run_dir, *self.run_dir.parents]:
                if not _remove(folder) or folder == self._created:
                    break
        return changed


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` (itself included) that does not exist yet."""
    missing = None
    for folder in [path, *path.parents]:
        if folder.exists():
            break
        missing = folder
    return missing


def _restore(path: Path, data: bytes, mode: int) -> None:
    atomic_write(path, lambda handle: handle.write(data))
    path.chmod(mode)


def _remove(path: Path) -> bool:
    """Remove a file, or a folder if it is empty; whether it was removed."""
    try:
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()
    except OSError:
        return False
    return True
