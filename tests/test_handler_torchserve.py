"""The selfheal handler inside a real TorchServe: predictions, bad input, the pod's merged describe
answer across two workers, a hot swap through the watched file, metrics and sampled traffic."""
from __future__ import annotations

import json
import threading
import time
import urllib.request

import numpy as np
import pytest
import torch

from examples.fraud.generator import FEATURES, sample
from examples.fraud.train import build
from model_handler.archive import build_archive
from model_handler.launcher import ServedModel, TorchServeProcess
from model_handler.model import adapter_to_bytes, load_model, model_hash
from model_handler.registry import AdapterRegistry
from model_handler.rules import RuleSet
from model_handler.traffic import TrafficStore
from serving_support import REPO, get_text, post, post_all

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    root = tmp_path_factory.mktemp("handler")
    build(root / "model", rows=3000, seed=0)
    build_archive(root / "model", REPO / "model_handler" / "handler.py", root / "store", "fraud")
    (root / "storage").mkdir()
    uri = f"file://{root / 'storage'}"
    model = load_model(root / "model")
    adapter = model.adapter_state()
    adapter["logit_bias"] = torch.tensor([1.5, -1.5])
    rules = RuleSet.from_yaml(root / "model" / "rules.yaml", model.spec.features, model.spec.classes)
    AdapterRegistry(uri, "default", "fraud").put(
        "v1", adapter_to_bytes(adapter), {"base_model_hash": model_hash(root / "model"), "rules_hash": rules.hash()})
    desired = root / "desired-adapter"
    desired.write_text("base\n")
    # Workers must import this checkout's model_handler; the repo root itself cannot go on
    # PYTHONPATH (its operator/ folder would shadow the stdlib module), so expose just the package.
    python_path = root / "python-path"
    python_path.mkdir()
    (python_path / "model_handler").symlink_to(REPO / "model_handler")
    env = {"PYTHONPATH": str(python_path), "SELFHEAL_STORAGE_URI": uri, "SELFHEAL_NAMESPACE": "default",
           "SELFHEAL_ADAPTER_FILE": str(desired), "SELFHEAL_WATCH_INTERVAL_S": "0",
           "SELFHEAL_PUBLISH_INTERVAL_S": "0", "SELFHEAL_SAMPLE_FRACTION": "1.0",
           "SELFHEAL_SAMPLE_FLUSH_INTERVAL_S": "0.5"}
    served = ServedModel("fraud", "fraud.mar", workers=2, batch_size=4, max_batch_delay_ms=5)
    with TorchServeProcess(root / "store", [served], env=env) as ts:
        yield {"ts": ts, "root": root, "uri": uri, "desired": desired, "adapter": adapter}


def url(pod) -> str:
    return f"{pod['ts'].inference_url}/predictions/fraud"


def post_concurrently(pod, bodies: list) -> list[tuple]:
    """Send all bodies at once, so TorchServe spreads them over both workers (and batches them)."""
    return post_all(url(pod), bodies)


def customized(pod) -> dict:
    with urllib.request.urlopen(f"{pod['ts'].management_url}/models/fraud?customized=true", timeout=30) as r:
        return json.loads(r.read())[0]["customizedMetadata"]


def test_predictions_bad_input_and_the_merged_describe_answer(pod):
    rows = sample(np.random.default_rng(5), 24).x.astype(np.float32)
    want = load_model(pod["root"] / "model").predict_proba(rows).numpy()
    before = customized(pod)["samples"]
    answers = post_concurrently(pod, [dict(zip(FEATURES, row.tolist())) for row in rows[:20]])
    for i in range(20):
        status, answer = answers[i]
        assert status == 200 and answer["adapter_version"] == "base"
        np.testing.assert_allclose(answer["probabilities"][0], want[i], rtol=1e-5, atol=1e-7)
    status, answer = post(url(pod), {"instances": rows[20:].tolist()})
    assert status == 200 and len(answer["label"]) == 4

    workers = pod["ts"].worker_pids("fraud")
    status, answer = post(url(pod), b'[1, 2, NaN, 4, 5, 6, 7, 8]')
    assert status == 422 and "feature 'merchant_age_days'" in answer["error"] and "NaN" in answer["error"]
    assert post(url(pod), b"")[0] == 400
    assert pod["ts"].worker_pids("fraud") == workers  # bad input never costs a worker

    status = customized(pod)
    assert status["samples"] - before == 24  # every row, whichever worker served it
    assert {w["pid"] for w in status["workers"]} == set(workers)
    assert status["adapter"]["version"] == "base"
    assert status["backbone_hash"] == model_hash(pod["root"] / "model")
    assert set(status["scores"]) >= {"input_shift", "rule_conflict"}


