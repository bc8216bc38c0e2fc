"""Check every run's full fit configuration before the first run starts, by parsing it as ``fit`` will.

Parsing goes through the same LightningCLI parser as ``imbcompress fit`` (config files, ``class_path`` imports,
argument types), without instantiating anything: no data is read and no checkpoint is needed, so a run whose
dependencies have not trained yet can still be checked. The study's remedies are checked too, entry by entry and
in every parsed configuration (``remedy_check.py``). PTQ runs are not fits: their settings are checked by the study
file (``spec.py``) and by ``imbcompress ptq`` itself before it writes anything. Imports torch and Lightning, so only
``study run`` uses it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Any

from imbcompress.study.plan import Plan, Run
from imbcompress.study.state import is_done

SHOWN_PROBLEMS = 5


def uses_imbcompress(command_prefix: list[str]) -> bool:
    """Whether the fit command is imbcompress's own (``python -m imbcompress``, ``imbcompress``): its parser applies."""
    return command_prefix[-2:] == ["-m", "imbcompress"] or Path(command_prefix[-1]).name == "imbcompress"


def _parse_only_cli() -> Any:
    from imbcompress.cli import ImbCompressCLI

    class ParseOnly(ImbCompressCLI):
        """The fit's CLI stopped after parsing: nothing is instantiated, nothing is locked or written."""

        def before_instantiate_classes(self) -> None:
            pass

        def instantiate_classes(self) -> None:
            pass

    return ParseOnly


def parse_error(args: list[str]) -> str | None:
    """The parser's error for the arguments of ``fit`` (without the word ``fit``), or None when they parse."""
    return parse_fit_args(args)[1]


def parse_fit_args(args: list[str]) -> tuple[Any, str | None]:
    """The parsed configuration of the arguments of ``fit`` (without the word ``fit``), or None and the error."""
    cli, error = _parse_fit_cli(args)
    return (None, error) if cli is None else (cli.config, None)


def _parse_fit_cli(args: list[str]) -> tuple[Any, str | None]:
    """The parse-only CLI of the arguments of ``fit`` (its ``parser`` and ``config``), or None and the error."""
    from imbcompress.cli import run_cli

    stderr = io.StringIO()
    seed_logger = logging.getLogger("lightning.fabric.utilities.seed")
    level = seed_logger.level
    seed_logger.setLevel(logging.WARNING)  # "Seed set to 0" once per run is noise here
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            cli = run_cli(args, run=False, cli_class=_parse_only_cli())
    except SystemExit:
        text = stderr.getvalue()
        message = text[text.rindex("error:") + len("error:") :] if "error:" in text else text[-2000:]
        # the parser repeats the whole value (with run-specific paths): the lines above it say what is wrong
        lines = [line for line in message.strip().splitlines() if not line.strip().startswith("Given value")]
        return None, "\n".join(lines)
    finally:
        seed_logger.setLevel(level)
    return cli, None


def _fit_args(run: Run, scratch: Path) -> list[str]:
    """The arguments of ``run``'s fit (without the word ``fit``), its generated fragment written under ``scratch``."""
    fragment = None
    if run.callbacks:
        fragment = scratch / f"{run.id.replace('/', '__')}.yaml"
        fragment.write_text(run.fragment_text())
    return run.command([], fragment=str(fragment) if fragment else None)[1:]


def parse_run(run: Run, scratch: Path) -> tuple[Any, str | None]:
    """One run's parsed configuration (its generated fragment written under ``scratch``), or None and the error."""
    return parse_fit_args(_fit_args(run, scratch))


def parsed_yaml(run: Run, scratch: Path) -> dict:
    """The configuration ``run``'s fit would save as its ``config.yaml`` before writing into it (the parser's dump,
    as LightningCLI saves it; the run directory's logger is added when the fit starts).

    Raises:
        ValueError: the run's arguments do not parse.
    """
    import yaml

    cli, error = _parse_fit_cli(_fit_args(run, scratch))
    if cli is None:
        raise ValueError(f"run {run.id}: its fit configuration does not parse: {error}")
    return yaml.safe_load(cli.parser.dump(cli.config, skip_none=False))


def checked_config(run: Run, scratch: Path) -> tuple[Any, str | None]:
    """One run's parsed configuration and its problem: the parse error, or what its remedies would refuse at
    ``setup`` (``remedy_check.config_problem``), or None."""
    from imbcompress.study.remedy_check import config_problem

    config, error = parse_run(run, scratch)
    return config, error if error is not None else config_problem(config)


def run_problem(run: Run, scratch: Path) -> str | None:
    """The problem of one run's configuration (:func:`checked_config`), or None."""
    return checked_config(run, scratch)[1]


def shape(run: Run) -> tuple:
    """Runs of the same shape differ only in values the study file validates itself (ratio, minority count,
    seed) and in paths (their directory, their dependencies'), so they parse alike: one of each is parsed."""
    variant = run.variant
    return (run.method, run.remedy, variant["profile"], variant["head"], variant["minority_classes"] is None)


def check_remedies(plan: Plan) -> None:
    """Raise a ``ValueError`` listing every invalid remedy entry of the plan (``remedy_check.remedy_problems``)."""
    from imbcompress.study.remedy_check import remedy_problems

    problems = remedy_problems(plan.remedies)
    if problems:
        raise ValueError("some remedies of the study are invalid (nothing was started):\n  " + "\n  ".join(problems))


def validate_runs(plan: Plan) -> int:
    """Check the remedy entries, then parse the configuration of each shape of unfinished fit (:func:`shape`);
    returns how many were parsed.

    Raises:
        ValueError: listing each problem with the runs it affects (nothing has been started or written).
    """
    check_remedies(plan)
    problems: dict[str, list[str]] = {}
    representatives: dict[tuple, Run] = {}
    for run in plan.runs:
        if run.kind == "fit" and not is_done(run.dir):
            representatives.setdefault(shape(run), run)
    with tempfile.TemporaryDirectory(prefix="imbcompress-validate-") as scratch:
        for key, run in representatives.items():
            problem = run_problem(run, Path(scratch))
            if problem is not None:
                problems.setdefault(problem, []).extend(r.id for r in plan.runs if shape(r) == key)
    if problems:
        lines = [
            f"{len(ids)} run(s) (e.g. {ids[0]}): " + problem.replace("\n", "\n    ")
            for problem, ids in problems.items()
        ]
        more = len(lines) - SHOWN_PROBLEMS
        shown = lines[:SHOWN_PROBLEMS] + ([f"... and {more} more problem(s)"] if more > 0 else [])
        raise ValueError(
            "the fit configuration of some runs is invalid (nothing was started):\n  " + "\n  ".join(shown)
        )
    return len(representatives)
