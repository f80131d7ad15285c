"""Serving benchmark: what the self-healing handler costs over a plain TorchServe handler.

Both serve an MLP of the same size on the fraud example's features, in the same TorchServe, with the
same workers and batching. The self-healing handler additionally validates every request, evaluates
the analyst rules, updates the drift sketch, samples traffic and publishes its status; the plain
handler parses JSON and runs the forward pass. Two measurements:

  in-process: microseconds per request inside the handler code (no HTTP), 1 row and 64 rows;
  over HTTP:  closed-loop clients with keep-alive against a real TorchServe: throughput and latency.

    python -m bench.serving [--quick] [--json out/serving.json]
"""
from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from bench.plain_handler import PlainHandler, save_plain_mlp
from examples.fraud.generator import CLASSES, FEATURES, sample
from examples.fraud.train import build
from model_handler.archive import build_archive
from model_handler.launcher import ServedModel, TorchServeProcess
from model_handler.service import ModelService, ServiceConfig

REPO = Path(__file__).resolve().parents[1]


class _Context:
    """The little of TorchServe's context the plain handler touches in-process."""

    def set_response_status(self, *args, **kwargs) -> None:
        pass


def _per_call_us(fn, body, seconds: float) -> float:
    fn(body)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(50):
            fn(body)
        n += 50
    return (time.perf_counter() - start) / n * 1e6


def in_process(model_dir: Path, plain_dir: Path, rows: np.ndarray, seconds: float, status_dir: Path) -> dict:
    service = ModelService.from_model_dir(model_dir, ServiceConfig(model_name="fraud", status_dir=str(status_dir)))
    plain = PlainHandler()
    plain.initialize(type("Ctx", (), {"system_properties": {"model_dir": str(plain_dir)}})())
    context = _Context()
    results = {}
    for n in (1, 64):
        body = json.dumps(rows[:n].tolist()).encode()
        results[f"{n}_row"] = {
            "selfheal_us": round(_per_call_us(service.predict, body, seconds), 1),
            "plain_us": round(_per_call_us(lambda b: plain.handle([{"body": b}], context), body, seconds), 1),
        }
    return results


def _load(url: str, bodies: list[bytes], requests: int, concurrency: int) -> dict:
    target = urlparse(url)
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    counter = iter(range(requests))

    def client(seed: int) -> None:
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        mine = []
        for i in counter:
            body = bodies[(i + seed) % len(bodies)]
            start = time.perf_counter()
            conn.request("POST", target.path, body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            mine.append(time.perf_counter() - start)
            if response.status != 200:
                with lock:
                    errors[0] += 1
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = sorted(x * 1e3 for x in latencies)
    return {"requests": len(ms), "errors": errors[0], "throughput_rps": round(len(ms) / wall, 1),
            "p50_ms": round(ms[len(ms) // 2], 2), "p95_ms": round(ms[int(len(ms) * 0.95)], 2),
            "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 2), "mean_ms": round(statistics.mean(ms), 2)}


def over_http(store: Path, rows: np.ndarray, python_path: Path, requests: int, concurrency: int,
              workers: int, batch_size: int, rounds: int) -> dict:
    models = [ServedModel(name, f"{name}.mar", workers=workers, batch_size=batch_size, max_batch_delay_ms=2)
              for name in ("selfheal", "plain")]
    bodies = [json.dumps(dict(zip(FEATURES, row.tolist()))).encode() for row in rows]
    env = {"PYTHONPATH": str(python_path), "SELFHEAL_PUBLISH_INTERVAL_S": "1.0"}
    runs: dict[str, list[dict]] = {"selfheal": [], "plain": []}
    with TorchServeProcess(store, models, env=env) as ts:
        for name in runs:  # warm-up: first requests pay for lazy imports and allocations
            _load(f"{ts.inference_url}/predictions/{name}", bodies, 50, concurrency)
        for _ in range(rounds):  # alternate, so drift in machine load hits both alike
            for name in runs:
                runs[name].append(_load(f"{ts.inference_url}/predictions/{name}", bodies, requests, concurrency))
    return {name: max(results, key=lambda r: r["throughput_rps"]) | {"rounds": len(results)}
            for name, results in runs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run (about half a minute)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per round and handler")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.rounds = 300, 1

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        root = Path(tmp)
        build(root / "model", rows=4000, seed=0)
        hidden = json.loads((root / "model" / "model.json").read_text())["hidden"]
        save_plain_mlp(root / "plain", FEATURES, CLASSES, hidden=tuple(hidden))
        build_archive(root / "model", REPO / "model_handler" / "handler.py", root / "store", "selfheal")
        build_archive(root / "plain", REPO / "bench" / "plain_handler.py", root / "store", "plain")
        python_path = root / "python-path"  # workers import this checkout's model_handler
        python_path.mkdir()
        (python_path / "model_handler").symlink_to(REPO / "model_handler")
        rows = sample(np.random.default_rng(0), 256).x.astype(np.float32)
        status_dir = root / "status"
        status_dir.mkdir()
        report = {
            "setup": {"workers": args.workers, "batch_size": args.batch_size, "concurrency": args.concurrency,
                      "requests_per_round": args.requests, "rounds": args.rounds, "hidden": hidden},
            "in_process": in_process(root / "model", root / "plain", rows, 0.3 if args.quick else 1.0, status_dir),
            "http": over_http(root / "store", rows, python_path, args.requests, args.concurrency,
                              args.workers, args.batch_size, args.rounds),
        }
    _print(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def _print(report: dict) -> None:
    print(f"setup: {json.dumps(report['setup'])}")
    print("in-process, microseconds per request:")
    for case, r in report["in_process"].items():
        print(f"  {case:7s} selfheal {r['selfheal_us']:9.1f}   plain {r['plain_us']:9.1f}")
    print("over HTTP (TorchServe, best round):")
    for name, r in report["http"].items():
        print(f"  {name:9s} {r['throughput_rps']:8.1f} req/s   p50 {r['p50_ms']:6.2f} ms   p95 {r['p95_ms']:6.2f} ms"
              f"   p99 {r['p99_ms']:6.2f} ms   errors {r['errors']}")


if __name__ == "__main__":
    sys.exit(main())
