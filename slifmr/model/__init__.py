"""SLIF-MR: views, graph fusion, losses and the named variants (slifmr.config.VARIANTS)."""

from slifmr.model.slifmr import SLIFMR, Batch

__all__ = ["SLIFMR", "Batch"]
