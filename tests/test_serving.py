"""HTTP serving (``ecomnlp serve``, ``ecomnlp.serving``): each kind's route answers what the Python API answers for
the same directory, bad input answers 422 naming row and field, calls on the shared base do not mix adapters, and
the command serves a real socket."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from conftest import (FRAUD_FEATURES, NEGATIVE, POSITIVE, fit_tiny_fraud, fit_tiny_reco, fraud_records, quick_train,
                      support_files, train_tiny_chat)

ROOT = Path(__file__).resolve().parents[1]
TEXTS = POSITIVE[:3] + NEGATIVE[:3]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Path, tiny_lm: Path, sentiment_csv: Path) -> dict:
    """One tiny directory of each kind behind one app (the two classifiers on one base), and the directories."""
    from fastapi.testclient import TestClient

    from ecomnlp.serving import build_app
    from test_search_ranking import COLUMNS, FEATURES, GAINS, catalogue, trainer

    root = tmp_path_factory.mktemp("serving")
    paths = {"sentiment": root / "sentiment", "category": root / "category", "fraud": root / "fraud" / "task",
             "reco": root / "reco" / "task", "search": root / "search" / "task", "support": root / "chat"}
    quick_train("review_sentiment", sentiment_csv, paths["sentiment"], tiny_encoder, columns={"text": "review"})
    quick_train("product_classification", sentiment_csv, paths["category"], tiny_encoder,
                columns={"text": "review", "label": "cat"})
    for folder in ("fraud", "reco", "search"):
        (root / folder).mkdir()
    fraud, _ = fit_tiny_fraud(root / "fraud", fraud_records(2000), {**FRAUD_FEATURES, "templates": {"note": "{note}"}},
                              model=str(tiny_encoder), epochs=2)
    fraud.save(paths["fraud"])
    fit_tiny_reco(root / "reco", tiny_encoder)

    from ecomnlp.tasks.search_ranking import SearchData, SearchNetwork, fit_search

    files = catalogue(root / "search")
    data = SearchData(judgments=str(files["judgments"]), items=str(files["items"]), columns=COLUMNS, gains=GAINS,
                      valid_fraction=0.0, test_fraction=0.2, batch_size=4)
    search, _ = fit_search(data, FEATURES, str(tiny_encoder), SearchNetwork(dim=16, text_dim=16, negatives=4),
                           trainer=trainer(2), work_dir=root / "search" / "run", k=5)
    search.save(paths["search"])
    train_tiny_chat(paths["support"], tiny_lm, tiny_encoder, support_files(root / "support"))
    return {"client": TestClient(build_app({k: str(v) for k, v in paths.items()})), "paths": paths}


def _own(served: dict, name: str) -> Any:
    """The directory ``name`` loaded on its own through the Python API."""
    import ecomnlp

    return ecomnlp.load(served["paths"][name])


def _json(value: Any) -> Any:
    """``value`` as it reads back from JSON (the exact floats; numpy values as plain ones)."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist()))


def _post(served: dict, route: str, body: dict) -> Any:
    response = served["client"].post(route, json=body)
    assert response.status_code == 200, response.text
    return response.json()


RECORDS = [{"x0": 0.1, "x1": -1.0, "amount": 20.0, "country": "FR", "note": POSITIVE[0]},
           {"x0": 3.0, "x1": None, "amount": 900.0, "country": "XX", "note": NEGATIVE[0]}]  # NaN, unseen category
MESSAGES = [{"role": "user", "content": "can I return a lamp?"}]


