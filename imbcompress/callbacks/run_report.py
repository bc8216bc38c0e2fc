"""The one place that decides what a run writes besides checkpoints (the CLI adds it to every run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from imbcompress.callbacks.base import StructuralCompression, describe_record, task_of
from imbcompress.host import code_revision, cpu_has_native_bf16
from imbcompress.reporting import (
    RunInfo,
    class_count_title,
    compressed_model_size,
    log_class_counts,
    report_test_results,
    size_line,
    write_predictions,
)

SECTIONS = ("compression", "remedies")
PREDICTIONS_FILE = "predictions.csv"


class RunReport(Callback):
    """Writes a run's outputs: the size log at fit start, the class-count figure, and after ``test`` the per-class
    table, ``metrics.json`` and figures; after ``predict``, ``predictions.csv``. Files go to ``trainer.log_dir``.

    ``metrics.json["compression"]`` lists what the tested model carries: one entry per structural record of the task
    (replayed from the checkpoint, whichever callbacks the configuration has), then the entries of callbacks that
    only act during fit (distillation). Those fit-only entries, and the other sections (``remedies``), come from
    every callback with a ``metrics_section`` attribute and a ``metrics_record()`` method, read at fit start and saved
    with this callback's state in the fit's checkpoints, so ``test --ckpt_path`` reports them too. A test of a model
    that no fit of this process and no checkpoint with this state describes lists structural records only.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fit_state: dict[str, Any] | None = None  # fit-only records, resumed_from, init_from
        self._counts_logged = False
        self._first_step: int | None = None  # the global step at which this fit's training loop began
        self._predictions: list[dict[str, torch.Tensor]] = []

    # ------------------------------------------------------------------ fit
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        describe = getattr(getattr(trainer, "datamodule", None), "describe", None)
        if self._counts_logged or not callable(describe) or not trainer.is_global_zero:
            return
        self._counts_logged = True
        data = describe()
        if data.get("train_class_counts") and data.get("class_names"):
            log_class_counts(trainer, data["class_names"], data["train_class_counts"], class_count_title(data))

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After every callback's setup and the checkpoint's restore: the model that is actually trained.
        task = task_of(pl_module, "RunReport")
        restored = self.fit_state or {}  # the resumed checkpoint's, if any
        self.fit_state = {
            "records": self._callback_records(trainer),
            "resumed_from": None if trainer.ckpt_path is None else str(trainer.ckpt_path),
            # a resumed fit's task gets its weights from the checkpoint; the lineage began at the first fit's init_from
            "init_from": task.init_from or restored.get("init_from"),
            # the code of every command that trained these weights: a resume appends its own to the checkpoint's
            # list (None first when the checkpoint predates the list or came without this callback's state)
            "fit_code": [*self._earlier_fit_code(trainer, restored), code_revision()],
        }
        size = compressed_model_size(task.model, self._sections(task)["compression"])
        rank_zero_info(size_line(size))
        warn_if_bf16_is_emulated(trainer)
        for logger in trainer.loggers:
            logger.log_metrics({f"model_size/{key}": float(value) for key, value in size.items()}, step=0)

    @staticmethod
    def _earlier_fit_code(trainer: Trainer, restored: dict[str, Any]) -> list[dict[str, Any] | None]:
        if trainer.ckpt_path is None:  # a fresh fit (init_from starts a new lineage: the parent has its own record)
            return []
        return list(restored.get("fit_code", [None]))

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._first_step = trainer.global_step  # after the restore of the loops: a resumed fit's step

    def has_trained(self, trainer: Trainer) -> bool:
        """Whether the fit has taken an optimisation step (before it, what a failed fit wrote records nothing)."""
        return self._first_step is not None and trainer.global_step > self._first_step

    @staticmethod
    def _callback_records(trainer: Trainer, at_test: bool = False) -> dict[str, list[dict[str, Any]]]:
        """Records of the callbacks with a ``metrics_section`` (structural compression excepted: it comes from the
        model); at fit start (``at_test=False``) also the data module's re-sampling remedy, at test only the callbacks
        that act at test time (``metrics_at_test``, e.g. post-hoc adjustment)."""
        records: dict[str, list[dict[str, Any]]] = {section: [] for section in SECTIONS}
        sampler = getattr(getattr(trainer, "datamodule", None), "remedy_record", None)
        if not at_test and callable(sampler) and (record := sampler()) is not None:
            records["remedies"].append(record)
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            section = getattr(callback, "metrics_section", None)
            if section is None or isinstance(callback, StructuralCompression):  # those come from the model
                continue
            if getattr(callback, "metrics_at_test", False) == at_test:
                records.setdefault(section, []).append(callback.metrics_record())
        return records

    def _sections(self, task: Any, trainer: Trainer | None = None) -> dict[str, list[dict[str, Any]]]:
        fit_records = (self.fit_state or {}).get("records") or {}
        test_records = self._callback_records(trainer, at_test=True) if trainer is not None else {}
        sections = {
            section: list(fit_records.get(section, [])) + list(test_records.get(section, []))
            for section in {*SECTIONS, *fit_records, *test_records}
        }
        sections["compression"] = [describe_record(r, task.model) for r in task.transforms] + sections["compression"]
        return sections

    # ------------------------------------------------------------------ test
    @override
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        task = task_of(pl_module, "RunReport")
        run_dir = trainer.log_dir or trainer.default_root_dir  # a collective under DDP: every rank must ask
        if not trainer.is_global_zero or task.last_test_results is None:
            return
        fit = self.fit_state or {"init_from": task.init_from}  # no fit known: the weights came from init_from
        tested = None if trainer.ckpt_path is None else str(trainer.ckpt_path)
        run = RunInfo(tested, fit.get("resumed_from"), fit.get("init_from"), fit.get("fit_code"))
        report_test_results(trainer, task, task.last_test_results, run_dir, self._sections(task, trainer), run)

    # ------------------------------------------------------------------ predict
    @override
    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._predictions = []

    @override
    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if isinstance(outputs, dict) and "prediction" in outputs:
            self._predictions.append({key: outputs[key].detach().cpu() for key in ("prediction", "target")})

    @override
    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)  # a collective under DDP: every rank must ask
        if not self._predictions or not trainer.is_global_zero:
            return
        rows = {
            key: torch.cat([batch[key] for batch in self._predictions]).tolist() for key in ("prediction", "target")
        }
        write_predictions(run_dir / PREDICTIONS_FILE, rows["target"], rows["prediction"])
        print(f"wrote {run_dir / PREDICTIONS_FILE} ({len(rows['target'])} rows; rank 0's share under DDP)")
        self._predictions = []

    # ------------------------------------------------------------------ checkpoints
    @override
    def state_dict(self) -> dict[str, Any]:
        """The fit's records and origin (plain data), so a test of its checkpoints reports them."""
        return {} if self.fit_state is None else {"fit": self.fit_state}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "fit" in state_dict:
            self.fit_state = state_dict["fit"]


def warn_if_bf16_is_emulated(trainer: Trainer) -> None:
    """Warn when a CPU fit runs bf16 autocast on a CPU without native bf16 (it is then slower than fp32)."""
    precision = str(trainer.precision)
    on_cpu = trainer.strategy.root_device.type == "cpu"
    if precision.startswith("bf16") and on_cpu and cpu_has_native_bf16() is False:
        rank_zero_warn(
            f"trainer.precision={precision} on a CPU without native bf16 (no AVX-512 BF16 / AMX): PyTorch emulates "
            "it and it runs slower than fp32 here; use --trainer.precision=32-true (configs/trainer/cpu_fp32.yaml: "
            "fp32 that keeps channels-last, faster than NCHW here)"
        )
