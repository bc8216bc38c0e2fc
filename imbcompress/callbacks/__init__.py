"""Lightning callbacks, one class per file: compression methods (thin adapters over ``imbcompress.compress``, on the
contract of ``base.py``), long-tail remedies (adapters over ``imbcompress.remedies``), the run report and the
last-checkpoint cadence.

Compression callbacks and remedies compose in one fit, in any order of the callback list (docs/architecture.md;
docs/remedies.md for the remedies).
"""

from imbcompress.callbacks.class_balanced_loss import ClassBalancedLoss
from imbcompress.callbacks.climbq import ClimbQ
from imbcompress.callbacks.filter_pruning import FilterPruning
from imbcompress.callbacks.focal_loss import FocalLoss
from imbcompress.callbacks.knowledge_distillation import KnowledgeDistillation
from imbcompress.callbacks.last_checkpoint import LastCheckpoint
from imbcompress.callbacks.ldam_drw_loss import LDAMDRWLoss
from imbcompress.callbacks.logit_adjusted_loss import LogitAdjustedLoss
from imbcompress.callbacks.loss_remedy import LossRemedy
from imbcompress.callbacks.posthoc_adjustment import PostHocAdjustment
from imbcompress.callbacks.quantization_aware_training import QuantizationAwareTraining
from imbcompress.callbacks.run_report import RunReport

__all__ = [
    "ClassBalancedLoss",
    "ClimbQ",
    "FilterPruning",
    "FocalLoss",
    "KnowledgeDistillation",
    "LDAMDRWLoss",
    "LastCheckpoint",
    "LogitAdjustedLoss",
    "LossRemedy",
    "PostHocAdjustment",
    "QuantizationAwareTraining",
    "RunReport",
]
