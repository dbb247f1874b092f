"""SLIF-MR: views, graph fusion, losses and the named variants (slifmr.config.VARIANTS)."""

from slifmr.model.graphs import EpochGraphs, StaticGraphs, epoch_graphs
from slifmr.model.slifmr import SLIFMR, Representations, TrainingBatch

__all__ = ["SLIFMR", "EpochGraphs", "Representations", "StaticGraphs", "TrainingBatch", "epoch_graphs"]