def test_hot_swap_through_the_watched_file_reaches_every_worker(pod):
    rows = sample(np.random.default_rng(6), 8).x.astype(np.float32)
    healed = load_model(pod["root"] / "model")
    healed.load_adapter_state(pod["adapter"])
    pod["desired"].write_text("v1\n")
    try:
        for i in range(8):
            status, answer = post(url(pod), rows[i].tolist())
            assert status == 200 and answer["adapter_version"] == "v1"
            np.testing.assert_allclose(answer["probabilities"][0], healed.predict_proba(rows[i:i + 1]).numpy()[0],
                                       rtol=1e-5, atol=1e-7)
        deadline = time.monotonic() + 30
        while customized(pod)["adapter"]["versions"] != ["v1"]:  # an idle worker swaps on its next batch
            assert time.monotonic() < deadline, customized(pod)["adapter"]
            assert all(a["adapter_version"] == "v1" for _, a in post_concurrently(pod, [rows[0].tolist()] * 6))
        assert customized(pod)["adapter"]["version"] == "v1"
    finally:
        pod["desired"].write_text("base\n")


def test_metrics_and_sampled_traffic(pod):
    post(url(pod), sample(np.random.default_rng(7), 3).x.tolist())
    text = get_text(f"{pod['ts'].metrics_url}/metrics")
    for name in ("selfheal_rows_total", "selfheal_input_shift", "selfheal_rule_conflict", "selfheal_adapter_info"):
        assert name in text, name
    assert 'selfheal_adapter_info{version="' in text
    store = TrafficStore(pod["uri"], "default", "fraud")
    deadline = time.monotonic() + 30
    while not store.shards():
        assert time.monotonic() < deadline, "no traffic shard written"
        time.sleep(0.2)
    x, probs = store.read_recent(1000)
    assert x.shape[1] == len(FEATURES) and probs.shape == (len(x), 2) and len(x) > 0


def test_hot_swap_under_a_request_loop_loses_no_request(pod):
    """A bounded loop of requests keeps running while the adapter swaps back and forth."""
    rows = sample(np.random.default_rng(8), 50).x.astype(np.float32).tolist()
    failures, served, stop = [], {"base": 0, "v1": 0}, threading.Event()

    def loop():
        deadline = time.monotonic() + 30
        i = 0
        while not stop.is_set() and time.monotonic() < deadline and i < 5000:
            status, answer = post(url(pod), rows[i % len(rows)])
            if status != 200:
                failures.append((status, answer))
            else:
                served[answer["adapter_version"]] += 1
            i += 1

    threads = [threading.Thread(target=loop) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for version in ["v1", "base", "v1", "base"]:
            pod["desired"].write_text(f"{version}\n")
            time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        pod["desired"].write_text("base\n")
    assert failures == []
    assert served["v1"] > 0 and served["base"] > 0


def test_a_corrupt_adapter_is_refused_while_serving_continues(pod):
    registry = AdapterRegistry(pod["uri"], "default", "fraud")
    model = load_model(pod["root"] / "model")
    registry.put("v2", adapter_to_bytes(pod["adapter"]), {"base_model_hash": model_hash(pod["root"] / "model"),
                                                         "rules_hash": "x"})
    stored = next((pod["root"] / "storage").rglob("v2/adapter.safetensors"))
    stored.write_bytes(stored.read_bytes()[:-7] + b"garbage")  # a damaged file in the registry
    row = sample(np.random.default_rng(9), 1).x.astype(np.float32)[0].tolist()
    pod["desired"].write_text("v2\n")
    try:
        deadline = time.monotonic() + 30
        while "v2" not in customized(pod)["adapter"]["refused"]:
            assert time.monotonic() < deadline, customized(pod)["adapter"]
            status, answer = post(url(pod), row)
            assert status == 200 and answer["adapter_version"] == "base"  # the previous one keeps serving
        assert "sha256" in customized(pod)["adapter"]["refused"]["v2"].lower()
        np.testing.assert_allclose(post(url(pod), row)[1]["probabilities"][0],
                                   model.predict_proba([row]).numpy()[0], rtol=1e-5, atol=1e-7)
    finally:
        pod["desired"].write_text("base\n")


def test_a_killed_worker_is_restarted_and_the_pod_still_answers(pod):
    import os
    import signal
    rows = sample(np.random.default_rng(10), 10).x.astype(np.float32)
    post(url(pod), rows.tolist())
    before = customized(pod)["samples"]
    victim = pod["ts"].worker_pids("fraud")[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 90
    while True:
        pids = pod["ts"].worker_pids("fraud")
        if len(pids) == 2 and victim not in pids:
            break
        assert time.monotonic() < deadline, f"worker not restarted: {pids}"
        time.sleep(0.5)
    assert post(url(pod), rows[0].tolist())[0] == 200
    status = customized(pod)
    # the dead worker's published counts still add: the pod's counters never go backwards
    assert status["samples"] >= before + 1