def test_each_route_answers_as_the_python_api(served: dict) -> None:
    for name in ("sentiment", "category"):
        own = _own(served, name)
        assert _post(served, f"/predict/{name}", {"inputs": TEXTS})["predictions"] == _json(own.predict(TEXTS))
        dicts = [{"text": t} for t in TEXTS[:2]]
        assert _post(served, f"/predict/{name}", {"inputs": dicts, "explain": True, "top_k": 2})["predictions"] == \
            _json(own.explain(dicts, top_k=2))
    fraud = _own(served, "fraud")
    assert fraud.card["text_fields"] == ["note"]  # scored through the encoder
    assert _post(served, "/score/fraud", {"records": RECORDS})["results"] == _json(fraud.score(RECORDS))
    assert _post(served, "/score/fraud", {"records": RECORDS, "explain": False})["results"] == \
        _json(fraud.score(RECORDS, explain=False))
    reco = _own(served, "reco")
    assert _post(served, "/recommend/reco", {"user": "u3", "k": 4})["items"] == _json(reco.recommend("u3", 4))
    new_user = {"history": ["i1", "i2"], "features": {"age": 30, "job": "a"}, "k": 3, "exclude": ["i5"]}
    assert _post(served, "/recommend/reco", new_user)["items"] == \
        _json(reco.recommend(None, 3, ["i1", "i2"], {"age": 30, "job": "a"}, exclude=["i5"]))
    scores = _post(served, "/recommend/reco", {"user": "u3", "items": ["i1", "unknown"]})["scores"]
    assert scores[0] == float(reco.score("u3", ["i1"])[0]) and scores[1] is None  # NaN: not in the catalogue
    search = _own(served, "search")
    assert _post(served, "/rank/search", {"query": POSITIVE[1], "k": 3})["items"] == _json(search.rank(POSITIVE[1], 3))
    assert _post(served, "/rank/search", {"query": POSITIVE[1], "items": ["p0"]})["scores"] == \
        _json(search.score(POSITIVE[1], ["p0"]).tolist())
    bot = _own(served, "support")
    assert _post(served, "/chat/support", {"messages": MESSAGES}) == _json(bot.chat(MESSAGES))
    models = served["client"].get("/models").json()
    assert {n: m["route"] for n, m in models.items()} == {
        "sentiment": "/predict/sentiment", "category": "/predict/category", "fraud": "/score/fraud",
        "reco": "/recommend/reco", "search": "/rank/search", "support": "/chat/support"}
    assert models["sentiment"]["labels"] == ["0", "1"] and models["sentiment"]["metrics"]["valid"]
    assert served["client"].get("/health").json() == {"status": "ok", "models": 6}


def test_streamed_chat_is_the_reply_in_pieces(served: dict) -> None:
    body = {"messages": MESSAGES, "num_beams": 1, "max_new_tokens": 12}
    reply = _post(served, "/chat/support", body)
    with served["client"].stream("POST", "/chat/support", json={**body, "stream": True}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[len("data: "):]) for line in response.iter_lines() if line]
    assert len(events) > 2 and events[-1]["done"] and all("delta" in e for e in events[:-1])
    assert "".join(e["delta"] for e in events[:-1]).strip() == reply["content"]
    assert {k: events[-1][k] for k in ("sources", "handoff", "score")} == \
        {k: reply[k] for k in ("sources", "handoff", "score")}


