"""Shared by the real-data table scripts beside it: one table cell from per-seed values, and their command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

Table = Callable[[Path, list[int]], tuple[list[str], list[str]]]
"""A table script's ``table(folder, seeds)``: the lines to print and the rows left out (not finished)."""


def seed_cell(values: list[float]) -> str:
    """The mean over seeds, then each seed's value in parentheses when there is more than one (2 decimals)."""
    mean = sum(values) / len(values)
    return f"{mean:.2f}" + (f" ({' / '.join(f'{v:.2f}' for v in values)})" if len(values) > 1 else "")


def table_main(table: Table, description: str, folder_help: str) -> None:
    """The command line of a table script: ``FOLDER [--seeds S ...]``; prints the table, and the rows left out on
    stderr."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("folder", type=Path, help=folder_help)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    lines, missing = table(args.folder, args.seeds)
    print("\n".join(lines))
    if missing:
        print(f"left out (not finished for every seed): {', '.join(missing)}", file=sys.stderr)
