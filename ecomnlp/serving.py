"""Trained task directories behind HTTP (FastAPI), for real-time calls: ``build_app`` and ``serve``.

Encoder classifiers share one base model in memory (``load_many``); fraud, recommendation, search-ranking and
chat directories are loaded as ``ecomnlp.load`` loads them. Each model has the route of its kind:

    POST /predict/{name}    classifier: {"inputs": [text or {field: text}], "explain": false}
    POST /score/{name}      fraud:      {"records": [{field: value}], "explain": true}
    POST /recommend/{name}  recommender: {"user": id, "k": 10, "history": [...], "features": {...}}
    POST /rank/{name}       search:     {"query": text, "k": 10} or {"query": text, "items": [ids]}
    POST /chat/{name}       chatbot:    {"messages": [...], "stream": false, ...generation settings}
    GET  /models, GET /health

Calls run one at a time (a lock): the tasks share one base whose active adapter is switched per call, and two
calls on 2 CPU cores gain nothing from running side by side; a streamed chat reply takes the lock per piece. Bad
input answers 422 with the library's message (row and field named); a model of another kind under that name answers
404 naming the route to use.
"""
from __future__ import annotations

import dataclasses
import json
import math
import threading
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from .artifact import CHAT_KIND, FRAUD_KIND, RECO_KIND, SEARCH_KIND, read_card

CLASSIFIER = "classifier"  # the kind of an encoder task's directory (its card has no "kind")
ROUTES = {CLASSIFIER: "predict", FRAUD_KIND: "score", RECO_KIND: "recommend", SEARCH_KIND: "rank", CHAT_KIND: "chat"}
MAX_ROWS = 256  # rows (texts, records) one call may send


class Body(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)  # 1e400 is valid JSON for inf: refused like any bad number


class PredictRequest(Body):
    inputs: list[str | dict[str, Any]] = Field(min_length=1, max_length=MAX_ROWS)
    explain: bool = False  # the words that raised each predicted label most (occlusion; one pass per word)
    top_k: int = Field(5, ge=1)  # words per explanation


class ScoreRequest(Body):
    records: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_ROWS)
    explain: bool = True  # the fields that raised each score most
    top_k: int = Field(3, ge=1)


class RecommendRequest(Body):
    user: str | int | None = None  # None, or a user unknown at training time: described by history and features
    k: int = Field(10, ge=1)
    history: list[str | int] | None = None  # item ids, oldest first
    features: dict[str, Any] | None = None
    exclude_seen: bool = True
    exclude: list[str | int] = []
    items: list[str | int] | None = Field(None, max_length=MAX_ROWS)  # given: these items' probabilities instead


class RankRequest(Body):
    query: str
    k: int = Field(10, ge=1)
    items: list[str | int] | None = Field(None, max_length=MAX_ROWS)  # given: these items' scores instead


class Message(Body):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(Body):
    messages: list[Message] = Field(min_length=1)
    stream: bool = False  # server-sent events: {"delta": piece} ..., then {"done": true, "sources": ...}
    max_new_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, ge=0, lt=2**63)
    num_beams: int | None = Field(None, ge=1)  # default: as the bot was trained to decode (1 when sampling)
    stop: list[str] = []


def _kind(card: Mapping[str, Any]) -> str:
    return card.get("kind", CLASSIFIER)


def _names(models: Sequence[str | Path] | Mapping[str, str | Path]) -> dict[str, Path]:
    """{name: directory}; a list is named by its folders' names."""
    if isinstance(models, Mapping):
        named = {str(k): Path(v) for k, v in models.items()}
    else:
        named = {Path(p).name: Path(p) for p in models}
        if len(named) != len(models):
            raise ValueError(f"two directories have the same folder name in {[str(p) for p in models]}: "
                             f"name them with a mapping {{name: path}}")
    if not named:
        raise ValueError("nothing to serve: give at least one trained directory")
    return named


@dataclasses.dataclass(frozen=True)
class Served:
    kind: str
    model: Any  # TaskModel, FraudModel, RecommendationModel, SearchModel or SupportBot
    card: dict[str, Any]

    def describe(self, name: str) -> dict[str, Any]:
        """What ``GET /models`` says of it."""
        return {"kind": self.kind, "route": f"/{ROUTES[self.kind]}/{name}", "task": self.card.get("task", self.kind),
                "labels": self.card.get("task_state", {}).get("labels"), "metrics": self.card.get("metrics")}


def load_models(models: Sequence[str | Path] | Mapping[str, str | Path], base: str | None = None,
                device: str = "cpu") -> dict[str, Served]:
    """The directories loaded: the classifiers on one shared base, every other directory on its own."""
    from .predictor import load, load_many

    named = _names(models)
    cards = {name: read_card(path) for name, path in named.items()}
    classifiers = {n: p for n, p in named.items() if _kind(cards[n]) == CLASSIFIER}
    shared = load_many(classifiers, base, device) if classifiers else {}
    return {name: Served(_kind(cards[name]), shared[name] if name in classifiers else load(path, base, device),
                         cards[name]) for name, path in named.items()}


