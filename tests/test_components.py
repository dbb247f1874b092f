"""The training components on their own (issue 39): the batch sources (training/batches.py),
the run folder (training/run_folder.py and its layout, run_layout.py) and the closed-form
registry (closed_forms.py), each without the training loop around it. The ridge head has its
own file, test_ridge_head.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from slifmr.closed_forms import CLOSED_FORMS, ClosedForm
from slifmr.config import VARIANTS, load_config
from slifmr.data.format import Dataset
from slifmr.data.graphs import training_matrix, training_pairs
from slifmr.distributed.collectives import Comm
from slifmr.errors import NonFiniteError
from slifmr.model.graphs import epoch_graphs
from slifmr.model.propagate import layerwise_spmm
from slifmr.run_layout import RunLayout
from slifmr.sampling.negative import BPRSampler
from slifmr.training.batches import FullBatches, HistoryBatches, NeighborBatches, build_batch_source
from slifmr.training.build import build_model
from slifmr.training.records import EpochRecord
from slifmr.training.run_folder import RunFolder

SMALL = ["model.embedding_dim=8", "model.k_corr=3", "model.k_mm=3", "train.batch_size=64"]


# ---------------------------------------------------------------------------- batch sources

@pytest.mark.parametrize(("sampling", "kind"), [("full", FullBatches), ("neighbor", NeighborBatches),
                                                ("history", HistoryBatches)])
def test_each_sampling_mode_has_its_source_and_it_batches_the_triples(tiny_ds: Dataset, sampling: str,
                                                                      kind: type) -> None:
    """A source turns a step's BPR triples into a batch over their global ids, whatever its
    graph; it holds the epoch's graph (and sampler, memory) only between begin and end."""
    cfg = load_config(overrides=[*SMALL, f"train.sampling={sampling}", "train.fanout=3,2" if sampling == "neighbor"
                                 else "train.fanout=3" if sampling == "history" else "train.seed=0"])
    model, static = build_model(cfg, tiny_ds, sparse_tables=sampling != "full")
    source = build_batch_source(cfg.train, model.view_layers, Comm(), seed=1, spmm=layerwise_spmm())
    assert type(source) is kind
    generator = torch.Generator().manual_seed(0)
    graphs = model.attend(epoch_graphs(static, None, cfg.model, generator))
    users, items = training_pairs(tiny_ds)
    triples = next(BPRSampler(users, items, tiny_ds.num_items, 16, seed=0).epoch(1))
    source.begin_epoch(model, graphs, 1)
    assert source.seconds == {"sampling": 0.0, "memory": 0.0} or sampling == "history"
    source.before_step(0)
    batch = source.batch(triples, 1, 0, generator)
    for got, want in zip((batch.user_ids, batch.pos_ids, batch.neg_ids), triples, strict=True):
        assert torch.equal(got.cpu(), want)
    if sampling == "full":  # the whole graph: the rows are the global ids
        assert torch.equal(batch.users, batch.user_ids) and torch.equal(batch.pos, batch.pos_ids)
    else:  # a subgraph: the rows are local, fewer than the graph's nodes
        assert int(batch.users.max()) < tiny_ds.num_users + tiny_ds.num_items
        assert source.seconds["sampling"] > 0.0
    loss = model(batch)["loss"]
    assert torch.isfinite(loss)
    source.end_epoch()
    assert source.graphs is None
    if sampling != "full":
        assert source.subgraphs is None
    if sampling == "history":
        assert source.memory is None and source.model is None


# ---------------------------------------------------------------------------- run folder

def _record(epoch: int, best: bool) -> EpochRecord:
    return EpochRecord(epoch=epoch, loss={"loss": 1.0 / epoch}, valid={"recall@20": 0.1 * epoch}, is_best=best,
                       epoch_seconds=0.5)


def test_the_run_folder_writes_its_layout_and_resume_drops_later_lines(tiny_ds: Dataset, tmp_path: Path) -> None:
    cfg = load_config(overrides=SMALL)
    cfg.data = "unused"
    run = RunFolder(tmp_path / "run")
    layout = RunLayout(tmp_path / "run")
    run.create(cfg)
    assert layout.config.exists() and layout.metrics.read_text() == ""
    model, optimizer = {"w": torch.ones(3)}, {"state": {}}
    for epoch in (1, 2):
        run.save_epoch(_record(epoch, epoch == 1), model, optimizer, {"epoch": epoch}, {}, run.meta(cfg, tiny_ds, epoch),
                       f"epoch {epoch}")
    assert [json.loads(x)["epoch"] for x in layout.metrics.read_text().splitlines()] == [1, 2]
    assert layout.best.is_dir() and layout.checkpoint.is_dir()
    run.append(_record(3, False))  # a line written after the last checkpoint (a crash between the two)
    ckpt = run.resume(cfg, tiny_ds, None)
    assert ckpt["epoch"] == 2
    assert [json.loads(x)["epoch"] for x in layout.metrics.read_text().splitlines()] == [1, 2]


def test_a_non_finite_epoch_writes_nothing_and_a_reader_rank_writes_nothing(tiny_ds: Dataset, tmp_path: Path) -> None:
    cfg = load_config(overrides=SMALL)
    cfg.data = "unused"
    run = RunFolder(tmp_path / "run")
    run.create(cfg)
    with pytest.raises(NonFiniteError, match="epoch 1: model.w is not finite"):
        run.save_epoch(_record(1, True), {"w": torch.tensor([float("nan")])}, {}, {"epoch": 1}, {},
                       run.meta(cfg, tiny_ds, 1), "")
    assert run.metrics.read_text() == "" and not run.checkpoint.exists() and not run.best.exists()
    reader = RunFolder(tmp_path / "other", writer=False)
    reader.create(cfg)
    reader.save_epoch(_record(1, True), {"w": torch.ones(1)}, {}, {"epoch": 1}, {}, run.meta(cfg, tiny_ds, 1), "")
    reader.write_results({"test": None})
    assert not reader.path.exists()


