"""The servable scorer of a slifmr export: top-K with numpy and faiss alone.

This file imports nothing from slifmr and no torch: `slifmr export` copies it into the export
folder as `slifmr_scorer.py`, so a serving host needs only `pip install numpy faiss-cpu`:

    import sys; sys.path.insert(0, "exports/slifmr")
    from slifmr_scorer import Scorer
    scorer = Scorer.load("exports/slifmr")
    scorer.recommend("196", k=10)                              # a trained user: exactly `slifmr recommend`
    scorer.recommend("196", k=10, history=["1682"])            # with interactions made since training
    scorer.recommend(None, k=10, history=["50", "181"])        # a user unseen at training (fold-in)
    scorer.recommend(None, k=10)                               # nobody known: most popular
    scorer.recommend("196", k=5, allow=["1", "2", "3"])        # only from an allow-list

The score (SLIF-MR with its self-loop ridge head; slifmr/model/slifmr.py, `Representations`):

    s(u, i) = standardise_i(u . z_i) + eta * standardise_i((x_u W)_i)

each part standardised over the user's N item scores (zero mean, unit variance, n - 1 in the
variance); without the head (eta = 0, or a variant without one) s = u . z_i. u and z are
L2-normalised in the export when the run trained with the softmax loss (cosine scores).
x_u is the user's training history (0/1 over items) and W the head's sparse item-item
weights: (x_u W)_i = sum over the history's items j of W[j, i].

Two-stage candidates, and the guarantee. The moments of u . z over all N items are closed forms
(mean u . zbar, variance u^T C u with the items' mean zbar and covariance C, stored in the
manifest), and x_u W is sparse. An item outside the ridge candidates {i : (x_u W)_i != 0} has a ridge
part of 0, so it scores below any item with a higher u . z and (x_u W)_i >= 0. The index is
searched for the top items by u . z, deeper (doubling from K + |excluded|) until K of them are
neither excluded nor negative in x_u W; the fused top K then lies within
    (those items)  U  {i : (x_u W)_i != 0},
and scoring exactly those gives exactly the model's top K whenever the index is exact
(IndexFlatIP, every export up to 10^6 items). With an HNSW index the lists are exact as far as
the index's own top (K + |excluded|) is: its recall@20 is measured at export time and written to
the manifest. With an allow-list every allowed item is scored exactly (no index search).

Users the export does not know (`user=None`, or an id unseen at training) are folded in from
their history: u = the mean of their history's item vectors z (one LightGCN-style propagation
hop from the items the model learned), and x_u is their history; with no known history item
the list is the most popular training items (popularity fallback). New interactions of a known
user extend x_u (the ridge part responds exactly as the model would to that history) and are
excluded from the list; u stays the trained one.

Errors: ValueError for an unknown user id given with `strict_user=True`, for an unknown item id
in `history` or `allow` unless `ignore_unknown_items=True`, for k that is not an integer >= 1,
and for `history`/`allow` that are not ids (a bare string is one id, never its characters).
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "manifest.json"
ARRAYS = "arrays"  # the folder of .npy files the scorer reads (memory-mapped)


@dataclass(frozen=True)
class Csr:
    """A sparse matrix's rows as numpy arrays: row r holds columns indices[indptr[r]:indptr[r+1]]
    with values data[...] (None: all ones)."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray | None = None

    def row(self, r: int) -> np.ndarray:
        return self.indices[self.indptr[r]: self.indptr[r + 1]]

    def rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The (column, value) entries of every row in `rows`, concatenated."""
        starts, lengths = self.indptr[rows], self.indptr[rows + 1] - self.indptr[rows]
        # positions start_r + 0 .. length_r - 1 of every row, in one vectorised pass
        offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        at = offsets + np.arange(int(lengths.sum()))
        values = self.data[at] if self.data is not None else np.ones(at.size, np.float32)
        return self.indices[at], values


@dataclass
class Scorer:
    """A loaded export: see the module docstring. users (M, d), items (N, d) float32; seen and
    train: user rows -> item rows (every split / training only); ridge: W's rows (history item j
    -> items i it scores, weights W[j, i]), None without the head; popularity (N,) training
    interactions per item."""

    manifest: dict[str, Any]
    user_ids: np.ndarray
    item_ids: np.ndarray
    users: np.ndarray
    items: np.ndarray
    index: Any
    seen: Csr
    train: Csr
    ridge: Csr | None
    popularity: np.ndarray

    @classmethod
    def load(cls, folder: str | Path) -> Scorer:
        """Read the export folder written by `slifmr export` (its arrays memory-mapped).
        Raises FileNotFoundError when the folder is not an export."""
        import faiss

        root = Path(folder)
        if not (root / MANIFEST).exists():
            raise FileNotFoundError(f"{root} is not a slifmr export (no {MANIFEST})")
        manifest = json.loads((root / MANIFEST).read_text())

        def array(name: str) -> np.ndarray:
            # memory-mapped; asarray drops np.memmap's per-index overhead, not the mapping
            return np.asarray(np.load(root / ARRAYS / f"{name}.npy", mmap_mode="r", allow_pickle=False))

        ridge = None
        if (root / ARRAYS / "ridge_indptr.npy").exists():
            ridge = Csr(array("ridge_indptr"), array("ridge_indices"), array("ridge_data"))
        index = faiss.read_index(str(root / "items.faiss")) if (root / "items.faiss").exists() else None
        return cls(manifest, array("user_ids"), array("item_ids"), array("users"), array("items"),
                   index, Csr(array("seen_indptr"), array("seen_indices")),
                   Csr(array("train_indptr"), array("train_indices")), ridge, array("popularity"))

    @cached_property
    def user_rows(self) -> dict[str, int]:
        return {_normal_id(u): r for r, u in enumerate(self.user_ids)}

    @cached_property
    def item_rows(self) -> dict[str, int]:
        return {_normal_id(i): r for r, i in enumerate(self.item_ids)}

    @cached_property
    def _moments(self) -> tuple[np.ndarray, np.ndarray]:
        score = self.manifest["score"]
        return np.asarray(score["item_mean"], np.float64), np.asarray(score["item_cov"], np.float64)

    @property
    def ridge_weight(self) -> float:
        return float(self.manifest["score"]["ridge_weight"]) if self.ridge is not None else 0.0

    def _rows_of(self, ids: Sequence[str] | str, what: str, ignore_unknown: bool) -> np.ndarray:
        rows = []
        for raw in _id_list(ids, what):
            r = self.item_rows.get(_normal_id(raw))
            if r is None:
                if ignore_unknown:
                    continue
                raise ValueError(f"unknown item id {raw!r} in {what} (not in this export's catalogue; "
                                 "pass ignore_unknown_items=True to skip such ids)")
            rows.append(r)
        return np.unique(np.asarray(rows, np.int64))

    def recommend(self, user: str | None, k: int = 10, history: Sequence[str] | str = (), exclude_seen: bool = True,
                  allow: Sequence[str] | str | None = None, ignore_unknown_items: bool = False,
                  strict_user: bool = False) -> list[tuple[str, float]]:
        """Top-k (raw item id, score) for one user, best first (fewer when fewer items are left).

        user: a raw id of the export (None or an unknown id: folded in from `history`; with
        `strict_user` an unknown id raises ValueError); history: raw item ids of interactions not
        in the export (new since training, or the whole history of a new user); exclude_seen:
        leave out the user's known and given interactions; allow: score only these items."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        row = self.user_rows.get(_normal_id(user)) if user is not None else None
        if row is None and user is not None and strict_user:
            raise ValueError(f"unknown user id {user!r} (not in this export)")
        given = self._rows_of(history, "history", ignore_unknown_items)
        past = self.train.row(row) if row is not None else np.empty(0, np.int64)
        x_u = np.union1d(past, given)  # training history plus what was given
        excluded = np.union1d(self.seen.row(row), given) if row is not None else given
        if not exclude_seen:
            excluded = np.empty(0, np.int64)
        allowed = self._rows_of(allow, "allow", ignore_unknown_items) if allow is not None else None

        kind = self.manifest["score"]["type"]
        if kind == "popularity" or (kind == "item_item" and not x_u.size):
            return self._popular(k, excluded, allowed)
        if kind == "item_item":
            return self._item_item(x_u, k, excluded, allowed)
        if row is not None:
            q = np.asarray(self.users[row], np.float32)
        elif x_u.size:
            q = np.asarray(self.items[x_u], np.float32).mean(0)  # fold-in: see the module docstring
        else:
            return self._popular(k, excluded, allowed)

        ridge_items = ridge_values = None
        if self.ridge is not None and self.ridge_weight > 0:
            cols, vals = self.ridge.rows(x_u)
            n = self.items.shape[0]
            if 8 * cols.size >= n:  # dense accumulation is cheaper than sorting this many entries
                dense = np.bincount(cols, weights=vals, minlength=n)  # float64
                ridge_items = np.flatnonzero(dense)
                ridge_values = dense[ridge_items]
            else:
                ridge_items, inverse = np.unique(cols, return_inverse=True)
                ridge_values = np.bincount(inverse, weights=vals, minlength=ridge_items.size)

        if allowed is not None:
            candidates = np.setdiff1d(allowed, excluded)
        else:
            candidates = self._candidates(q, k, excluded, ridge_items, ridge_values)
        scores = np.asarray(self.items[candidates], np.float32) @ q
        if ridge_items is not None:
            scores = self._fused(q, scores, candidates, ridge_items, ridge_values)
        order = np.argsort(-scores, kind="stable")[:k]
        return [(str(self.item_ids[candidates[i]]), float(scores[i])) for i in order]

    def _item_item(self, x_u: np.ndarray, k: int, excluded: np.ndarray,
                   allowed: np.ndarray | None) -> list[tuple[str, float]]:
        """A closed form's s = x_u W over every item (or the allow-list), excluded items removed."""
        n = self.items.shape[0]
        cols, vals = self.ridge.rows(x_u)
        scores = np.bincount(cols, weights=vals, minlength=n).astype(np.float32)
        pool = np.setdiff1d(allowed if allowed is not None else np.arange(n), excluded)
        order = np.argsort(-scores[pool], kind="stable")[:k]
        return [(str(self.item_ids[pool[i]]), float(scores[pool[i]])) for i in order]

    def _candidates(self, q: np.ndarray, k: int, excluded: np.ndarray, ridge_items: np.ndarray | None,
                    ridge_values: np.ndarray | None) -> np.ndarray:
        """The index's top items by u . z, deepened until k of them are not excluded and have
        (x_u W)_i >= 0 (each beats every item below it that has no ridge value), joined with
        the ridge candidates; excluded items removed."""
        n = self.items.shape[0]
        first = depth = min(k + excluded.size, n)
        while True:
            _, found = self.index.search(q[None, :], depth)
            ann = np.setdiff1d(found[0][found[0] >= 0].astype(np.int64), excluded)
            if ridge_items is None:
                return ann
            good = int((_values_at(ridge_items, ridge_values, ann) >= 0).sum())
            if good >= k or depth >= n:
                return np.setdiff1d(np.union1d(ann, ridge_items), excluded)
            if depth >= 16 * first:  # an approximate index that does not fill deep searches: score every item
                return np.setdiff1d(np.arange(n), excluded)
            depth = min(2 * depth, n)

    def _fused(self, q: np.ndarray, dot: np.ndarray, candidates: np.ndarray, ridge_items: np.ndarray,
               ridge_values: np.ndarray) -> np.ndarray:
        """standardise(u . z) + eta standardise(x_u W) at `candidates`, the moments over all N items."""
        n = self.items.shape[0]
        mean, cov = self._moments
        q64 = q.astype(np.float64)
        mean1, std1 = q64 @ mean, np.sqrt(max(q64 @ cov @ q64, 1e-24))
        mean2 = ridge_values.sum() / n
        std2 = np.sqrt(max((np.square(ridge_values).sum() - n * mean2**2) / max(n - 1, 1), 1e-24))
        ridge = _values_at(ridge_items, ridge_values, candidates)
        return ((dot - mean1) / std1 + self.ridge_weight * (ridge - mean2) / std2).astype(np.float32)

    def _popular(self, k: int, excluded: np.ndarray, allowed: np.ndarray | None) -> list[tuple[str, float]]:
        """The most popular training items (score: training interactions), ties by item row."""
        pool = allowed if allowed is not None else np.arange(self.items.shape[0])
        pool = np.setdiff1d(pool, excluded)
        order = np.argsort(-np.asarray(self.popularity[pool]), kind="stable")[:k]
        return [(str(self.item_ids[pool[i]]), float(self.popularity[pool[i]])) for i in order]


