"""The ``imbcompress`` command (console script and ``python -m imbcompress``).

``imbcompress study ...`` goes to the study runner without importing torch or Lightning (status and report are
instant); ``export`` and ``ptq`` go to :mod:`imbcompress.deploy.command`; everything else goes to the LightningCLI
in :mod:`imbcompress.cli`.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0] == "study":
        from imbcompress.study.cli import main as study_main

        return study_main(words[1:])
    if words and words[0] in ("export", "ptq"):
        from imbcompress.deploy import command

        return (command.export_main if words[0] == "export" else command.ptq_main)(words[1:])
    from imbcompress.cli import run_cli

    run_cli(argv)  # None: LightningCLI reads sys.argv itself
    return 0


if __name__ == "__main__":
    sys.exit(main())
