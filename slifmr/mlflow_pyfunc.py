"""A slifmr export as an MLflow pyfunc model ("models from code": MLflow stores this file with the
model and runs it at load time, so loading needs mlflow, numpy, pandas and faiss, not slifmr).

    model = mlflow.pyfunc.load_model(model_uri)
    model.predict(pandas.DataFrame({"user": ["196", "186"], "k": [10, 10]}))
        -> DataFrame user, rank, item, score (raw ids), the export's lists (slifmr_scorer.py)

Input columns: `user` (raw id, str) and optionally `k` (default 10). The model's artifact
`export` is the folder `slifmr export` writes; `slifmr.tracking.MLflowTracker` logs it with a
signature and an input example at the end of a tracked run."""

from __future__ import annotations

import sys
from typing import Any

import mlflow
import mlflow.models
import mlflow.pyfunc
import pandas as pd


class ExportModel(mlflow.pyfunc.PythonModel):
    """Top-k lists of an export's scorer, one request per input row."""

    def load_context(self, context: Any) -> None:
        folder = context.artifacts["export"]
        sys.path.insert(0, folder)  # the export's own numpy + faiss scorer
        from slifmr_scorer import Scorer

        self.scorer = Scorer.load(folder)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:

        rows: dict[str, list] = {"user": [], "rank": [], "item": [], "score": []}
        for request in model_input.to_dict("records"):
            user, k = str(request["user"]), int(request.get("k") or 10)
            for rank, (item, score) in enumerate(self.scorer.recommend(user, k), start=1):
                rows["user"].append(user), rows["rank"].append(rank), rows["item"].append(item), rows["score"].append(score)
        return pd.DataFrame(rows)


mlflow.models.set_model(ExportModel())