def _normal_id(raw: object) -> str:
    """A raw id as slifmr's importers store it: stripped, in Unicode NFC (slifmr/data/ids.py)."""
    return unicodedata.normalize("NFC", str(raw).strip())


def _id_list(ids: Any, what: str) -> list[str]:
    """A bare string (or int) is one id, never its characters; an iterable of str/int is a list
    of ids (the rule of slifmr/arguments.py, restated here: this file imports nothing of slifmr)."""
    if isinstance(ids, (str, int)) and not isinstance(ids, bool):
        return [str(ids)]
    if isinstance(ids, (bytes, dict)) or not hasattr(ids, "__iter__"):
        raise ValueError(f"{what} must be an id or a list of ids, got {type(ids).__name__}")
    out = list(ids)
    for v in out:
        if isinstance(v, bool) or not isinstance(v, (str, int, np.integer)):
            raise ValueError(f"{what} must hold ids (strings), got {type(v).__name__} {v!r:.60}")
    return [str(v) for v in out]


def _values_at(keys: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """values[keys == a] for each a of `at` (keys sorted and unique), 0 where absent."""
    out = np.zeros(at.size)
    pos = np.searchsorted(keys, at)
    hit = pos < keys.size
    hit[hit] = keys[pos[hit]] == at[hit]
    out[hit] = values[pos[hit]]
    return out


# ----------------------------------------------------------------------------- HTTP serving
#
# `python slifmr_scorer.py EXPORT --port 8000 [--replicas 2]` (what `slifmr serve` runs): the
# standard library's threading HTTP server in front of `Scorer`, so the serving host still needs
# only numpy and faiss. Replicas are processes sharing the port (SO_REUSEPORT: the kernel spreads
# connections over them), each with its own memory-mapped copy of the arrays.
#
#   GET  /health      200 {"status": "ok", "variant", "users", "items", "score"}
#   POST /recommend   {"user": "196" | null, "k": 10, "history": [...], "allow": [...],
#                      "exclude_seen": true, "strict_user": false}
#                     200 {"user": ..., "items": [{"item": "50", "score": 1.23}, ...]}
#   bad JSON, a missing or ill-typed field, k < 1, an unknown id: 400 {"error": "..."};
#   another path: 404; another method: 405.

REQUEST_FIELDS = {"user", "k", "history", "allow", "exclude_seen", "strict_user", "ignore_unknown_items"}


def answer(scorer: Scorer, body: bytes) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of one POST /recommend request body."""
    try:
        request = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as e:
        return 400, {"error": f"the body is not JSON: {e}"}
    if not isinstance(request, dict):
        return 400, {"error": 'the body must be a JSON object such as {"user": "196", "k": 10}'}
    unknown = set(request) - REQUEST_FIELDS
    if unknown:
        return 400, {"error": f"unknown field(s) {', '.join(sorted(unknown))} (fields: {', '.join(sorted(REQUEST_FIELDS))})"}
    user = request.get("user")
    if isinstance(user, bool) or (user is not None and not isinstance(user, (str, int))):
        return 400, {"error": f"user must be a string id or null, got {user!r:.60}"}
    for flag in ("exclude_seen", "strict_user", "ignore_unknown_items"):
        if flag in request and not isinstance(request[flag], bool):
            return 400, {"error": f"{flag} must be true or false, got {request[flag]!r:.60}"}
    try:
        items = scorer.recommend(None if user is None else str(user), k=request.get("k", 10),
                                 history=request.get("history") or (), allow=request.get("allow"),
                                 exclude_seen=request.get("exclude_seen", True),
                                 ignore_unknown_items=request.get("ignore_unknown_items", False),
                                 strict_user=request.get("strict_user", False))
    except ValueError as e:
        return 400, {"error": str(e)}
    return 200, {"user": user, "items": [{"item": i, "score": s} for i, s in items]}


def make_server(scorer: Scorer, host: str = "127.0.0.1", port: int = 8000, reuse_port: bool = False) -> Any:
    """A ThreadingHTTPServer answering /health and /recommend from `scorer` (not yet serving:
    call serve_forever). Port 0 picks a free port (server.server_address[1])."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    health = {"status": "ok", "variant": scorer.manifest.get("variant"), "users": int(scorer.user_ids.size),
              "items": int(scorer.item_ids.size), "score": scorer.manifest["score"]["type"]}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: a client reuses its connection
        # headers and body go out in two writes: with Nagle's algorithm the second waits for the
        # client's delayed ACK of the first, 40 ms a request on Linux
        disable_nagle_algorithm = True

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path == "/health":
                self._send(200, health)
            elif self.path == "/recommend":
                self._send(405, {"error": "POST /recommend with a JSON body"})
            else:
                self._send(404, {"error": f"no endpoint {self.path} (GET /health, POST /recommend)"})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length > 0 else b""
            if self.path != "/recommend":
                self._send(404 if self.path != "/health" else 405, {"error": f"no POST endpoint {self.path}"})
                return
            self._send(*answer(scorer, body))

        def log_message(self, format: str, *args: Any) -> None:  # one line per request is noise at 10^3/s
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_port = reuse_port

        def handle_error(self, request: Any, client_address: Any) -> None:
            import sys

            if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up is not an error
                super().handle_error(request, client_address)

        def server_bind(self) -> None:
            import socket

            if reuse_port:
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            super().server_bind()

    return Server((host, port), Handler)


