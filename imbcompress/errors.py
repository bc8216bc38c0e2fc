"""The project's error types: a bad setting is reported in one line by the command (see ``__main__.py``)."""

from __future__ import annotations


class SettingsError(ValueError):
    """A setting (a command-line option, a config key, a file it names) is unusable; the message says which and why.

    The ``imbcompress`` command prints it in one line and exits with status 2 (the traceback with ``--debug``).
    """


class SettingsFileNotFoundError(SettingsError, FileNotFoundError):
    """A file named by a setting does not exist."""