# ---------------------------------------------------------------------------- closed forms

def test_every_registered_closed_form_is_a_variant_and_solves_scores_and_exports(tiny_ds: Dataset) -> None:
    """The registry is the one list: config's variants, the options each reads, and for each
    form a model that fits every grid point, scores (B, N) and says what its export holds."""
    users = torch.arange(5)
    for name, form in CLOSED_FORMS.items():
        assert name in VARIANTS and set(form.grid.values()) <= set(form.config_reads)
        cfg = load_config(variant=name, overrides=["model.ease_l2=10", "model.ials_alpha=1",
                                                   "model.ials_reg=0.1", "model.embedding_dim=4"])
        model = form.build(cfg, tiny_ds)
        (point,) = form.points(cfg)
        model.fit(**point)
        assert model.finite() and model.full_scores(users).shape == (5, tiny_ds.num_items)
        kind, _ = model.export_scores()
        assert kind in ("dot", "item_item", "popularity")


def test_a_grid_is_every_combination_in_the_keys_order() -> None:
    cfg = load_config(variant="ials", overrides=["model.ials_alpha=1,10", "model.ials_reg=0.1,1,10"])
    assert CLOSED_FORMS["ials"].points(cfg) == [{"alpha": a, "reg": r} for a in (1.0, 10.0) for r in (0.1, 1.0, 10.0)]
    assert CLOSED_FORMS["pop"].points(cfg) == [{}]
    # one value is a grid of one, however it is written (it was refused: "expected a list, got 800")
    for written in ("model.ease_l2=800", "model.ease_l2=800.0", "model.ease_l2=[800]"):
        assert CLOSED_FORMS["ease"].points(load_config(variant="ease", overrides=[written])) == [{"l2": 800.0}]


class ItemCosine(torch.nn.Module):
    """A closed form this test adds as a new baseline would be added: W = the cosine of the
    items' training columns, zero diagonal; s = x_u W."""

    def __init__(self, ds: Dataset, shrink: float = 0.0):
        super().__init__()
        self.register_buffer("interactions", training_matrix(ds), persistent=False)
        self.register_buffer("weights", torch.zeros(ds.num_items, ds.num_items))

    def fit(self, shrink: float) -> None:
        x = self.interactions.to_dense()
        norms = x.norm(dim=0)
        w = (x.T @ x) / (norms[:, None] * norms[None, :] + shrink + 1e-12)
        self.weights.copy_(w.fill_diagonal_(0.0))

    def finite(self) -> bool:
        return bool(torch.isfinite(self.weights).all())

    def full_scores(self, users: torch.Tensor) -> torch.Tensor:
        return torch.sparse.mm(torch.index_select(self.interactions, 0, users), self.weights)

    def export_scores(self) -> tuple[str, torch.Tensor]:
        return "item_item", self.weights.T


def test_a_new_closed_form_is_its_model_and_one_registry_entry(tiny_path: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Registered (here at run time; in the tree, one entry in closed_forms.py), a new closed
    form trains through the one lifecycle (a line per grid point, best by validation, test once),
    and its export serves the lists `recommend` gives."""
    import slifmr
    from slifmr.scorer import Scorer

    monkeypatch.setitem(CLOSED_FORMS, "item_cosine", ClosedForm(f"{__name__}:ItemCosine", grid={"shrink": "model.ease_l2"}))
    monkeypatch.setitem(VARIANTS, "item_cosine", {})
    run = slifmr.train(variant="item_cosine", data=str(tiny_path), out=str(tmp_path / "run"), ease_l2=[1.0, 10.0])
    lines = run.history
    assert [line["grid"] for line in lines] == [{"shrink": 1.0}, {"shrink": 10.0}] and run.results["test"] is not None
    assert run.best_epoch == max(lines, key=lambda x: (x["valid"]["recall@20"], -x["epoch"]))["epoch"]
    out = run.export(tmp_path / "export", k=5)
    scorer = Scorer.load(out)
    ids = ["0", "1", "2"]  # a synthetic dataset: its raw ids are the contiguous ones
    listed = run.recommend(ids, k=5).to_pylist()
    for user in ids:
        assert [item for item, _ in scorer.recommend(user, k=5)] == [r["item"] for r in listed if r["user"] == user]


def test_an_option_a_closed_form_does_not_read_is_refused(tmp_path: Path) -> None:
    """Refused naming what the form reads (from its registry entry)."""
    import slifmr
    from slifmr.errors import SlifmrError

    with pytest.raises(SlifmrError, match=r"epochs do\(es\) not apply to variant pop.*it reads train.topk"):
        slifmr.train(variant="pop", data=str(tmp_path), epochs=3)
    with pytest.raises(SlifmrError, match=r"seed \(it draws the train.eval_users sample only\)"):
        slifmr.train(variant="ease", data=str(tmp_path), seed=1)
    # iALS's factors are seeded: its seed is an option it reads (it was refused as for ease)
    with pytest.raises(SlifmrError, match="does not exist"):
        slifmr.train(variant="ials", data=str(tmp_path / "absent"), seed=1)

