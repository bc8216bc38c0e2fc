"""Imbalanced datasets as in-memory tensors: counts, sources, batched augmentation, loaders, the data module."""

from imbcompress.data.datamodule import ImbalancedDataModule

__all__ = ["ImbalancedDataModule"]