def test_a_streamed_reply_holds_the_lock_only_while_it_computes(served: dict) -> None:
    """Each piece is computed under the lock; between two pieces (while the client reads, or has gone away) other
    calls can run."""
    import asyncio

    from ecomnlp.serving import ChatRequest

    app = served["client"].app
    bot, computing = app.state.models["support"].model, []

    def spy(*args: Any, **kwargs: Any) -> Any:  # records whether each piece is computed under the lock
        for piece in type(bot).stream(bot, *args, **kwargs):
            computing.append(app.state.lock.locked())
            yield piece

    route = next(r for r in app.routes if getattr(r, "path", "") == "/chat/{name}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bot, "stream", spy)
        response = route.endpoint("support", ChatRequest(messages=MESSAGES, stream=True, num_beams=1,
                                                         max_new_tokens=12))

        async def read() -> tuple[bool, list[str]]:
            events = [await anext(response.body_iterator)]
            held = app.state.lock.locked()
            return held, events + [e async for e in response.body_iterator]

        held, events = asyncio.run(read())
    assert not held and len(events) > 2 and json.loads(events[-1][len("data: "):])["done"]
    assert len(computing) == len(events) - 1 and all(computing)


BAD = [  # route, body, status, a part of the answer's detail
    ("/predict/sentiment", {"inputs": []}, 422, "at least 1 item"),
    ("/predict/sentiment", {"inputs": ["x"] * 257}, 422, "at most 256 items"),
    ("/predict/sentiment", {"inputs": [{"text": "x"}, {"review": "y"}]}, 422, "input 2 lacks field(s) ['text']"),
    ("/predict/sentiment", {"inputs": ["x", {"text": "y"}]}, 422, "input 2 is a dict: pass texts (str), or dicts"),
    ("/predict/sentiment", {"texts": ["x"]}, 422, "Field required"),
    ("/predict/sentiment", {"inputs": [{"text": None}]}, 422, "input 1, field 'text': None is not a text"),
    ("/predict/sentiment", '{"inputs": ["x"], "top_k": 1e400}', 422, "finite"),  # valid JSON for inf
    ("/chat/support", '{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}', 422, "finite number"),
    ("/chat/support", {"messages": MESSAGES, "seed": 2**64}, 422, "less than 9223372036854775808"),
    ("/chat/support", {"messages": MESSAGES, "stream": True, "num_beams": 1, "max_new_tokens": 5000}, 422,
     "max_new_tokens=5000 leaves no room for the prompt in the model's 1024-token context window"),  # before the 200
    ("/score/fraud", {"records": [RECORDS[0], {**RECORDS[0], "x0": "abc"}]}, 422, "row 2, column 'x0'"),
    ("/chat/support", {"messages": [{"role": "assistant", "content": "hi"}]}, 422, "no user message"),
    ("/chat/support", {"messages": [{"role": "robot", "content": "hi"}]}, 422, "'system', 'user' or 'assistant'"),
    ("/chat/support", {"messages": MESSAGES, "temperature": 0.7, "num_beams": 2}, 422, "temperature must be 0"),
    ("/predict/nothing", {"inputs": ["x"]}, 404, "no model 'nothing'; served: ['category', 'fraud'"),
    ("/score/sentiment", {"records": [{}]}, 404, "'sentiment' is a classifier model: call POST /predict/sentiment"),
    ("/chat/fraud", {"messages": MESSAGES}, 404, "call POST /score/fraud"),
]


@pytest.mark.parametrize("route, body, status, detail", BAD, ids=[f"{r}-{d[:20]}" for r, _, _, d in BAD])
def test_bad_calls_answer_with_what_is_wrong(served: dict, route: str, body: dict | str, status: int,
                                            detail: str) -> None:
    response = served["client"].post(route, **({"content": body, "headers": {"content-type": "application/json"}}
                                                if isinstance(body, str) else {"json": body}))
    assert response.status_code == status
    assert detail in json.dumps(response.json()["detail"], ensure_ascii=False)


def test_concurrent_calls_keep_their_own_adapter(served: dict) -> None:
    """Calls to the two classifiers from 8 threads at once: each gets what it gets alone (the base's active
    adapter is switched per call, so unserialised calls would run some rows through the other task's adapter)."""
    texts = TEXTS * 20
    alone = {name: _post(served, f"/predict/{name}", {"inputs": texts}) for name in ("sentiment", "category")}
    calls = ["sentiment", "category"] * 8
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda name: _post(served, f"/predict/{name}", {"inputs": texts}), calls))
    assert all(answer == alone[name] for name, answer in zip(calls, answers))


def test_folders_name_the_models_unless_a_mapping_does(tmp_path: Path) -> None:
    from ecomnlp.serving import _names

    assert _names(["runs/sentiment", "x/fraud"]) == {"sentiment": Path("runs/sentiment"), "fraud": Path("x/fraud")}
    assert _names({"a": "runs/task"}) == {"a": Path("runs/task")}
    with pytest.raises(ValueError, match="same folder name.*mapping"):
        _names(["a/task", "b/task"])
    with pytest.raises(ValueError, match="nothing to serve"):
        _names([])


def test_answers_are_plain_json() -> None:
    """Starlette refuses NaN: a missing field's value or an unknown item's score goes out as null."""
    import numpy as np

    from ecomnlp.serving import _plain

    answer = _plain({"a": [np.float64("nan"), np.int64(2)], "b": ({"c": float("nan")}, np.array([0.5]))})
    assert answer == {"a": [None, 2], "b": [{"c": None}, [0.5]]}
    json.dumps(answer, allow_nan=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command_answers_over_a_socket(served: dict) -> None:
    """The user's workflow: ``ecomnlp serve`` on a trained directory, then a plain HTTP call."""
    import httpx

    port = _free_port()
    command = [sys.executable, "-m", "ecomnlp.cli", "serve", "--models", json.dumps([str(served["paths"]["sentiment"])]),
               "--port", str(port)]
    server = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not start within 120 s"
                time.sleep(0.5)
        answer = httpx.post(f"http://127.0.0.1:{port}/predict/sentiment", json={"inputs": TEXTS}, timeout=60)
        assert answer.status_code == 200
        assert answer.json()["predictions"] == _json(_own(served, "sentiment").predict(TEXTS))
    finally:
        server.terminate()
        server.wait(timeout=30)
