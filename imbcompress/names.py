"""Names and limits shared by the training code and the study runner, defined once.

Torch-free on purpose: the study commands import it without loading torch or Lightning.
"""

from __future__ import annotations

from typing import Literal, get_args

METRICS_FILE = "metrics.json"
"""The file a test writes into its run directory (schema in docs/architecture.md)."""
SCHEMA_VERSION = 1
"""Version of the metrics.json layout; raised when a key changes meaning or disappears."""

Profile = Literal["balanced", "step", "linear", "exponential"]
Head = Literal["first", "last"]
PROFILES: tuple[str, ...] = get_args(Profile)
HEADS: tuple[str, ...] = get_args(Head)

FULL_PRECISION_BITS = 32


def check_bits(setting: str, bits: object, low: int = 1, high: int = 8, full_precision: bool = False) -> None:
    """Raise a ``ValueError`` naming ``setting`` unless ``bits`` is an int in ``low..high``.

    Args:
        setting: The option's name for the message, e.g. "QuantizationAwareTraining.weight_bits".
        bits: The value to check (bools are rejected).
        low: Smallest allowed bit width.
        high: Largest allowed bit width.
        full_precision: Also allow 32, meaning "not quantized".
    """
    in_range = isinstance(bits, int) and not isinstance(bits, bool) and low <= bits <= high
    if in_range or (full_precision and bits == FULL_PRECISION_BITS and not isinstance(bits, bool)):
        return
    extra = f" or {FULL_PRECISION_BITS} (off)" if full_precision else ""
    raise ValueError(f"{setting} must be an integer in {low}..{high}{extra}, got {bits!r}")
