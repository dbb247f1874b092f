"""The servable scorer (slifmr/scorer.py, copied into every export): numpy + faiss only, the
run's own lists item for item, fresh histories and unseen users scored as the model scores
them, popularity fallback, allow-lists."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny

import slifmr
from slifmr.data.format import write_dataset
from slifmr.model.slifmr import Representations
from slifmr.scorer import Scorer


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[slifmr.Run, Path]:
    """A slifmr run with its ridge head on 400 items (the index prunes: K + |seen| << N)."""
    root = tmp_path_factory.mktemp("scorer")
    data = write_dataset(tiny(users=300, items=400, interactions=6000, entities=500, triples=1500), root / "data")
    run = slifmr.train(data=data, variant="slifmr", out=root / "run", epochs=2, embedding_dim=16, k_corr=5,
                       k_mm=5, ridge_k=20)
    assert run.model.ridge_weight > 0
    return run, run.export(root / "exp")


def _brute_force(reps: Representations, x_u: list[int], excluded: list[int], user: torch.Tensor | None,
                 k: int, allow: list[int] | None = None) -> list[int]:
    """The model's own fused score (Representations.full_scores) for one user with training
    history `x_u` and embedding `user` (None: the mean of the history's item vectors), top k."""
    u = reps.items[x_u].mean(0) if user is None else user
    n = reps.items.shape[0]
    x = torch.sparse_coo_tensor(torch.tensor([[0] * len(x_u), x_u]), torch.ones(len(x_u)), (1, n)).coalesce()
    one = Representations(u[None, :], reps.items, item_ridge=reps.item_ridge, interactions=x,
                          ridge_weight=reps.ridge_weight)
    scores = one.full_scores(torch.tensor([0]))[0]
    scores[excluded] = -torch.inf
    if allow is not None:
        keep = torch.full((n,), -torch.inf)
        keep[allow] = 0
        scores = scores + keep
    top = torch.topk(scores, k)
    return top.indices[top.values > -torch.inf].tolist()


def test_scorer_needs_only_numpy_and_faiss_and_gives_the_runs_lists(exported: tuple[slifmr.Run, Path]) -> None:
    run, exp = exported
    users = [str(u) for u in range(0, 300, 7)]
    expected = run.recommend(users, k=20).to_pydict()
    script = f"""
import json, sys
sys.path.insert(0, {str(exp)!r})
from slifmr_scorer import Scorer
s = Scorer.load({str(exp)!r})
lists = {{u: [i for i, _ in s.recommend(u, k=20)] for u in {users!r}}}
assert not any(m in ("torch", "slifmr") or m.startswith(("torch.", "slifmr.")) for m in sys.modules)
print(json.dumps(lists))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr
    lists = json.loads(done.stdout)
    for u in users:
        assert lists[u] == [i for user, i in zip(expected["user"], expected["item"]) if user == u]


def test_fresh_history_unseen_users_popularity_and_allow_lists(exported: tuple[slifmr.Run, Path]) -> None:
    run, exp = exported
    scorer, reps, ds = Scorer.load(exp), run.model, run.dataset
    rows = {str(i): r for r, i in enumerate(scorer.item_ids)}
    ids = [str(i) for i in scorer.item_ids]

    def items(lst: list[tuple[str, float]]) -> list[int]:
        return [rows[i] for i, _ in lst]

    for u in range(0, 300, 29):
        train, seen = scorer.train.row(u).tolist(), scorer.seen.row(u).tolist()
        new = [i for i in range(0, 400, 37) if i not in seen][:3]
        # a known user's new interactions extend x_u and are never recommended
        got = items(scorer.recommend(str(u), k=15, history=[ids[i] for i in new]))
        assert got == _brute_force(reps, sorted(set(train + new)), seen + new, reps.users[u], 15)
        # the same history from a user the export does not know: folded in
        got = items(scorer.recommend(None, k=15, history=[ids[i] for i in train]))
        assert got == _brute_force(reps, train, train, None, 15)
        assert items(scorer.recommend(f"new-{u}", k=15, history=[ids[i] for i in train])) == got
        # an allow-list is scored exactly
        allow = list(range(u % 5, 400, 5))
        got = items(scorer.recommend(str(u), k=10, allow=[ids[i] for i in allow]))
        assert got == _brute_force(reps, train, seen, reps.users[u], 10, allow) and set(got) <= set(allow)
    # nobody known: the most popular training items, the given history left out
    popular = np.argsort(-np.bincount(ds.item[ds.split == 0], minlength=400), kind="stable")
    assert items(scorer.recommend(None, k=10)) == popular[:10].tolist()
    assert items(scorer.recommend("nobody", k=5, history=[ids[popular[0]]], ignore_unknown_items=True)) != []
    with pytest.raises(ValueError, match="unknown item id 'zzz' in history"):
        scorer.recommend("0", history=["zzz"])
    assert scorer.recommend("0", history=["zzz"], ignore_unknown_items=True) == scorer.recommend("0")
    with pytest.raises(ValueError, match="unknown user id 'nobody'"):
        scorer.recommend("nobody", strict_user=True)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        scorer.recommend("0", k=0)
    # without excluding seen items, the list may hold them and is the model's plain top k
    assert items(scorer.recommend("3", k=10, exclude_seen=False)) == _brute_force(
        reps, scorer.train.row(3).tolist(), [], reps.users[3], 10)
