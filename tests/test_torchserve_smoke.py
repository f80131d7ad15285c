"""A real TorchServe serving the plain baseline handler: predictions, batching, workers, bad input.

One server for the whole module (TorchServe takes seconds to start); tests only read from it.
"""
from __future__ import annotations

import numpy as np
import pytest

from model_handler.launcher import ServedModel, TorchServeProcess
from serving_support import (CLASSES, FEATURES, build_plain_store, expected_probabilities, get_text, post,
                             post_all)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    store, archive = build_plain_store(root)
    model = ServedModel("plain", archive.name, workers=2, batch_size=8, max_batch_delay_ms=10)
    with TorchServeProcess(store, [model]) as ts:
        yield ts, root


def predict_url(ts) -> str:
    return f"{ts.inference_url}/predictions/plain"


def test_server_reports_two_ready_workers_with_the_requested_batching(served):
    ts, _ = served
    (desc,) = ts.describe("plain")
    assert desc["batchSize"] == 8 and desc["maxBatchDelay"] == 10
    workers = desc["workers"]
    assert [w["status"] for w in workers] == ["READY", "READY"]
    pids = {w["pid"] for w in workers}
    assert len(pids) == 2 and pids <= set(ts.group_pids())


def test_one_row_by_name_and_by_position_match_the_model(served):
    ts, root = served
    row = [120.0, 3.0, 15.5, 0.8]
    want = expected_probabilities(root, [row])
    status, by_name = post(predict_url(ts), dict(zip(FEATURES, row)))
    assert status == 200
    status, positional = post(predict_url(ts), row)
    assert status == 200
    for answer in (by_name, positional):
        np.testing.assert_allclose(answer["probabilities"], want, rtol=1e-5)
        assert answer["label"] == [CLASSES[int(np.argmax(want[0]))]]


def test_batch_request_answers_every_row_in_order(served):
    ts, root = served
    rng = np.random.default_rng(3)
    rows = (rng.normal(size=(5, len(FEATURES))) * [100, 5, 20, 1]).round(3).tolist()
    status, answer = post(predict_url(ts), {"instances": rows})
    assert status == 200
    np.testing.assert_allclose(answer["probabilities"], expected_probabilities(root, rows), rtol=1e-5, atol=1e-7)
    assert len(answer["label"]) == 5


def test_concurrent_requests_each_get_their_own_answer(served):
    """TorchServe packs simultaneous requests into one batch; the handler must split answers back."""
    ts, root = served
    rows = [[float(i), float(i % 24), 10.0 - i, i / 16] for i in range(16)]
    answers = post_all(predict_url(ts), rows)
    want = expected_probabilities(root, rows)
    for i in range(len(rows)):
        status, answer = answers[i]
        assert status == 200
        np.testing.assert_allclose(answer["probabilities"][0], want[i], rtol=1e-5, atol=1e-7)


def test_bad_request_gets_400_and_the_worker_survives(served):
    ts, _ = served
    before = sorted(ts.worker_pids("plain"))
    status, answer = post(predict_url(ts), b"{not json")
    assert status == 400 and "bad request" in str(answer)
    status, answer = post(predict_url(ts), {"amount": 1.0})
    assert status == 400 and "hour" in str(answer)
    assert sorted(ts.worker_pids("plain")) == before
    assert post(predict_url(ts), [1.0, 2.0, 3.0, 4.0])[0] == 200


def test_metrics_port_serves_prometheus_counters(served):
    ts, _ = served
    post(predict_url(ts), [1.0, 2.0, 3.0, 4.0])
    text = get_text(f"{ts.metrics_url}/metrics")
    assert "ts_inference_requests_total" in text and 'model_name="plain"' in text
