"""The ``imbcompress`` command (console script and ``python -m imbcompress``).

``imbcompress study ...`` goes to the study runner without importing torch or Lightning (status and report are
instant); ``export`` and ``ptq`` go to :mod:`imbcompress.deploy.command`; everything else goes to the LightningCLI
in :mod:`imbcompress.cli`.

A bad setting is reported in one line on stderr with exit status 2, like the parser's own errors: a
:class:`~imbcompress.errors.SettingsError` anywhere, and a ``ValueError`` or ``FileNotFoundError`` raised before
training or evaluation starts (while the classes are built and set up). An error inside the training or evaluation
loop is a bug and keeps its traceback. ``--debug`` (any position) or ``IMBCOMPRESS_DEBUG=1`` shows every traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from types import TracebackType

DEBUG_FLAG = "--debug"
DEBUG_ENV = "IMBCOMPRESS_DEBUG"
EXIT_BAD_SETTINGS = 2
_LOOP_FRAME = "_run_stage"  # Lightning's Trainer method that runs the training / evaluation loops


def _study(words: list[str]) -> int:
    from imbcompress.study.cli import main as study_main

    return study_main(words)


def _export(words: list[str]) -> int:
    from imbcompress.deploy import command

    return command.export_main(words)


def _ptq(words: list[str]) -> int:
    from imbcompress.deploy import command

    return command.ptq_main(words)


# The first word -> its command; every other first word goes to the LightningCLI (fit, validate, test, predict).
COMMANDS: dict[str, Callable[[list[str]], int]] = {"study": _study, "export": _export, "ptq": _ptq}


def main(argv: list[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in words or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    words = [word for word in words if word != DEBUG_FLAG]
    try:
        if words and words[0] in COMMANDS:
            return COMMANDS[words[0]](words[1:])
        _lightning_cli(words, from_command_line=argv is None)
    except (ValueError, FileNotFoundError) as err:
        cause = None if debug else settings_error_cause(err)
        if cause is None:
            raise
        print(f"imbcompress: error: {cause}", file=sys.stderr)
        print(f"(run again with {DEBUG_FLAG} or {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    return 0


def _lightning_cli(words: list[str], from_command_line: bool) -> None:
    from imbcompress.cli import run_cli

    if from_command_line:  # LightningCLI reads sys.argv itself (it warns when given args while sys.argv has some)
        sys.argv[1:] = words
        run_cli(None)
    else:
        run_cli(words)


def settings_error_cause(err: BaseException) -> BaseException | None:
    """The exception to report in one line if ``err`` is a bad setting, else None (a bug: keep the traceback).

    jsonargparse wraps an error of a class's ``__init__`` in its own ``ValueError``. The innermost
    :class:`~imbcompress.errors.SettingsError` of the chain names the setting; its cause may itself be a
    ``ValueError`` (e.g. the ``UnicodeDecodeError`` of a corrupt file) that does not, so it is never preferred to
    one. Without a ``SettingsError``, the innermost ``ValueError`` or ``FileNotFoundError`` is reported.
    """
    from imbcompress.errors import SettingsError

    chain = _exception_chain(err)
    ours = [item for item in chain if isinstance(item, SettingsError)]
    if ours:
        return ours[-1]
    if _raised_in_loop(err.__traceback__):
        return None
    relevant = [item for item in chain if isinstance(item, (ValueError, FileNotFoundError))]
    return relevant[-1] if relevant else err


def _exception_chain(err: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _raised_in_loop(tb: TracebackType | None) -> bool:
    while tb is not None:
        if tb.tb_frame.f_code.co_name == _LOOP_FRAME:
            return True
        tb = tb.tb_next
    return False


if __name__ == "__main__":
    sys.exit(main())
