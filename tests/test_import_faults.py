"""Importers fed randomly damaged versions of valid datasets (issue 12: importer errors never
escape as tracebacks). Each example builds a small valid RecBole (plain or pre-split) or MMRec
folder, applies one to three random damages (truncation, deleted / duplicated / swapped lines,
a cell replaced by random text, nothing, a huge or negative number, non-UTF-8 bytes, tabs, a
dropped header cell, an added column, swapped or deleted files, a byte-order mark, CRLF line
ends, feature arrays of the wrong shape or dtype...) and runs `slifmr data import`. The only
outcomes allowed: exit 0 with a folder that `read_dataset` accepts, or exit 2 with exactly one
stderr line starting "error: " and nothing left behind (no OUT, no temporary sibling)."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slifmr.cli import main
from slifmr.data.format import read_dataset

Files = dict[str, bytes]
SETTINGS = settings(max_examples=100, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


def _inter(users: int, items: int, header: str, row: Callable[[int, int, int], str]) -> str:
    lines = [header]
    for u in range(users):
        for j in range(5):
            lines.append(row(u, (u * 3 + j) % items, j))
    return "\n".join(lines) + "\n"


KG = "head_id:token\trelation_id:token\ttail_id:token\nm.0\tgenre\tg.a\nm.1\tgenre\tg.b\ng.a\tfilms\tm.0\nm.2\tactor\tp.x\n"
RECBOLE: Files = {
    "toy.inter": _inter(6, 8, "user_id:token\titem_id:token\trating:float\ttimestamp:float",
                        lambda u, i, j: f"u{u}\ti{i}\t{1 + (u + j) % 5}\t{1000 * u + j}").encode(),
    "toy.item": ("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\tprice:float\n"
                 + "".join(f"i{i}\tFilm {i}\t{1990 + i}\tDrama Comedy\t{i}.5\n" for i in range(9))).encode(),
    "toy.kg": KG.encode(),
    "toy.link": b"item_id:token\tentity_id:token\ni0\tm.0\ni1\tm.1\ni2\tm.2\n",
}
PRESPLIT: Files = {
    "toy.train.inter": _inter(5, 8, "user_id:token\titem_id:token\ttimestamp:float",
                              lambda u, i, j: f"u{u}\ti{i}\t{j}").encode(),
    "toy.valid.inter": b"user_id:token\titem_id:token\ttimestamp:float\nu0\ti7\t9\nu1\ti7\t9\nu2\ti0\t9\n",
    "toy.test.inter": b"user_id:token\titem_id:token\ttimestamp:float\nu3\ti0\t9\nu4\ti7\t9\nu0\ti6\t9\n",
    "toy.link": b"item_id:token\tentity_id:token\ni0\tm.0\ni1\tm.1\n",
    "toy.kg": KG.encode(),
}
_rng = np.random.default_rng(0)
MMREC: Files = {
    "toy.inter": _inter(6, 8, "userID\titemID\trating\ttimestamp\tx_label",
                        lambda u, i, j: f"{u}\t{i}\t{1 + j}\t{100 * u + j}\t{[0, 0, 0, 1, 2][j]}").encode(),
    "image_feat.npy": _npy(_rng.standard_normal((8, 4)).astype(np.float32)),
    "text_feat.npy": _npy(_rng.standard_normal((8, 3)).astype(np.float32)),
    "toy.kg": KG.encode(),
    "toy.link": b"item_id:token\tentity_id:token\n0\tm.0\n1\tm.1\n",
}

CELLS = st.one_of(
    st.text(max_size=12).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"", b" ", b"  u1 ", b"9" * 30, b"1e400", b"-1", b"-2.5", b"nan", b"inf", b"0", b"3",
                     b"\xe9t\xe9", b"\xff\xfe", b"\xef\xbb\xbf", b"\t", b"\t\t", b"x\ty", b"2018-03-01",
                     b"Mar 1 2018", b"\x00", b"\x01id", b'"q"', b"\r", b"1.0", b"+3", b"007", b"\xa0"]),
    st.binary(max_size=6),
)


def _lines(blob: bytes) -> list[bytes]:
    return blob.split(b"\n")


def _pick(draw: st.DrawFn, files: Files) -> str:
    return draw(st.sampled_from(sorted(files)))


def truncate(draw: st.DrawFn, files: Files) -> None:
    name = _pick(draw, files)
    files[name] = files[name][: draw(st.integers(0, len(files[name])))]


def delete_line(draw: st.DrawFn, files: Files) -> None:
    name = _pick(draw, files)
    lines = _lines(files[name])
    del lines[draw(st.integers(0, len(lines) - 1))]
    files[name] = b"\n".join(lines)


def duplicate_line(draw: st.DrawFn, files: Files) -> None:
    name = _pick(draw, files)
    lines = _lines(files[name])
    k = draw(st.integers(0, len(lines) - 1))
    lines.insert(draw(st.integers(0, len(lines))), lines[k])
    files[name] = b"\n".join(lines)


def swap_lines(draw: st.DrawFn, files: Files) -> None:
    name = _pick(draw, files)
    lines = _lines(files[name])
    a, b = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
    lines[a], lines[b] = lines[b], lines[a]
    files[name] = b"\n".join(lines)


def replace_cell(draw: st.DrawFn, files: Files) -> None:
    name = draw(st.sampled_from(sorted(n for n in files if not n.endswith(".npy")) or sorted(files)))
    lines = _lines(files[name])
    k = draw(st.integers(0, len(lines) - 1))
    cells = lines[k].split(b"\t")
    cells[draw(st.integers(0, len(cells) - 1))] = draw(CELLS)
    lines[k] = b"\t".join(cells)
    files[name] = b"\n".join(lines)


def drop_header_cell(draw: st.DrawFn, files: Files) -> None:
    name = _pick(draw, files)
    lines = _lines(files[name])
    cells = lines[0].split(b"\t")
    del cells[draw(st.integers(0, len(cells) - 1))]
    lines[0] = b"\t".join(cells)
    files[name] = b"\n".join(lines)


def add_column(draw: st.DrawFn, files: Files) -> None:
    name = _pick(draw, files)
    head = draw(st.sampled_from([b"label:float", b"label", b"rating:float", b"rating", b"extra:token", b"x_label",
                                 b"timestamp:float", b"user_id:token"]))
    value = draw(CELLS)
    everywhere = draw(st.booleans())
    lines = _lines(files[name])
    lines = [lines[0] + b"\t" + head] + [ln + b"\t" + value if everywhere and ln else ln for ln in lines[1:]]
    files[name] = b"\n".join(lines)


def insert_bytes(draw: st.DrawFn, files: Files) -> None:
    name = _pick(draw, files)
    at = draw(st.integers(0, len(files[name])))
    files[name] = files[name][:at] + draw(CELLS) + files[name][at:]


def swap_files(draw: st.DrawFn, files: Files) -> None:
    a, b = _pick(draw, files), _pick(draw, files)
    files[a], files[b] = files[b], files[a]


def delete_file(draw: st.DrawFn, files: Files) -> None:
    if len(files) > 1:
        del files[_pick(draw, files)]


def encode(draw: st.DrawFn, files: Files) -> None:
    name = _pick(draw, files)
    how = draw(st.sampled_from(["bom", "crlf", "cr", "blank", "latin1", "utf16"]))
    blob = files[name]
    if how == "bom":
        files[name] = b"\xef\xbb\xbf" + blob
    elif how == "crlf":
        files[name] = blob.replace(b"\n", b"\r\n")
    elif how == "cr":
        files[name] = blob.replace(b"\n", b"\r")
    elif how == "blank":
        files[name] = blob.replace(b"\n", b"\n\n", draw(st.integers(1, 3)))
    elif how == "latin1":
        files[name] = blob.replace(b"1", b"\xe9", 1)
    else:
        files[name] = blob.decode("utf-8", "replace").encode("utf-16")


def bad_array(draw: st.DrawFn, files: Files) -> None:
    name = draw(st.sampled_from(["image_feat.npy", "text_feat.npy"]))
    rows = draw(st.sampled_from([0, 1, 7, 8, 9, 10**3]))
    shape = draw(st.sampled_from([(rows,), (rows, 4), (rows, 0), (rows, 2, 2)]))
    dtype = draw(st.sampled_from(["float32", "float64", "float16", "int8", "int64", "uint8", "bool", "complex64", "U3"]))
    x = np.ones(shape, dtype=dtype)
    fill = draw(st.sampled_from([None, np.nan, np.inf, 1e39, -1e300]))
    if fill is not None and x.size and x.dtype.kind == "f":
        with np.errstate(over="ignore"):
            x.flat[draw(st.integers(0, x.size - 1))] = fill
    files[name] = _npy(x)


TEXT_OPS = [truncate, delete_line, duplicate_line, swap_lines, replace_cell, replace_cell, drop_header_cell,
            add_column, insert_bytes, swap_files, delete_file, encode]


@st.composite
def damaged(draw: st.DrawFn, base: Files, ops: list) -> Files:  # noqa: ANN001
    files = dict(base)
    for _ in range(draw(st.integers(1, 3))):
        draw(st.sampled_from(ops))(draw, files)
    return files


def check(fmt: str, files: Files) -> int:
    """Import `files` with the command line; assert success or one clean error line."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "toy"
        src.mkdir()
        for name, blob in files.items():
            (src / name).write_bytes(blob)
        work = Path(tmp) / "work"
        work.mkdir()
        out = work / "out"
        err, std = io.StringIO(), io.StringIO()
        with redirect_stderr(err), redirect_stdout(std):
            code = main(["data", "import", fmt, str(src), "--out", str(out)])
        lines = err.getvalue().strip().splitlines()
        if code == 0:
            ds = read_dataset(out)
            assert ds.num_interactions > 0
            assert not [p for p in work.iterdir() if p.name != "out"]
        else:
            assert code == 2, err.getvalue()
            assert len(lines) == 1 and lines[0].startswith("error: "), err.getvalue()
            assert "Traceback" not in err.getvalue()
            assert not list(work.iterdir()), list(work.iterdir())
        return code


def test_the_undamaged_folders_import() -> None:
    assert check("recbole", RECBOLE) == 0
    assert check("recbole", PRESPLIT) == 0
    assert check("mmrec", MMREC) == 0


@SETTINGS
@given(files=damaged(RECBOLE, TEXT_OPS))
def test_recbole_survives_damage(files: Files) -> None:
    check("recbole", files)


@settings(SETTINGS, max_examples=80)
@given(files=damaged(PRESPLIT, TEXT_OPS))
def test_recbole_presplit_survives_damage(files: Files) -> None:
    check("recbole", files)


@SETTINGS
@given(files=damaged(MMREC, [*TEXT_OPS, bad_array, bad_array]))
def test_mmrec_survives_damage(files: Files) -> None:
    check("mmrec", files)
