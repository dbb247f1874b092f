"""slifmr: a distributed trainer for SLIF-MR (self-loop iterative fusion for multimodal recommendation).

    import slifmr
    run = slifmr.train(variant="slifmr", epochs=5)
    run.recommend(["196"], k=10)
"""

from slifmr.api import Run, load_run, train

__version__ = "0.1.0"
__all__ = ["Run", "__version__", "load_run", "train"]
