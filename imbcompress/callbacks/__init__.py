"""Compression and long-tail remedies as Lightning callbacks: thin adapters over ``imbcompress.compress`` and
``imbcompress.remedies``, one class per file.

They compose in one fit, in any order of the callback list (docs/architecture.md, "Structural transforms";
docs/remedies.md for the remedies).
"""

from imbcompress.callbacks.class_balanced_loss import ClassBalancedLoss
from imbcompress.callbacks.climbq import ClimbQ
from imbcompress.callbacks.filter_pruning import FilterPruning
from imbcompress.callbacks.focal_loss import FocalLoss
from imbcompress.callbacks.knowledge_distillation import KnowledgeDistillation
from imbcompress.callbacks.ldam_drw_loss import LDAMDRWLoss
from imbcompress.callbacks.logit_adjusted_loss import LogitAdjustedLoss
from imbcompress.callbacks.loss_remedy import LossRemedy
from imbcompress.callbacks.posthoc_adjustment import PostHocAdjustment
from imbcompress.callbacks.quantization_aware_training import QuantizationAwareTraining

__all__ = [
    "ClassBalancedLoss",
    "ClimbQ",
    "FilterPruning",
    "FocalLoss",
    "KnowledgeDistillation",
    "LDAMDRWLoss",
    "LogitAdjustedLoss",
    "LossRemedy",
    "PostHocAdjustment",
    "QuantizationAwareTraining",
]
