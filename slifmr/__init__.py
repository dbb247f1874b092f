"""slifmr: a distributed trainer for SLIF-MR (self-loop iterative fusion for multimodal recommendation)."""

__version__ = "0.1.0"
