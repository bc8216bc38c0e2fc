"""Robustness studies: grids of runs (spec, plan), execution (runner, slurm), aggregation and report.

``imbcompress.study.report`` (matplotlib) is imported only by ``study report``, so runs and jobs start fast.
"""

from imbcompress.study.aggregate import gap_summary, performance_gap, robustness
from imbcompress.study.attempt import execute_run
from imbcompress.study.plan import Plan, Run, expand, load_plan
from imbcompress.study.scheduler import LocalScheduler, run_plan
from imbcompress.study.spec import Study, load_study, parse_study

__all__ = [
    "LocalScheduler",
    "Plan",
    "Run",
    "Study",
    "execute_run",
    "expand",
    "gap_summary",
    "load_plan",
    "load_study",
    "parse_study",
    "performance_gap",
    "robustness",
    "run_plan",
]
