"""Reading checkpoint files safely (``weights_only``) with errors that name the file, the setting and the cause.

Every checkpoint the project reads goes through :func:`load_checkpoint_file`: ``model.init_from``, the distillation
teacher, and ``--ckpt_path`` (checked by the CLI before Lightning loads it). It loads tensors and plain values only,
with ``weights_only=True`` passed explicitly, so a crafted pickle cannot run code on any admitted torch version.
"""

from __future__ import annotations

import inspect
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from imbcompress.errors import SettingsError, SettingsFileNotFoundError

_SHOWN_KEYS = 3  # how many mismatching keys a message lists
_CKPT_PATH_KEYWORDS = frozenset({"last", "hpc", "registry"})  # Lightning resolves these itself


def load_checkpoint_file(path: str | Path, setting: str) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` on the CPU.

    Args:
        path: The file.
        setting: The configuration key that named the file, for error messages.

    Raises:
        SettingsFileNotFoundError: The file does not exist.
        SettingsError: It is truncated, corrupt, not a checkpoint, or needs code to load (a pickled object).
    """
    file = Path(path)
    if not file.is_file():
        raise SettingsFileNotFoundError(f"{setting}={str(path)!r}: no such checkpoint file")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file, the setting and the cause
        raise SettingsError(_unreadable_message(file, setting, err)) from err
    if not isinstance(checkpoint, dict):
        raise SettingsError(f"{setting}={str(path)!r} holds a {type(checkpoint).__name__}, expected a checkpoint dict")
    return checkpoint


def _unreadable_message(file: Path, setting: str, err: Exception) -> str:
    text = str(err)
    blocked = re.search(r"GLOBAL ([\w.]+)", text)
    if isinstance(err, pickle.UnpicklingError) and blocked:
        return (
            f"{setting}={str(file)!r} refused: loading it would run code ({blocked.group(1)}). imbcompress reads "
            "checkpoints as tensors and plain values only (weights_only=True); give a checkpoint written by "
            "imbcompress, or re-save the state dict of a model you trust"
        )
    if not zipfile.is_zipfile(file):
        return (
            f"{setting}={str(file)!r} is not a complete checkpoint ({file.stat().st_size} bytes, not a torch.save "
            "archive): the file is truncated or corrupt (e.g. a copy or a save that was cut short), or not a "
            "checkpoint at all; give an intact .ckpt file"
        )
    first_line = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return f"{setting}={str(file)!r} could not be read as a checkpoint (the archive is damaged?): {first_line}"


def check_ckpt_path(ckpt_path: Any) -> dict[str, Any] | None:
    """Check a ``--ckpt_path`` before Lightning loads it: it must exist and load with ``weights_only=True``.

    Lightning's own load of the same file follows (with ``weights_only=True`` where Lightning accepts the option);
    this check makes the refusal of an unsafe, truncated or missing file one clear message on every version.
    Lightning's keywords (``last``, ``hpc``, ``registry``) are left to Lightning; remote URLs are refused.

    Returns:
        The loaded checkpoint (None for no path or a keyword), so the caller need not read the file again.
    """
    if ckpt_path is None or str(ckpt_path) in _CKPT_PATH_KEYWORDS:
        return None
    if "://" in str(ckpt_path):
        raise SettingsError(f"--ckpt_path={str(ckpt_path)!r}: only local checkpoint files are accepted; copy it here")
    return load_checkpoint_file(str(ckpt_path), setting="--ckpt_path")


def secure_subcommand_config(config: Any) -> dict[str, Any] | None:
    """Check a subcommand's ``ckpt_path`` (:func:`check_ckpt_path`) and make Lightning load it with weights only.

    Args:
        config: The parsed configuration of ``fit``/``validate``/``test``/``predict`` (a jsonargparse namespace).

    Returns:
        The loaded checkpoint, or None without one (:func:`check_ckpt_path`).
    """
    checkpoint = check_ckpt_path(config.get("ckpt_path"))
    if "weights_only" in config and config.get("weights_only") is None:  # Lightning >= 2.6 has the option
        config["weights_only"] = True
    return checkpoint


def model_state_from_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Tensor]:
    """The bare model's state dict from a task checkpoint (keys ``model.*``) or a plain model state dict."""
    state = checkpoint.get("state_dict", checkpoint)
    prefixed = {key[len("model.") :]: value for key, value in state.items() if key.startswith("model.")}
    return prefixed or {key: value for key, value in state.items() if isinstance(value, Tensor)}


def check_checkpoint_arch(checkpoint: dict[str, Any], arch: str, path: str, setting: str) -> None:
    """Refuse a task checkpoint whose saved architecture (``hyper_parameters.arch``; ``model`` in older
    checkpoints) is not ``arch``."""
    hparams = checkpoint.get("hyper_parameters") or {}
    saved = hparams.get("arch", hparams.get("model"))
    if saved is not None and saved != arch:
        raise SettingsError(f"{setting}={path!r} is a {saved} checkpoint, but this model is {arch}")


def load_state_checked(module: nn.Module, state: dict[str, Tensor], path: str, setting: str, arch: str) -> None:
    """``module.load_state_dict(state)``, with one message naming the counts and first keys when they do not fit."""
    own = module.state_dict()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    reshaped = [
        f"{key} {tuple(state[key].shape)} vs {tuple(value.shape)}"
        for key, value in own.items()
        if key in state and state[key].shape != value.shape
    ]
    if missing or unexpected or reshaped:
        parts = [
            f"{len(found)} {kind} (first: {', '.join(found[:_SHOWN_KEYS])})"
            for kind, found in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped))
            if found
        ]
        raise SettingsError(
            f"{setting}={path!r}: its keys/shapes do not match architecture {arch}: {'; '.join(parts)}. Give a "
            f"checkpoint of a {arch} with the same settings (shortcut, number of classes, classifier: linear or cosine)"
        )
    module.load_state_dict(state)


def module_from_checkpoint(cls: type[nn.Module], path: str, setting: str) -> Any:
    """Rebuild a LightningModule of class ``cls`` from its checkpoint, read with :func:`load_checkpoint_file`.

    Like Lightning's ``load_from_checkpoint`` (constructor from the saved hyperparameters, then
    ``on_load_checkpoint``, then the state dict), but loading tensors only and with errors that name ``setting``.
    """
    checkpoint = load_checkpoint_file(path, setting)
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise SettingsError(
            f"{setting}={path!r} is not a checkpoint of a trained imbcompress model (it has no hyper_parameters or "
            "state_dict); give the .ckpt written by `imbcompress fit`, e.g. RUN/checkpoints/last.ckpt"
        )
    accepted = inspect.signature(cls).parameters
    module = cls(**{key: value for key, value in hparams.items() if key in accepted})
    module.on_load_checkpoint(checkpoint)  # type: ignore[operator]  # replays the saved compression
    load_state_checked(module, checkpoint["state_dict"], path, setting, str(hparams.get("arch", hparams.get("model"))))
    return module
