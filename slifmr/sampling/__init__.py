"""Sampling: BPR triples with uniform negatives (neighbor sampling comes with the scale issue)."""

from slifmr.sampling.negative import BPRSampler

__all__ = ["BPRSampler"]
