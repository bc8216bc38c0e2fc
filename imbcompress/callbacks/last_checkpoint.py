"""``last.ckpt`` on the cadence the configs promise: every N optimisation steps and at every epoch end."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override


class LastCheckpoint(ModelCheckpoint):
    """Keeps one file, ``last.ckpt``, current: rewritten every ``every_n_train_steps`` optimisation steps (for a
    mid-epoch resume) and at the end of every training epoch (so dependent runs find the final model there).

    A plain ``ModelCheckpoint(save_last=True, save_top_k=0)`` writes ``last.ckpt`` at an epoch end only when it
    saved a top-k file at that step, i.e. never with ``save_top_k=0`` (Lightning 2.6); this subclass writes it.

    Args:
        every_n_train_steps: Steps between two writes within an epoch (>= 1).
        dirpath: Directory of ``last.ckpt``; default ``<run dir>/checkpoints``.
    """

    def __init__(self, every_n_train_steps: int = 100, dirpath: str | None = None) -> None:
        if isinstance(every_n_train_steps, bool) or not isinstance(every_n_train_steps, int) or every_n_train_steps < 1:
            raise ValueError(f"LastCheckpoint.every_n_train_steps must be an integer >= 1, got {every_n_train_steps!r}")
        super().__init__(
            dirpath=dirpath,
            save_last=True,
            save_top_k=0,
            every_n_train_steps=every_n_train_steps,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._should_skip_saving_checkpoint(trainer):  # skips fast_dev_run and a step saved already
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
