"""The LightningCLI behind ``imbcompress fit / validate / test / predict`` (the command itself: ``__main__.py``)."""

from __future__ import annotations

from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from imbcompress.callbacks.run_report import RunReport
from imbcompress.data import ImbalancedDataModule
from imbcompress.task import ImbalanceClassifier

TRAINER_DEFAULTS: dict[str, Any] = {
    # bf16 autocast + channels-last is the fast path on CPUs with AVX-512 BF16 / AMX and on recent GPUs.
    "precision": "bf16-mixed",
}


class ImbCompressCLI(LightningCLI):
    """LightningCLI with the data -> model links, ``--run_dir``, test-after-fit and a ``RunReport`` in every run."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.add_argument(
            "--run_dir",
            type=str | None,
            default=None,
            help="Write everything of this run into this directory: TensorBoard logs, config.yaml, "
            "checkpoints/ and metrics.json (overrides the trainer's logger).",
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After fit, test the final model on the test set and write metrics.json.",
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        run_dir = config.get("run_dir")
        if run_dir:
            config.trainer.default_root_dir = run_dir
            config.trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.TensorBoardLogger",
                init_args=Namespace(save_dir=run_dir, name="", version=""),
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


def run_cli(args: list[str] | None = None, run: bool = True) -> ImbCompressCLI:
    """Build (and by default run) the LightningCLI; ``args`` as on the command line (tests pass them directly)."""
    return ImbCompressCLI(
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