def _replica(folder: str, host: str, port: int, reuse_port: bool) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the replicas
    make_server(Scorer.load(folder), host, port, reuse_port).serve_forever()


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(0)  # SIGTERM (a service manager stopping us): the replicas go in `finally`


def serve(folder: str | Path, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1) -> int:
    """Serve the export in `folder` on host:port with `replicas` processes until Ctrl-C (returns
    130) or SIGTERM (returns 0)."""
    import multiprocessing
    import signal

    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
        raise ValueError(f"replicas must be an integer >= 1, got {replicas!r}")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer in [0, 65535], got {port!r}")
    Scorer.load(folder)  # a bad folder fails here, once, not in every replica
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_replica, args=(str(folder), host, port, replicas > 1), daemon=True)
             for _ in range(replicas)]
    signal.signal(signal.SIGTERM, _terminated)
    for p in procs:
        p.start()
    print(f"serving {folder} on http://{host}:{port} ({replicas} replica(s)): GET /health, POST /recommend", flush=True)
    try:
        while all(p.is_alive() for p in procs):
            procs[0].join(0.5)
        return 1  # a replica died
    except KeyboardInterrupt:
        return 130
    except SystemExit as e:
        return int(e.code or 0)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(5)


if __name__ == "__main__":
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="Serve a slifmr export over HTTP (numpy + faiss only).")
    parser.add_argument("export", nargs="?", default=str(Path(__file__).parent))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--replicas", type=int, default=1)
    a = parser.parse_args()
    sys.exit(serve(a.export, a.host, a.port, a.replicas))
