"""Every variant exports and serves (issue 41): closed forms' exports give `slifmr recommend`'s
lists, and `slifmr serve` answers POST /recommend and GET /health over real HTTP on loopback."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import slifmr
from slifmr.export import load_export
from slifmr.scorer import Scorer, make_server


@pytest.fixture(scope="module")
def runs(tiny_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[slifmr.Run, Path]]:
    root = tmp_path_factory.mktemp("serve")
    out = {}
    for variant in ("ease", "cooc_ridge", "pop", "ials", "content_knn"):
        if variant == "ials":
            pytest.importorskip("implicit")
        run = slifmr.train(data=tiny_path, variant=variant, out=root / variant)
        out[variant] = (run, run.export(root / f"{variant}-export"))
    return out


@pytest.mark.parametrize("variant", ["ease", "cooc_ridge", "pop", "ials", "content_knn"])
def test_every_closed_form_exports_and_its_lists_are_the_runs(variant: str, runs: dict) -> None:
    run, path = runs[variant]
    export = load_export(path)
    users = [str(u) for u in export.user_ids]
    expected: dict[str, list[str]] = {}
    for row in run.recommend(users, k=10).to_pylist():
        expected.setdefault(row["user"], []).append(row["item"])
    batch: dict[str, list[str]] = {}
    got = export.recommend_batch(np.arange(len(users)), 10)
    for u, i in zip(got["user"], got["item"]):
        batch.setdefault(str(u), []).append(str(i))
    for u in users:
        assert [i for i, _ in export.recommend(u, 10)] == expected[u], (variant, u)
        assert batch[u] == expected[u], (variant, u)


def test_an_item_item_export_scores_a_new_history_as_the_model_would(runs: dict) -> None:
    run, path = runs["ease"]
    scorer = Scorer.load(path)
    w = run.model.weights.numpy()  # EASE's B: s = x_u B
    history = ["3", "7"]
    rows = [scorer.item_rows[h] for h in history]
    scores = w[rows].sum(0)
    order = [int(i) for i in np.argsort(-scores, kind="stable") if i not in rows][:5]
    assert [i for i, _ in scorer.recommend(None, 5, history=history)] == [str(scorer.item_ids[i]) for i in order]


@pytest.fixture(scope="module")
def server(runs: dict):  # noqa: ANN201
    scorer = Scorer.load(runs["ease"][1])
    httpd = make_server(scorer, port=0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield scorer, httpd.server_address[1]
    httpd.shutdown()


def _call(port: int, method: str, path: str, body: object = None, raw: bytes | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, data, {"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def test_http_recommend_answers_the_scorers_lists(server: tuple) -> None:
    scorer, port = server
    status, health = _call(port, "GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["variant"] == "ease" and health["items"] == 40
    for request in ({"user": "5", "k": 3}, {"user": "5", "k": 4, "exclude_seen": False},
                    {"user": None, "k": 5, "history": ["3", "7"]}, {"user": "5", "k": 3, "allow": ["1", "2", "3"]},
                    {"history": "12", "k": 2}):
        status, got = _call(port, "POST", "/recommend", request)
        options = {k: v for k, v in request.items() if k not in ("user", "k")}
        expected = scorer.recommend(request.get("user"), request["k"], **options)
        assert status == 200 and [(x["item"], x["score"]) for x in got["items"]] == expected, request


@pytest.mark.parametrize("request_body, status, message", [
    ({"user": "5", "k": 0}, 400, "k must be an integer >= 1"),
    ({"user": "5", "k": "ten"}, 400, "k must be an integer >= 1"),
    ({"usr": "5"}, 400, "unknown field(s) usr"),
    ({"user": "5", "history": ["no-such-item"]}, 400, "unknown item id 'no-such-item'"),
    ({"user": ["5"]}, 400, "user must be a string id"),
    ({"user": "5", "exclude_seen": "yes"}, 400, "exclude_seen must be true or false"),
    ([1, 2], 400, "must be a JSON object"),
    (b"{not json", 400, "the body is not JSON"),
])
def test_bad_requests_get_4xx_with_a_message(server: tuple, request_body: object, status: int, message: str) -> None:
    _, port = server
    raw = request_body if isinstance(request_body, bytes) else None
    got_status, got = _call(port, "POST", "/recommend", None if raw else request_body, raw)
    assert got_status == status and message in got["error"]


def test_wrong_paths_and_methods(server: tuple) -> None:
    _, port = server
    assert _call(port, "GET", "/nope")[0] == 404
    assert _call(port, "GET", "/recommend")[0] == 405
    assert _call(port, "POST", "/health", {})[0] == 405


def test_slifmr_serve_serves_over_loopback_and_ctrl_c_exits_130(runs: dict) -> None:
    path = runs["pop"][1]
    port = 18000 + int(time.time() * 1000) % 1000
    proc = subprocess.Popen([sys.executable, "-m", "slifmr", "serve", str(path), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(150):
            try:
                status, body = _call(port, "POST", "/recommend", {"user": "5", "k": 3})
                break
            except OSError:
                time.sleep(0.2)
        assert status == 200 and len(body["items"]) == 3
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    assert code == 130
