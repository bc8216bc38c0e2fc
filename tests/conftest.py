"""Shared test setup: quiet, deterministic, single-threaded enough to share 2 cores."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# tests/ holds importable helpers (fakedata, cli_helpers) used by tests in sub-folders too.
sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("PL_DISABLE_FORK", "1")
