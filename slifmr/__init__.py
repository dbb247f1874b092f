"""slifmr: a distributed trainer for SLIF-MR (self-loop iterative fusion for multimodal recommendation).

    import slifmr
    run = slifmr.train(variant="slifmr", epochs=5)
    run.recommend(["196"], k=10)
    slifmr.import_table(df, "data/mine")          # a DataFrame, an Arrow table or a file
    slifmr.evaluate_recommendations(their_lists, "data/mine", k=[10, 20])
"""

from slifmr.api import Run, evaluate_recommendations, import_table, load_run, train, tune

__version__ = "0.1.0"
__all__ = ["Run", "__version__", "evaluate_recommendations", "import_table", "load_run", "train", "tune"]
