"""Reading checkpoint files safely (``weights_only``) with errors that name the setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def load_checkpoint_file(path: str, setting: str) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` on the CPU.

    Args:
        path: The file.
        setting: The configuration key that named the file, for error messages.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{setting}={path!r}: no such checkpoint file")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the setting named
        raise ValueError(f"{setting}={path!r} could not be read as a checkpoint: {err}") from err
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{setting}={path!r} holds a {type(checkpoint).__name__}, expected a checkpoint dict")
    return checkpoint


def model_state_from_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Tensor]:
    """The bare model's state dict from a task checkpoint (keys ``model.*``) or a plain model state dict."""
    state = checkpoint.get("state_dict", checkpoint)
    prefixed = {key[len("model.") :]: value for key, value in state.items() if key.startswith("model.")}
    return prefixed or {key: value for key, value in state.items() if isinstance(value, Tensor)}
