"""The LightningCLI behind ``imbcompress fit / validate / test / predict`` (the command itself: ``__main__.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from imbcompress.data import ImbalancedDataModule
from imbcompress.locks import hold_run_dir_lock, release_run_dir_locks
from imbcompress.task import ImbalanceClassifier
from imbcompress.yamlio import use_for_config_files

TRAINER_DEFAULTS: dict[str, Any] = {
    # bf16 autocast + channels-last is the fast path on CPUs with AVX-512 BF16 / AMX and on recent GPUs.
    "precision": "bf16-mixed",
}


class ImbCompressCLI(LightningCLI):
    """LightningCLI with the data -> model links, ``--run_dir`` and test-after-fit."""

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
        if run_dir and self.subcommand == "fit":
            hold_run_dir_lock(run_dir)  # before anything is written: one fit per run directory
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

    def after_predict(self) -> None:
        predictions = self.trainer.predict_loop.predictions
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # a collective under DDP: all ranks
        if not predictions or not self.trainer.is_global_zero:
            return
        rows = {key: torch.cat([batch[key] for batch in predictions]) for key in ("prediction", "target")}
        lines = ["index,target,prediction"] + [
            f"{i},{int(t)},{int(p)}" for i, (t, p) in enumerate(zip(rows["target"], rows["prediction"]))
        ]
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "predictions.csv").write_text("\n".join(lines) + "\n")
        print(f"wrote {run_dir / 'predictions.csv'} ({len(lines) - 1} rows; rank 0's share under DDP)")


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
