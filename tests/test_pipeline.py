"""One import pipeline (slifmr/data/pipeline.py): the same rows read by the table, RecBole and
MMRec readers give the same interactions, and the same rule refuses the same row in each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slifmr.data.mmrec import import_mmrec
from slifmr.data.recbole import import_recbole
from slifmr.data.table import InteractionColumns, import_table
from slifmr.errors import DataError

# (user, item, rating, split): a padded id, a pair repeated within train and one across splits,
# and ratings below the threshold
ROWS = [
    ("10", "1", 5, 0), ("10", "2", 4, 0), ("11", "1", 5, 0), (" 12", "3", 5, 0), ("12", "4", 5, 0),
    ("13", "2", 5, 0), ("10", "2", 5, 0), ("11", "4", 2, 0), ("13", "5", 4, 0),
    ("10", "3", 5, 1), ("11", "2", 5, 1), ("12", "4", 5, 1), ("13", "1", 4, 1),
    ("10", "4", 5, 2), ("11", "3", 4, 2), ("12", "1", 5, 2), ("13", "3", 5, 2), ("11", "5", 1, 2),
]
NAMES = ("train", "valid", "test")


def _table(tmp: Path, rows: list[tuple]) -> str:
    path = tmp / "events.csv"
    path.write_text("user_id,item_id,rating,split\n" + "".join(f"{u},{i},{r},{NAMES[s]}\n" for u, i, r, s in rows))
    return str(path)


def _recbole(tmp: Path, rows: list[tuple]) -> Path:
    root = tmp / "pre"
    root.mkdir()
    for s, name in enumerate(NAMES):
        (root / f"pre.{name}.inter").write_text(
            "user_id:token\titem_id:token\trating:float\n" + "".join(f"{u}\t{i}\t{r}\n" for u, i, r, k in rows if k == s))
    return root


def _mmrec(tmp: Path, rows: list[tuple]) -> Path:
    root = tmp / "mm"
    root.mkdir()
    (root / "mm.inter").write_text("userID\titemID\trating\tx_label\n" + "".join(f"{u}\t{i}\t{r}\t{s}\n" for u, i, r, s in rows))
    return root


def _triples(ds) -> set[tuple[str, str, int]]:
    users, items = [str(x).strip() for x in ds.ids["users"]], [str(x) for x in ds.ids["items"]]
    return {(users[u], items[i], int(s)) for u, i, s in zip(ds.user, ds.item, ds.split)}


@pytest.mark.parametrize("thresholds", [{}, {"rating": 4}])
def test_the_same_rows_give_the_same_interactions_through_every_reader(tmp_path: Path, thresholds: dict) -> None:
    rows = sorted(ROWS, key=lambda r: r[3])  # the table in split order: the pre-split files' order
    table = import_table(_table(tmp_path, rows), columns=InteractionColumns(split="split", thresholds=thresholds),
                         split="column")
    recbole = import_recbole(_recbole(tmp_path, rows), thresholds=thresholds)
    mmrec = import_mmrec(_mmrec(tmp_path, rows), thresholds=thresholds)
    # ids numbered alike (first appearance) for the two token readers: the arrays are equal
    for key in ("user", "item", "split"):
        np.testing.assert_array_equal(getattr(table, key), getattr(recbole, key))
    assert [str(u) for u in table.ids["users"]] == [str(u) for u in recbole.ids["users"]]
    # MMRec numbers its integer ids in numeric order: the same (user, item, split) rows
    assert _triples(table) == _triples(recbole) == _triples(mmrec)
    kept = [(u.strip(), i) for u, i, r, s in rows if r >= thresholds.get("rating", 0)]
    assert len(_triples(table)) == len(set(kept)) == len(kept) - 2  # (10, 2) twice in train; (12, 4) again in valid
    assert ("12", "4", 0) in _triples(table)  # a repeated pair keeps its earliest split
    for ds in (table, recbole, mmrec):
        assert ds.provenance["import"]["duplicates_dropped"] == 2
        assert ds.provenance.get("threshold_dropped", 0) == (2 if thresholds else 0)


def test_one_rule_refuses_a_user_without_a_training_row_in_every_reader(tmp_path: Path) -> None:
    rows = sorted(ROWS + [("14", "2", 5, 1)], key=lambda r: r[3])
    line = 1 + 1 + sum(1 for r in rows if r[3] == 0) + 4  # header, then the valid rows: 14's is the 5th
    with pytest.raises(DataError, match=rf"row \d+ \(line {line}\), column 'user_id': user '14' has no training "
                       r"interaction \(no row with split train\)"):
        import_table(_table(tmp_path, rows), columns=InteractionColumns(split="split"), split="column")
    with pytest.raises(DataError, match=r"pre\.valid\.inter, line 6, column 'user_id': user '14' has no training "
                       r"interaction \(no row in pre\.train\.inter\)"):
        import_recbole(_recbole(tmp_path, rows))
    with pytest.raises(DataError, match=rf"mm\.inter, line {line}, column 'userID': user '14' has no training "
                       r"interaction \(no row with x_label 0\)"):
        import_mmrec(_mmrec(tmp_path, rows))


def test_a_pre_split_set_of_empty_files_names_the_empty_training_file(tmp_path: Path) -> None:
    root = _recbole(tmp_path, [])
    with pytest.raises(DataError, match=r"pre\.train\.inter: the train split would be empty: the file has no data rows"):
        import_recbole(root)


@pytest.mark.parametrize("cell, match", [
    ("+1", r"line 2, column 'x_label': x_label '\+1' is not an integer in \[0, 2\*\*63\)"),
    ("-9999999999999999999", r"line 2, column 'x_label': x_label '-9999999999999999999' is not an integer"),
    ("3", r"line 2, column 'x_label': x_label '3' is not 0 \(train\), 1 \(valid\) or 2 \(test\)"),
    (" ", r"line 2, column 'x_label': empty x_label"),
])
def test_integer_columns_refuse_what_is_not_a_non_negative_int64(tmp_path: Path, cell: str, match: str) -> None:
    rows = [(u, i, 5, 0) for u, i, _, _ in ROWS] + [("10", "5", 5, 1), ("11", "5", 5, 2)]
    root = _mmrec(tmp_path, rows)
    text = (root / "mm.inter").read_text().splitlines()
    text[1] = text[1].rsplit("\t", 1)[0] + "\t" + cell
    (root / "mm.inter").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=match):
        import_mmrec(root)


def test_zero_padded_integer_ids_are_their_number(tmp_path: Path) -> None:
    rows = [(("0" * 18 + u) if u == "10" else u, i, r, s) for u, i, r, s in ROWS]
    ds = import_mmrec(_mmrec(tmp_path, rows))
    assert 10 in ds.ids["users"].tolist() and ds.num_users == 4
