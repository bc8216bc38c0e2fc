"""The ``remedies`` axis of a study file: long-tail remedies applied to every method's runs (docs/study.md).

A remedy applies to a variant's FP32 run and to every run that starts from it: the run ``m@r`` (method ``m``,
remedy ``r``) depends on the runs of ``m``'s dependencies with the same remedy ``r``. ``ce`` (plain cross-entropy,
no remedy) is the baseline: always present, first, and its runs keep the ids of a study without remedies
(``<variant>/<method>/seed<S>``), so adding the axis to a study that already ran only adds runs.

A **post-hoc** remedy (every callback it appends is a ``PostHocAdjustment``, and it sets no sampler or classifier)
changes nothing in training, so its runs train nothing: ``m@r`` is ``imbcompress test`` of the ``ce`` run of ``m``
with the remedy's callbacks, and depends on that run alone.

This module checks the file's structure (torch-free); what a remedy's callbacks and settings are worth is checked by
``remedy_check.py`` when ``study run`` validates the runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from imbcompress.study.fields import callback_list, check_keys, check_name, field_error, fragments, numbers
from imbcompress.yamlio import load_yaml_file

BASELINE = "ce"
BASELINE_LABEL = "cross-entropy"
REMEDY_KEYS = ("fragments", "callbacks", "sampler", "sampler_switch_epoch", "label")
SEPARATOR = "@"
# the class paths of imbcompress.callbacks.PostHocAdjustment (read without importing torch); a subclass of it
# elsewhere makes its remedy a fit like any other (correct, only slower: the model is trained again)
POSTHOC_CLASS_PATHS = (
    "PostHocAdjustment",
    "imbcompress.callbacks.PostHocAdjustment",
    "imbcompress.callbacks.posthoc_adjustment.PostHocAdjustment",
)


@dataclass(frozen=True)
class Remedy:
    """One entry of the ``remedies`` axis.

    Attributes:
        name: its name in the study file (``ce`` is the baseline: no remedy).
        fragments: remedy config fragments, appended after the method's (e.g. ``configs/remedies/ldam_drw.yaml``).
        callbacks: inline remedy callbacks, appended after the method's.
        sampler: the data module's ``sampler`` (a re-sampling remedy), or None to keep the configured one.
        sampler_switch_epoch: ``sampler_switch_epoch`` of ``sampler: deferred``.
        label: display name in the report.
        posthoc: whether it only adjusts the model at test (:func:`is_posthoc`): its runs test the ``ce`` runs'
            checkpoints instead of training.
    """

    name: str
    fragments: tuple[str, ...] = ()
    callbacks: tuple[dict, ...] = ()
    sampler: str | None = None
    sampler_switch_epoch: int | None = None
    label: str | None = None
    posthoc: bool = False

    def cli_args(self) -> list[str]:
        """Data-module arguments of an inline sampler (none without one)."""
        if self.sampler is None:
            return []
        args = [f"--data.init_args.sampler={self.sampler}"]
        if self.sampler_switch_epoch is not None:
            args.append(f"--data.init_args.sampler_switch_epoch={self.sampler_switch_epoch}")
        return args

    def record(self) -> dict[str, Any]:
        """What the remedy applies, as written into ``plan.json``."""
        data = {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}
        data["label"] = self.label or (BASELINE_LABEL if self.name == BASELINE else self.name)
        return data


def config_key(method: str, remedy: str) -> str:
    """The configuration a run belongs to: ``method`` under ``ce``, else ``method@remedy``."""
    return method if remedy == BASELINE else f"{method}{SEPARATOR}{remedy}"


def _parse_baseline(path: str, data: dict) -> Remedy:
    extra = [key for key in data if key != "label"]
    if extra:
        raise field_error(
            path,
            f"remedies.{BASELINE}.{extra[0]}",
            f"'{BASELINE}' is the plain cross-entropy baseline and applies no remedy (allowed: label); give the "
            "remedy another name",
        )
    return Remedy(BASELINE, label=data.get("label"))


def _fragment_callbacks(fragment: str) -> list[Any] | None:
    """The callbacks a fragment appends, or None when it sets anything else (or cannot be read: then it is a fit)."""
    try:
        data = load_yaml_file(fragment)
    except (OSError, yaml.YAMLError):  # missing or not YAML: remedy_check reports it before any run
        return None
    if not isinstance(data, dict) or set(data) != {"trainer"} or not isinstance(data["trainer"], dict):
        return None
    trainer = data["trainer"]
    if set(trainer) != {"callbacks+"} or not isinstance(trainer["callbacks+"], list):  # `callbacks` is refused
        return None
    return trainer["callbacks+"]


def is_posthoc(fragment_files: tuple[str, ...], callbacks: tuple[dict, ...], sampler: str | None) -> bool:
    """Whether a remedy only adjusts the model at test: at least one callback, every one a ``PostHocAdjustment``
    (by class path), no sampler, and fragments that append callbacks and set nothing else."""
    found: list[Any] = list(callbacks)
    for fragment in fragment_files:
        appended = _fragment_callbacks(fragment)
        if appended is None:
            return False
        found += appended
    paths = [cb.get("class_path") if isinstance(cb, dict) else None for cb in found]
    return sampler is None and bool(paths) and all(path in POSTHOC_CLASS_PATHS for path in paths)


def _parse_sampler(path: str, where: str, data: dict) -> tuple[str | None, int | None]:
    sampler, switch = data.get("sampler"), data.get("sampler_switch_epoch")
    if sampler is not None and not isinstance(sampler, str):
        raise field_error(path, f"{where}.sampler", f"expected a sampler name, got {sampler!r}")
    if switch is not None:
        if sampler is None:
            raise field_error(path, f"{where}.sampler_switch_epoch", "only allowed together with 'sampler'")
        numbers(path, f"{where}.sampler_switch_epoch", switch, 1, integer=True)
    return sampler, switch


def _parse_remedy(path: str, name: Any, data: Any, study_dir: Path, check_files: bool) -> Remedy:
    check_name(path, "remedies", name, "remedy")
    where = f"remedies.{name}"
    data = check_keys(path, where, data if data is not None else {}, REMEDY_KEYS)
    if name == BASELINE:
        return _parse_baseline(path, data)
    sampler, switch = _parse_sampler(path, where, data)
    files = fragments(path, f"{where}.fragments", data.get("fragments"), study_dir, check_files)
    callbacks = callback_list(path, f"{where}.callbacks", data.get("callbacks"))
    remedy = Remedy(
        name=name,
        fragments=files,
        callbacks=callbacks,
        sampler=sampler,
        sampler_switch_epoch=switch,
        label=data.get("label"),
        posthoc=is_posthoc(files, callbacks, sampler),
    )
    if not (remedy.fragments or remedy.callbacks or remedy.sampler):
        raise field_error(
            path,
            where,
            f"applies no remedy (give fragments, callbacks or sampler); plain cross-entropy is the built-in "
            f"'{BASELINE}'",
        )
    return remedy


def parse_remedies(path: str, data: Any, study_dir: Path, check_files: bool) -> dict[str, Remedy]:
    """The validated ``remedies`` mapping (name -> settings), ``ce`` first (added when the file omits it)."""
    if data is None:
        return {BASELINE: Remedy(BASELINE)}
    if not isinstance(data, dict) or not data:
        raise field_error(path, "remedies", f"expected a non-empty mapping of remedy name -> settings, got {data!r}")
    remedies = {name: _parse_remedy(path, name, value, study_dir, check_files) for name, value in data.items()}
    return {BASELINE: remedies.pop(BASELINE, Remedy(BASELINE)), **remedies}
