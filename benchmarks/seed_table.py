"""Shared by the real-data table scripts beside it: one table cell from per-seed values."""

from __future__ import annotations


def seed_cell(values: list[float]) -> str:
    """The mean over seeds, then each seed's value in parentheses when there is more than one (2 decimals)."""
    mean = sum(values) / len(values)
    return f"{mean:.2f}" + (f" ({' / '.join(f'{v:.2f}' for v in values)})" if len(values) > 1 else "")
