"""Names shared by the fit and the torch-free study runner: result files, their schema, imbalance settings."""

from __future__ import annotations

METRICS_FILE = "metrics.json"
SCHEMA_VERSION = 1
PROFILES = ("balanced", "step", "linear", "exponential")
HEADS = ("first", "last")
