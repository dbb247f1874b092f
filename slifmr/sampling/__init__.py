"""Sampling: BPR triples with uniform negatives, and neighbor-sampled subgraphs of the
epoch's heterogeneous graph (`slifmr.sampling.neighbor`)."""

from slifmr.sampling.negative import BPRSampler

__all__ = ["BPRSampler"]
