"""Checks of study-file fields, shared by the sections of the file (``spec.py``, ``remedies.py``).

Every check raises a ``ValueError`` that names the file, the key and the value (and what is allowed).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.+-]+$")


def field_error(path: str, key: str, message: str) -> ValueError:
    """The error of one key of a study file."""
    return ValueError(f"study file {path}: {key}: {message}")


def check_keys(path: str, where: str, data: Any, allowed: tuple[str, ...]) -> dict:
    """``data`` as a mapping whose keys are all in ``allowed``."""
    if not isinstance(data, dict):
        raise field_error(path, where, f"expected a mapping, got {data!r}")
    unknown = [key for key in data if key not in allowed]
    if unknown:
        raise field_error(path, where, f"unknown key {unknown[0]!r} (allowed: {', '.join(allowed)})")
    return data


def check_name(path: str, where: str, name: Any, what: str) -> str:
    """A method or remedy name: letters, digits, ``_ . + -``."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise field_error(path, where, f"invalid {what} name {name!r} (allowed: letters, digits, _ . + -)")
    return name


def as_list(value: Any) -> list:
    """A scalar as a one-item list; lists and tuples as lists."""
    return list(value) if isinstance(value, list | tuple) else [value]


def str_list(path: str, key: str, value: Any) -> tuple[str, ...]:
    """A list of strings (a single string is a list of one; None is empty)."""
    items = as_list(value if value is not None else [])
    if not all(isinstance(item, str) for item in items):
        raise field_error(path, key, f"expected a list of strings, got {value!r}")
    return tuple(items)


def resolve_fragment(fragment: str, study_dir: Path, check_files: bool = True) -> str:
    """Absolute path of a fragment: as given if absolute, else under the study's directory, else under the cwd."""
    candidate = Path(fragment)
    if candidate.is_absolute():
        found = candidate if candidate.exists() else None
    else:
        found = next((p for p in (study_dir / candidate, Path.cwd() / candidate) if p.exists()), None)
    if found is not None:
        return str(found.resolve())
    if check_files:
        raise FileNotFoundError(fragment)
    return str((Path.cwd() / candidate).resolve())


def fragments(path: str, key: str, value: Any, study_dir: Path, check_files: bool) -> tuple[str, ...]:
    """Fragment files, resolved (:func:`resolve_fragment`); a missing one is an error naming where it was looked for."""
    resolved = []
    for fragment in str_list(path, key, value):
        try:
            resolved.append(resolve_fragment(fragment, study_dir, check_files))
        except FileNotFoundError:
            where = f"{study_dir} or {Path.cwd()}"
            raise field_error(path, key, f"fragment file {fragment!r} not found (looked under {where})") from None
    return tuple(resolved)


def numbers(path: str, key: str, value: Any, minimum: float, integer: bool) -> list:
    """A number or list of numbers, each >= ``minimum`` (integers only with ``integer``)."""
    items = as_list(value)
    kind = int if integer else int | float
    for item in items:
        if isinstance(item, bool) or not isinstance(item, kind) or item < minimum:
            what = "integers" if integer else "numbers"
            raise field_error(path, key, f"invalid value {item!r} (allowed: {what} >= {minimum})")
    return items


def callback_list(path: str, key: str, value: Any) -> tuple[dict, ...]:
    """Inline callbacks: a list of ``{class_path, init_args}`` mappings."""
    callbacks = as_list(value or [])
    if not all(isinstance(cb, dict) and "class_path" in cb for cb in callbacks):
        raise field_error(path, key, f"expected a list of {{class_path, init_args}} mappings, got {callbacks}")
    return tuple(callbacks)
