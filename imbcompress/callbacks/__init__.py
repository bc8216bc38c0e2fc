"""Lightning callbacks, one class per file: compression methods (thin adapters over ``imbcompress.compress``, on the
contract of ``base.py``), the run report and the last-checkpoint cadence.

Compression callbacks compose in one fit, in any order of the callback list (docs/architecture.md).
"""

from imbcompress.callbacks.climbq import ClimbQ
from imbcompress.callbacks.filter_pruning import FilterPruning
from imbcompress.callbacks.knowledge_distillation import KnowledgeDistillation
from imbcompress.callbacks.last_checkpoint import LastCheckpoint
from imbcompress.callbacks.quantization_aware_training import QuantizationAwareTraining
from imbcompress.callbacks.run_report import RunReport

__all__ = [
    "ClimbQ",
    "FilterPruning",
    "KnowledgeDistillation",
    "LastCheckpoint",
    "QuantizationAwareTraining",
    "RunReport",
]
