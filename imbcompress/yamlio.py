"""YAML reading that refuses duplicate keys (PyYAML keeps the last one silently), for study and config files.

Torch-free. :func:`load_yaml_file` reads a study file; :func:`use_for_config_files` makes jsonargparse (the
LightningCLI's parser) refuse duplicate keys in ``--config`` files and YAML values too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

MERGE_KEY = "<<"


class DuplicateKeyError(yaml.YAMLError, ValueError):
    """A mapping in a YAML document has the same key twice."""


def find_duplicate_key(text: str) -> tuple[str, int, int] | None:
    """The first duplicated mapping key of a YAML text as ``(key, line, first line)`` (1-based), or None.

    Raises:
        yaml.YAMLError: the text is not valid YAML.
    """
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    pending = [root] if root is not None else []
    while pending:
        node = pending.pop()
        if isinstance(node, yaml.SequenceNode):
            pending.extend(reversed(node.value))
        elif isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key, value in node.value:
                line = key.start_mark.line + 1
                name = key.value if isinstance(key, yaml.ScalarNode) else None
                if name is not None and name != MERGE_KEY:
                    if name in seen:
                        return str(name), line, seen[name]
                    seen[name] = line
                pending.append(value)
    return None


def check_unique_keys(text: str, source: str) -> None:
    """Raise :class:`DuplicateKeyError` naming ``source``, the key and both lines when a key repeats."""
    found = find_duplicate_key(text)
    if found is not None:
        key, line, first = found
        raise DuplicateKeyError(f"{source}: duplicate key {key!r} at line {line} (first at line {first})")


def load_yaml_text(text: str, source: str = "<yaml>") -> Any:
    """``yaml.safe_load`` that refuses duplicate keys."""
    check_unique_keys(text, source)
    return yaml.safe_load(text)


def load_yaml_file(path: str | Path) -> Any:
    """Read a YAML file, refusing duplicate keys (the error names the file, the key and the line)."""
    return load_yaml_text(Path(path).read_text(), str(path))


def unique_keys_loader(load: Callable[[str], Any]) -> Callable[..., Any]:
    """Wrap a jsonargparse YAML loader so that it refuses duplicate keys before loading.

    jsonargparse passes a config file's ``path`` to a loader that takes one, so the error names the file.
    """

    def loader(text: str, path: str | Path = "") -> Any:
        if isinstance(text, str) and ":" in text:  # a scalar CLI value has no mapping to check
            check_unique_keys(text, str(path) or "YAML value")
        return load(text)

    return loader


def use_for_config_files() -> None:
    """Make jsonargparse refuse duplicate keys in config files (idempotent; call before parsing)."""
    from jsonargparse import get_loader, set_loader

    current = get_loader("yaml")
    if getattr(current, "refuses_duplicate_keys", False):
        return
    wrapped = unique_keys_loader(current)
    wrapped.refuses_duplicate_keys = True  # type: ignore[attr-defined]
    set_loader("yaml", wrapped, (yaml.YAMLError,))
