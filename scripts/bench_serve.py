"""Real-time serving benchmark: what HTTP (`ecomnlp serve`) adds to a prediction, on real reviews.

Starts `ecomnlp serve` on a trained classifier directory in its own process and loads the same directory in this
one. For each of `--requests` test reviews, in turn: the Python call `model.predict([review])` (the reference) and
the same review as `POST /predict/<name>` over a kept-alive connection; then the same for batches of `--batch`
reviews. Prints median and 95th-percentile latency both ways and their ratio; writes the README table.

    python scripts/bench_serve.py [--model runs/bench/sentiment-zh --data .../test.csv --column review]
"""
from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, name: str, port: int, wait_s: float = 300) -> tuple[subprocess.Popen, float]:
    """`ecomnlp serve` in its own process; returns it once /health answers, and how long that took."""
    import httpx

    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "ecomnlp.cli", "serve", "--models", json.dumps({name: model}),
                               "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    while True:
        if server.poll() is not None:
            raise SystemExit(f"ecomnlp serve exited:\n{server.stderr.read()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server, time.perf_counter() - started
        except httpx.TransportError:
            if time.perf_counter() - started > wait_s:
                server.kill()
                raise SystemExit(f"ecomnlp serve did not answer within {wait_s:.0f} s")
            time.sleep(0.5)


def latencies(calls: list[tuple], repeat_warmup: int = 3) -> dict[str, list[float]]:
    """Each (label, fn) of a round timed in turn, the order flipped every round, so that both see the same machine
    and neither always runs right after the other (whose idle threads may still be spinning)."""
    out: dict[str, list[float]] = {label: [] for label, _ in calls[0]}
    for i, round_ in enumerate(calls):
        for label, fn in round_ if i % 2 == 0 else reversed(round_):
            started = time.perf_counter()
            fn()
            out[label].append(time.perf_counter() - started)
    return {label: times[repeat_warmup:] for label, times in out.items()}


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"median_ms": round(1000 * statistics.median(ordered), 1),
            "p95_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
            "calls": len(ordered)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "runs/bench/sentiment-zh"), help="trained classifier directory")
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/online_shopping_10_cats/test.csv"))
    parser.add_argument("--column", default="review")
    parser.add_argument("--requests", type=int, default=200, help="single-review calls each way")
    parser.add_argument("--batch", type=int, default=32, help="reviews per batched call")
    parser.add_argument("--batches", type=int, default=20, help="batched calls each way")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", default=str(ROOT / "reports/bench_serve.json"))
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite the README table")
    opts = parser.parse_args()
    if not (Path(opts.model) / "card.json").is_file():
        raise SystemExit(f"{opts.model} is not a trained task directory: train one first "
                         f"(python scripts/bench_quality.py --only sentiment-zh, or ecomnlp train ...)")

    import httpx

    import ecomnlp
    from ecomnlp.data import read_table
    from _bench import publish

    texts = [t for t in read_table(opts.data)[opts.column] if t and t.strip()]
    rng = random.Random(opts.seed)
    warmup = 3
    singles = rng.sample(texts, opts.requests + warmup)
    batches = [rng.sample(texts, opts.batch) for _ in range(opts.batches + warmup)]
    model = ecomnlp.load(opts.model)
    name = model.card["task"]
    port = free_port()
    server, startup_s = start_server(opts.model, name, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            def over_http(rows: list[str]) -> None:
                answer = client.post(f"/predict/{name}", json={"inputs": rows})
                answer.raise_for_status()
                assert len(answer.json()["predictions"]) == len(rows)

            # the same answers both ways (floats through JSON), checked before timing
            check = singles[:8]
            served = client.post(f"/predict/{name}", json={"inputs": check}).json()["predictions"]
            if served != json.loads(json.dumps(model.predict(check))):
                raise SystemExit("the server's predictions differ from the Python call's")
            one = latencies([[("python", lambda t=t: model.predict([t])), ("http", lambda t=t: over_http([t]))]
                             for t in singles], warmup)
            many = latencies([[("python", lambda b=b: model.predict(b)), ("http", lambda b=b: over_http(b))]
                              for b in batches], warmup)
    finally:
        server.terminate()
        server.wait(timeout=30)

    rows = {"single": {k: summary(v) for k, v in one.items()}, "batch": {k: summary(v) for k, v in many.items()}}
    for part in rows.values():
        part["ratio_median"] = round(part["http"]["median_ms"] / part["python"]["median_ms"], 2)
        part["overhead_median_ms"] = round(part["http"]["median_ms"] - part["python"]["median_ms"], 1)
    report = {"model": opts.model, "base_model": model.card["base_model"]["name"], "task": name, "data": opts.data,
              "batch": opts.batch, "server_startup_s": round(startup_s, 1), **rows}
    lines = [f"`{name}` (`{report['base_model']}` + LoRA, `{Path(opts.model).name}`), real reviews drawn from "
             f"`{Path(opts.data).name}`; the server (`ecomnlp serve`, one process) and the Python call share the 2 "
             f"CPU cores and take turns; the server answered its first call {report['server_startup_s']} s after "
             f"starting.", "",
             "| call | Python `model.predict`: median / p95 | HTTP `POST /predict`: median / p95 | HTTP ÷ Python "
             "(median) | added by HTTP (median) |", "|---|---|---|---|---|"]
    for label, key in ((f"1 review ({rows['single']['http']['calls']} calls)", "single"),
                       (f"{opts.batch} reviews ({rows['batch']['http']['calls']} calls)", "batch")):
        r = rows[key]
        lines.append(f"| {label} | {r['python']['median_ms']} / {r['python']['p95_ms']} ms | "
                     f"{r['http']['median_ms']} / {r['http']['p95_ms']} ms | {r['ratio_median']}x | "
                     f"{r['overhead_median_ms']} ms |")
    publish(report, opts.report, "bench_serve", "\n".join(lines), readme=not opts.no_readme)


if __name__ == "__main__":
    main()
