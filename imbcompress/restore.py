"""Checking a ``--ckpt_path`` against the configuration before the run writes anything.

Lightning restores the checkpoint after the callbacks' setup, when the run's ``config.yaml`` and TensorBoard files
exist already, and refuses a checkpoint that does not fit with a message that names neither the option nor the file.
:func:`check_restore` refuses first, in one message naming ``--ckpt_path``, the file and what was expected, what
that restore would refuse: a file that is not a Lightning checkpoint (for ``fit``: one without the optimiser state a
resume needs), a compression other than the one the configuration applies, and weights of other keys or shapes
than the model the configuration builds. Lightning's own restore still runs, and still checks the rest.
"""

from __future__ import annotations

import copy
from typing import Any

from imbcompress.callbacks.base import StructuralCompression
from imbcompress.checkpoint import load_state_checked, model_state_from_checkpoint
from imbcompress.compress.transforms import TRANSFORMS_KEY, compatible
from imbcompress.errors import SettingsError
from imbcompress.task import ImbalanceClassifier

SETTING = "--ckpt_path"
CHECKPOINT_KEYS = ("state_dict", "pytorch-lightning_version")
"""What every Lightning checkpoint holds (a plain ``torch.save(model.state_dict())`` does not)."""
RESUME_KEYS = ("optimizer_states",)
"""What a fit resumes besides the weights (a ``save_weights_only`` checkpoint lacks it)."""


def check_restore(checkpoint: dict[str, Any], path: str, task: Any, callbacks: list[Any], fitting: bool) -> None:
    """Refuse a checkpoint that Lightning could not restore into ``task`` (built, its callbacks not yet set up).

    Args:
        checkpoint: The checkpoint, loaded with ``weights_only=True``.
        path: Its file, for the message.
        task: The LightningModule of the run; the compression and weights are checked for the imbcompress task only.
        callbacks: The trainer's callbacks (the structural compression ones apply their records before the restore).
        fitting: Whether the run is a ``fit`` (a resume needs the optimiser state too).

    Raises:
        SettingsError: The checkpoint does not fit; the message names ``--ckpt_path``, the file and what was expected.
    """
    _check_keys(checkpoint, path, fitting)
    if not isinstance(task, ImbalanceClassifier):
        return
    _check_compression(checkpoint.get(TRANSFORMS_KEY) or [], path, planned_records(task, callbacks))
    _check_weights(checkpoint, path, task)


def planned_records(task: ImbalanceClassifier, callbacks: list[Any]) -> list[dict[str, Any]]:
    """The structural records the model will carry when Lightning restores the checkpoint: those it has (from
    ``init_from``), then one per structural compression callback that has none yet (kind and settings only)."""
    planned = [dict(record) for record in task.transforms]
    for callback in callbacks:
        if isinstance(callback, StructuralCompression) and callback.applied_record(task) is None:
            planned.append({"kind": callback.method, "settings": callback.settings})
    return planned


def _check_keys(checkpoint: dict[str, Any], path: str, fitting: bool) -> None:
    missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
    if missing or not isinstance(checkpoint.get("state_dict"), dict):
        raise SettingsError(
            f"{SETTING}={path!r} is not a checkpoint written by `imbcompress fit` (it has no {' or '.join(missing)}): "
            "give a run's checkpoints/last.ckpt; to start from a model's weights alone, use --model.init_args.init_from"
        )
    missing = [key for key in RESUME_KEYS if key not in checkpoint]
    if fitting and missing:
        raise SettingsError(
            f"{SETTING}={path!r} holds the weights only (no {' or '.join(missing)}), so a fit cannot resume from it: "
            f"give the run's checkpoints/last.ckpt, or start a new fit from these weights with "
            f"--model.init_args.init_from={path}"
        )


def _check_compression(saved: list[dict[str, Any]], path: str, planned: list[dict[str, Any]]) -> None:
    # The rule of TransformLog.replay: the records applied before the restore must begin the checkpoint's.
    if len(saved) >= len(planned) and all(compatible(old, new) for old, new in zip(saved, planned)):
        return
    raise SettingsError(
        f"{SETTING}={path!r} was trained with the compression {_describe(saved)}, but this configuration applies "
        f"{_describe(planned)} before restoring it (it must apply the checkpoint's first records, or none). Use the "
        "configuration the checkpoint was trained with (its run's config.yaml)"
    )


def _describe(records: list[dict[str, Any]]) -> str:
    return "[" + ", ".join(f"{record.get('kind')!r} {record.get('settings') or ''}".strip() for record in records) + "]"


def _check_weights(checkpoint: dict[str, Any], path: str, task: ImbalanceClassifier) -> None:
    scratch = copy.deepcopy(task)  # Lightning's restore, on a copy: the architecture check and the compression replay
    try:
        scratch.on_load_checkpoint(checkpoint)
    except ValueError as err:
        raise SettingsError(f"{SETTING}={path!r}: {err}") from err
    arch = str(scratch.hparams["arch"])
    load_state_checked(scratch.model, model_state_from_checkpoint(checkpoint), path, SETTING, arch)
