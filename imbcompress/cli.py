"""The LightningCLI behind ``imbcompress fit / validate / test / predict`` (the command itself: ``__main__.py``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from imbcompress.callbacks.run_report import PREDICTIONS_FILE, RunReport
from imbcompress.checkpoint import load_checkpoint_file, secure_subcommand_config
from imbcompress.data import ImbalancedDataModule
from imbcompress.host import code_revision
from imbcompress.locks import release_run_dir_locks
from imbcompress.names import METRICS_FILE
from imbcompress.restore import check_restore
from imbcompress.run_dir import RunAttempt
from imbcompress.task import ImbalanceClassifier
from imbcompress.yamlio import use_for_config_files

TRAINER_DEFAULTS: dict[str, Any] = {
    # bf16 autocast + channels-last is the fast path on CPUs with AVX-512 BF16 / AMX and on recent GPUs.
    "precision": "bf16-mixed",
}


EVALUATING = ("validate", "test", "predict")
SEED_ENV = "PL_GLOBAL_SEED"  # where Lightning's seed_everything records the seed (read by metrics.json, the data)
RUN_FILES = ("config.yaml", METRICS_FILE, PREDICTIONS_FILE, "checkpoints")


def holds_a_run(path: Path) -> bool:
    """Whether a run (fit or evaluation) has written into ``path``."""
    return any((path / name).exists() for name in RUN_FILES)


def fresh_run_dir(run_dir: str, subcommand: str) -> str:
    """``run_dir`` if no run has written there yet, else ``<run_dir>/<subcommand>-<n>`` with the first free n.

    Nothing is created here, so every DDP rank (all parse before any writes: the process group forms first)
    chooses the same directory.
    """
    path = Path(run_dir)
    if not holds_a_run(path):
        return run_dir
    n = 1
    while (path / f"{subcommand}-{n}").exists():
        n += 1
    fresh = str(path / f"{subcommand}-{n}")
    rank_zero_info(f"{run_dir} holds a run, which {subcommand} never overwrites: writing to {fresh}")
    return fresh


_seed_left: str | None = None  # the PL_GLOBAL_SEED the last command in this process ran with


def forget_earlier_seed() -> None:
    """Drop the seed an earlier command of this process left in ``PL_GLOBAL_SEED`` (where seed_everything records it).

    Run twice in one process (a test, a notebook), a command with ``--seed_everything false`` would otherwise report
    the earlier command's seed in its metrics.json and take it for its batch order. A value this process did not
    leave is kept: a DDP worker inherits its launcher's seed that way (with ``seed_everything: true`` every rank
    must draw the same one).
    """
    if _seed_left is not None and os.environ.get(SEED_ENV) == _seed_left:
        del os.environ[SEED_ENV]


def remember_seed() -> None:
    """Record the seed this command runs with (after Lightning's ``_set_seed``), for :func:`forget_earlier_seed`."""
    global _seed_left
    _seed_left = os.environ.get(SEED_ENV)


class ImbCompressCLI(LightningCLI):
    """LightningCLI with the data -> model links, ``--run_dir``, test-after-fit and a ``RunReport`` in every run.

    ``--ckpt_path`` is checked against the built model and callbacks before the run writes anything
    (:func:`~imbcompress.restore.check_restore`), and a fit that fails before its first optimisation step, or a
    validate / test / predict that fails, leaves its run directory as it found it
    (:class:`~imbcompress.run_dir.RunAttempt`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._attempt: RunAttempt | None = None
        self._checkpoint: tuple[str, dict[str, Any]] | None = None  # --ckpt_path and its content, until checked
        forget_earlier_seed()
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            self._put_back_unless_trained()
            raise

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.add_argument(
            "--run_dir",
            type=str | None,
            default=None,
            help="Write everything of this run into this directory: TensorBoard logs, config.yaml, "
            "checkpoints/ and metrics.json (overrides the trainer's logger). validate, test and predict never "
            "write into a directory that already holds a run (e.g. the fit's, named by its saved config.yaml): "
            "they write into <run_dir>/<subcommand>-<n>/, the first n not taken.",
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After fit, test the final model on the test set and write metrics.json.",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand:  # --ckpt_path: exists and loads with weights_only=True, before any work
            checkpoint = secure_subcommand_config(self.config[subcommand])
            if checkpoint is not None:  # kept for _parse_ckpt_path, which reads the same file next
                self._checkpoint = (str(self.config[subcommand].get("ckpt_path")), checkpoint)

    def _parse_ckpt_path(self) -> None:
        """Lightning's (the model's arguments come from ``--ckpt_path``'s hyperparameters, so a checkpoint is rebuilt
        as the architecture it holds; ``init_from``, which checkpoints do not store, is dropped), reading checkpoints
        written when ``arch`` was called ``model`` too.
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        if self._checkpoint is None or self._checkpoint[0] != str(ckpt_path):  # read once, by parse_arguments
            self._checkpoint = (str(ckpt_path), load_checkpoint_file(ckpt_path, setting="ckpt_path"))
        checkpoint = self._checkpoint[1]
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if "model" in hparams and "arch" not in hparams:
            hparams["arch"] = hparams.pop("model")
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

    def before_instantiate_classes(self) -> None:
        remember_seed()  # Lightning's _set_seed has run
        code_revision()  # asked now, so metrics.json names the code this command loaded, not a checkout moved since
        config = self.config[self.subcommand] if self.subcommand else self.config
        run_dir = config.get("run_dir")
        if run_dir and self.subcommand == "fit":
            self._attempt = RunAttempt.begin(run_dir)  # the lock, before anything is written: one fit per directory
        if run_dir and self.subcommand in EVALUATING:
            run_dir = config.run_dir = fresh_run_dir(run_dir, self.subcommand)
            self._attempt = RunAttempt.begin(run_dir, lock=False)  # a failed evaluation leaves nothing either
        if run_dir:
            config.trainer.default_root_dir = run_dir
            config.trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.TensorBoardLogger",
                init_args=Namespace(save_dir=run_dir, name="", version=""),
            )

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        if self._checkpoint is not None:
            path, checkpoint = self._checkpoint
            self._checkpoint = None
            callbacks = self.trainer.callbacks  # type: ignore[attr-defined]
            check_restore(checkpoint, path, self.model, callbacks, fitting=self.subcommand == "fit")

    def _put_back_unless_trained(self) -> None:
        """After a failure: unless the fit took an optimisation step, put its run directory back as it was."""
        attempt, self._attempt = self._attempt, None
        if attempt is None:
            return
        trainer = getattr(self, "trainer", None)
        reports = [callback for callback in getattr(trainer, "callbacks", []) if isinstance(callback, RunReport)]
        if any(report.has_trained(trainer) for report in reports):  # type: ignore[arg-type]
            return
        changed = attempt.put_back()
        if changed:
            rank_zero_info(
                f"the {self.subcommand} failed before its first optimisation step; in {attempt.run_dir}, removed or "
                f"restored what it wrote: {', '.join(changed)}"
            )

    def after_fit(self) -> None:
        config = self.config[self.subcommand]
        if config.get("test_after_fit", True) and not self.trainer.interrupted:
            self.trainer.test(self.model, datamodule=self.datamodule, verbose=False)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if not any(isinstance(callback, RunReport) for callback in trainer.callbacks):  # type: ignore[attr-defined]
            trainer.callbacks.append(RunReport())  # type: ignore[attr-defined]
        return trainer


def run_cli(
    args: list[str] | None = None, run: bool = True, cli_class: type[ImbCompressCLI] = ImbCompressCLI
) -> ImbCompressCLI:
    """Build (and by default run) the LightningCLI; ``args`` as on the command line (tests pass them directly)."""
    use_for_config_files()  # a key given twice in a config file is an error, not "the last one wins"
    try:
        return cli_class(
            ImbalanceClassifier,
            ImbalancedDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            trainer_defaults=TRAINER_DEFAULTS,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            args=args,
            run=run,
        )
    finally:
        release_run_dir_locks()  # the fit is over: an in-process caller (a test) may hand its directory on
