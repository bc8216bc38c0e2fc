"""Compression as Lightning callbacks: thin adapters over ``imbcompress.compress``, one class per file.

They compose in one fit, in any order of the callback list (docs/architecture.md, "Structural transforms").
"""

from imbcompress.callbacks.climbq import ClimbQ
from imbcompress.callbacks.filter_pruning import FilterPruning
from imbcompress.callbacks.knowledge_distillation import KnowledgeDistillation
from imbcompress.callbacks.quantization_aware_training import QuantizationAwareTraining

__all__ = ["ClimbQ", "FilterPruning", "KnowledgeDistillation", "QuantizationAwareTraining"]