def _plain(value: Any) -> Any:
    """JSON-ready: NaN (an unknown item's score, a missing field's value) and infinities as null, numpy values as
    Python ones."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def build_app(models: Sequence[str | Path] | Mapping[str, str | Path], base: str | None = None,
              device: str = "cpu") -> FastAPI:
    """A FastAPI app serving the trained directories ``models`` (a list, named by folder, or {name: path})."""
    loaded = load_models(models, base, device)
    lock = threading.Lock()  # around every model call
    app = FastAPI(title="ecomnlp", description="Trained e-commerce NLP tasks on one shared encoder.")
    app.state.models, app.state.lock = loaded, lock  # {name: Served}: the objects the routes call

    def model_of(name: str, kind: str) -> Any:
        if name not in loaded:
            raise HTTPException(404, f"no model '{name}'; served: {sorted(loaded)}")
        served = loaded[name]
        if served.kind != kind:
            raise HTTPException(404, f"'{name}' is a {served.kind} model: call POST /{ROUTES[served.kind]}/{name}")
        return served.model

    def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn`` under the lock, its answer JSON-ready; the library's input errors become 422 with their message."""
        try:
            with lock:
                return _plain(fn(*args, **kwargs))
        except (ValueError, KeyError, TypeError) as e:
            raise HTTPException(422, str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)) from e

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, error: RequestValidationError) -> JSONResponse:
        """422 with pydantic's errors, which echo the bad input: made JSON-safe first (an inf, a NaN)."""
        return JSONResponse(status_code=422, content={"detail": _plain(jsonable_encoder(error.errors()))})

    # async: answered on the event loop, even while every worker thread waits for the lock
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": len(loaded)}

    @app.get("/models")
    async def list_models() -> dict[str, Any]:
        return {name: served.describe(name) for name, served in loaded.items()}

    @app.post("/predict/{name}")
    def predict(name: str, request: PredictRequest) -> dict[str, Any]:
        model = model_of(name, CLASSIFIER)
        if request.explain:
            return {"predictions": call(model.explain, request.inputs, request.top_k)}
        return {"predictions": call(model.predict, request.inputs)}

    @app.post("/score/{name}")
    def score(name: str, request: ScoreRequest) -> dict[str, Any]:
        model = model_of(name, FRAUD_KIND)
        return {"results": call(model.score, request.records, request.explain, request.top_k)}

    @app.post("/recommend/{name}")
    def recommend(name: str, request: RecommendRequest) -> dict[str, Any]:
        model = model_of(name, RECO_KIND)
        if request.items is not None:
            scores = call(model.score, request.user, request.items, request.history, request.features)
            return {"scores": scores}
        return {"items": call(model.recommend, request.user, request.k, request.history, request.features,
                              request.exclude_seen, request.exclude)}

    @app.post("/rank/{name}")
    def rank(name: str, request: RankRequest) -> dict[str, Any]:
        model = model_of(name, SEARCH_KIND)
        if request.items is not None:
            return {"scores": call(model.score, request.query, request.items)}
        return {"items": call(model.rank, request.query, request.k)}

    @app.post("/chat/{name}", response_model=None)
    def chat(name: str, request: ChatRequest) -> dict[str, Any] | StreamingResponse:
        bot = model_of(name, CHAT_KIND)
        messages = [m.model_dump() for m in request.messages]
        settings = _generation(bot, request)
        if not request.stream:
            return call(bot.chat, messages, **settings)
        grounding = call(bot.ground, messages)
        pieces = bot.stream(messages, grounding, **settings)
        first = call(next, pieces, None)  # before the 200 goes out: a prompt that cannot fit is still a 422

        def events() -> Iterator[str]:
            """The lock is taken for each piece, never held while a piece waits for the client: a client that goes
            away blocks nothing, and other calls run between pieces (the bot keeps no state between them)."""
            piece = first
            try:
                while piece is not None:
                    yield f"data: {json.dumps({'delta': piece}, ensure_ascii=False)}\n\n"
                    with lock:
                        piece = next(pieces, None)
            finally:
                pieces.close()
            top = grounding.hits[0].score if grounding.hits else None
            done = {"done": True, "sources": grounding.sources, "handoff": grounding.handoff, "score": top}
            yield f"data: {json.dumps(done)}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def _generation(bot: Any, request: ChatRequest) -> dict[str, Any]:
    """The call's generation settings, checked now (a bad combination is a 422, not a broken stream)."""
    beams = request.num_beams if request.num_beams is not None else 1 if request.temperature > 0 else None
    settings = {"temperature": request.temperature, "top_p": request.top_p, "seed": request.seed, "stop": request.stop}
    if request.max_new_tokens is not None:
        settings["max_new_tokens"] = request.max_new_tokens
    if beams is not None:
        settings["num_beams"] = beams
    try:
        dataclasses.replace(bot.settings, **settings)
    except ValueError as e:
        raise HTTPException(422, str(e)) from e
    return settings


def serve(models: Sequence[str | Path] | Mapping[str, str | Path], host: str = "127.0.0.1", port: int = 8000,
          base: str | None = None, device: str = "cpu") -> None:
    """Serve ``models`` over HTTP until interrupted (uvicorn, one worker process)."""
    import uvicorn

    uvicorn.run(build_app(models, base, device), host=host, port=port, log_level="info")
