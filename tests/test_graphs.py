from __future__ import annotations

import numpy as np
import torch

from slifmr.data.format import TRAIN
from slifmr.data.graphs import interactions_csr, knn, knn_graph, modality_graph, train_edges


def test_chunked_knn_matches_brute_force() -> None:
    x = torch.randn(103, 9)
    nbrs, sims = knn(x, 7, chunk_size=10)
    xn = torch.nn.functional.normalize(x, dim=1)
    full = xn @ xn.T
    full.fill_diagonal_(-np.inf)
    ref_s, ref_j = torch.topk(full, 7, dim=1)
    torch.testing.assert_close(sims, ref_s)
    assert torch.equal(nbrs, ref_j)
    assert not (nbrs == torch.arange(103)[:, None]).any()


def test_knn_graph_symmetric_and_normalised() -> None:
    x = torch.randn(50, 4)
    ei, w = knn_graph(x, 5)
    a = torch.zeros(50, 50)
    a[ei[0], ei[1]] = w
    torch.testing.assert_close(a, a.T)
    # reference: union of top-k with cosine weights, D^-1/2 S D^-1/2
    xn = torch.nn.functional.normalize(x, dim=1)
    sim = xn @ xn.T
    sim.fill_diagonal_(-np.inf)
    j = torch.topk(sim, 5, dim=1).indices
    s = torch.zeros(50, 50)
    s.scatter_(1, j, torch.gather(sim, 1, j).clamp_min(0))
    s = torch.maximum(s, s.T)
    d = s.sum(1).pow(-0.5)
    d[torch.isinf(d)] = 0
    torch.testing.assert_close(a, d[:, None] * s * d[None, :])


def test_graphs_use_training_edges_only(tiny_ds) -> None:  # noqa: ANN001
    edges = train_edges(tiny_ds)
    keys = set((edges[0] * tiny_ds.num_items + edges[1]).tolist())
    held_out = tiny_ds.split != TRAIN
    assert not keys & set((tiny_ds.user[held_out] * tiny_ds.num_items + tiny_ds.item[held_out]).tolist())
    assert len(keys) == int((tiny_ds.split == TRAIN).sum())
    indptr, indices = interactions_csr(*tiny_ds.edges(TRAIN), tiny_ds.num_users)
    assert indptr[-1] == len(keys)
    u = 3
    assert sorted(indices[indptr[u] : indptr[u + 1]].tolist()) == sorted(tiny_ds.item[(tiny_ds.user == u) & ~held_out].tolist())


def test_modality_graph_sums_weighted_modalities(tiny_ds) -> None:  # noqa: ANN001
    ei, w = modality_graph(tiny_ds.features, k=4)
    parts = [knn_graph(torch.from_numpy(np.asarray(x)), 4) for x in tiny_ds.features.values()]
    n = tiny_ds.num_items
    ref = torch.zeros(n, n)
    for pe, pw in parts:
        ref.index_put_((pe[0], pe[1]), pw / len(parts), accumulate=True)
    got = torch.zeros(n, n)
    got[ei[0], ei[1]] = w
    torch.testing.assert_close(got, ref)
