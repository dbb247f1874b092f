"""PyG's graph utilities, imported on first call: importing torch_geometric costs seconds (it pulls
in torch._dynamo and, through its LLM helpers, transformers), which commands that only rank with
a saved model (`recommend`, `evaluate`, `data info`) never need to pay."""

from __future__ import annotations

from typing import Any


def coalesce(*args: Any, **kwargs: Any) -> Any:
    """torch_geometric.utils.coalesce."""
    from torch_geometric.utils import coalesce as pyg_coalesce

    return pyg_coalesce(*args, **kwargs)


def to_undirected(*args: Any, **kwargs: Any) -> Any:
    """torch_geometric.utils.to_undirected."""
    from torch_geometric.utils import to_undirected as pyg_to_undirected

    return pyg_to_undirected(*args, **kwargs)


def softmax(*args: Any, **kwargs: Any) -> Any:
    """torch_geometric.utils.softmax (grouped by an index)."""
    from torch_geometric.utils import softmax as pyg_softmax

    return pyg_softmax(*args, **kwargs)
