"""ModelService on a real trained model, a real file:// registry and traffic store (no TorchServe)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from examples.fraud.generator import CLASSES, FEATURES, sample
from model_handler.model import adapter_to_bytes, load_model, model_hash
from model_handler.registry import AdapterRegistry
from model_handler.requests import RequestError
from model_handler.rules import RuleSet
from model_handler.service import ModelService, ServiceConfig, ServiceError, merge_statuses
from model_handler.sketches import DriftSketch, ReferenceProfile
from model_handler.traffic import TrafficStore


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return sample(np.random.default_rng(1), 40).x.astype(np.float32)


def shifted_adapter(model_dir: Path, bias: float = 2.0) -> dict[str, torch.Tensor]:
    """A valid adapter that moves the logits: predictions must change once it is served."""
    tensors = load_model(model_dir).adapter_state()
    tensors["logit_bias"] = torch.tensor([-bias, bias])
    return tensors


def put_adapter(registry: AdapterRegistry, version: str, tensors, backbone: str, rules_hash: str) -> None:
    registry.put(version, adapter_to_bytes(tensors), {"base_model_hash": backbone, "rules_hash": rules_hash})


@pytest.fixture
def storage(tmp_path, model_dir):
    (tmp_path / "store").mkdir()
    uri = f"file://{tmp_path / 'store'}"
    registry = AdapterRegistry(uri, "default", "fraud")
    rules_hash = RuleSet.from_yaml(model_dir / "rules.yaml", FEATURES, CLASSES).hash()
    put_adapter(registry, "v1", shifted_adapter(model_dir), model_hash(model_dir), rules_hash)
    return uri, registry, rules_hash


def make_service(model_dir, **config) -> ModelService:
    return ModelService.from_model_dir(model_dir, ServiceConfig(model_name="fraud", **config))


def test_predictions_equal_the_model_in_every_request_shape(model_dir, tmp_path, rows):
    service = make_service(model_dir)
    want = load_model(model_dir).predict_proba(rows).numpy()
    one = service.predict(json.dumps(dict(zip(FEATURES, rows[0].tolist()))).encode())
    assert one["adapter_version"] == "base" and one["label"] == [CLASSES[int(want[0].argmax())]]
    np.testing.assert_allclose(one["probabilities"], want[:1], rtol=1e-5)
    batch = service.predict({"instances": rows[:5].tolist()})
    np.testing.assert_allclose(batch["probabilities"], want[:5], rtol=1e-5)
    with pytest.raises(RequestError) as info:
        service.predict(b'{"amount": 1}')
    assert info.value.status == 422 and "missing features" in info.value.message


def test_a_batch_with_bad_requests_serves_the_good_ones_and_counts_exactly(model_dir, tmp_path, rows):
    service = make_service(model_dir)
    bodies = [rows[:3].tolist(), b"{broken", rows[3].tolist(), [[1.0] * (len(FEATURES) - 1)], rows[4:10].tolist()]
    results = service.predict_many(bodies)
    assert [isinstance(r, RequestError) for r in results] == [False, True, False, True, False]
    assert results[1].status == 400 and results[3].status == 422
    assert [len(r["label"]) for r in results if isinstance(r, dict)] == [3, 1, 6]
    # the worker's sketch is exactly one pass over the 10 valid rows
    model = load_model(model_dir)
    rules = RuleSet.from_yaml(model_dir / "rules.yaml", FEATURES, CLASSES)
    reference = ReferenceProfile.from_dict(json.loads((model_dir / "reference.json").read_text()))
    expected = DriftSketch.empty(reference, len(rules), rules.hash())
    x = rows[:10]
    expected.update(x, model.predict_proba(x).numpy(), rules.fires(x).numpy(), rules.labels.numpy())
    assert service.sketch == expected
    assert (service.requests, service.rejected, service.rows) == (5, 2, 10)


def test_adapter_from_the_registry_changes_predictions(model_dir, tmp_path, rows, storage):
    uri, _, _ = storage
    service = make_service(model_dir, storage_uri=uri, adapter_version="v1")
    reference_model = load_model(model_dir)
    reference_model.load_adapter_state(shifted_adapter(model_dir))
    answer = service.predict(rows[:4].tolist())
    assert answer["adapter_version"] == "v1"
    np.testing.assert_allclose(answer["probabilities"], reference_model.predict_proba(rows[:4]).numpy(), rtol=1e-5)
    assert service.load_adapter("base")
    np.testing.assert_allclose(service.predict(rows[:4].tolist())["probabilities"],
                               load_model(model_dir).predict_proba(rows[:4]).numpy(), rtol=1e-5)


def test_bad_adapters_are_refused_and_the_previous_one_keeps_serving(model_dir, tmp_path, rows, storage):
    uri, registry, rules_hash = storage
    put_adapter(registry, "v2", shifted_adapter(model_dir), "0" * 64, rules_hash)  # another backbone
    nan = shifted_adapter(model_dir)
    nan["logit_bias"] = torch.tensor([float("nan"), 0.0])
    put_adapter(registry, "v3", nan, model_hash(model_dir), rules_hash)
    wrong_shape = shifted_adapter(model_dir)
    wrong_shape["logit_bias"] = torch.zeros(3)
    put_adapter(registry, "v4", wrong_shape, model_hash(model_dir), rules_hash)
    put_adapter(registry, "v5", shifted_adapter(model_dir, 1.0), model_hash(model_dir), rules_hash)
    adapter_file = next(Path(uri.removeprefix("file://")).rglob("v5/adapter.safetensors"))
    data = adapter_file.read_bytes()
    adapter_file.write_bytes(data[:-8] + bytes(b ^ 0xFF for b in data[-8:]))  # rot after the commit

    service = make_service(model_dir, storage_uri=uri, adapter_version="v1")
    before = service.predict(rows[:3].tolist())
    for version, why in [("v2", "backbone"), ("v3", "non-finite"), ("v4", "shape"), ("v5", "sha256"),
                         ("v9", "v9")]:
        assert not service.load_adapter(version)
        assert why in service.adapter.refused[version]
        after = service.predict(rows[:3].tolist())
        assert after == before  # still v1, same answers
    assert service.worker_status()["adapter"]["version"] == "v1"


def test_registry_less_service_serves_base_and_refuses_versions(model_dir, tmp_path):
    service = make_service(model_dir, adapter_version="v1")
    assert service.adapter.version == "base" and "storage_uri" in service.adapter.refused["v1"]


def test_hot_swap_file_switches_between_batches(model_dir, tmp_path, rows, storage):
    uri, _, _ = storage
    desired = tmp_path / "desired-adapter"
    desired.write_text("base\n")
    service = make_service(model_dir, storage_uri=uri, adapter_file=str(desired), watch_interval_s=0)
    assert service.predict(rows[:1].tolist())["adapter_version"] == "base"
    desired.write_text("v1\n")
    assert service.predict(rows[:1].tolist())["adapter_version"] == "v1"
    desired.write_text("v404\n")  # unknown: refused, v1 keeps serving
    assert service.predict(rows[:1].tolist())["adapter_version"] == "v1"
    assert "v404" in service.adapter.refused


def test_an_idle_worker_swaps_when_asked_for_its_status(model_dir, tmp_path, storage):
    uri, _, _ = storage
    desired = tmp_path / "desired-adapter"
    desired.write_text("base\n")
    service = make_service(model_dir, storage_uri=uri, adapter_file=str(desired), watch_interval_s=0)
    desired.write_text("v1\n")   # no prediction comes: the operator's status poll is the only request
    assert service.pod_status()["adapter"]["version"] == "v1"


def test_workers_publish_and_the_pod_status_merges_them_exactly(model_dir, tmp_path, rows):
    status_dir = tmp_path / "status"
    first = make_service(model_dir, status_dir=str(status_dir))
    second = make_service(model_dir, status_dir=str(status_dir))
    first.predict(rows[:15].tolist())
    second.predict(rows[15:40].tolist())
    second.publish()
    pod = first.pod_status()
    assert pod["samples"] == 40 and len(pod["workers"]) == 2
    assert DriftSketch.from_dict(pod["sketch"], first.reference) == first.sketch + second.sketch
    assert pod["adapter"]["version"] == "base" and pod["requests"] == 2
    assert set(pod["scores"]) >= {"input_shift", "rule_conflict", "samples"}
    assert sorted(p.name for p in status_dir.iterdir()) == sorted(f"{s.worker_id}.json" for s in (first, second))


def test_mixed_adapters_across_workers_are_reported_as_such(model_dir, tmp_path, storage):
    uri, _, _ = storage
    a = make_service(model_dir, storage_uri=uri)
    b = make_service(model_dir, storage_uri=uri, adapter_version="v1")
    merged = merge_statuses([a.worker_status(), b.worker_status()], a.reference)
    assert merged["adapter"]["version"] is None and merged["adapter"]["versions"] == ["base", "v1"]


def test_sampled_traffic_reaches_the_store(model_dir, tmp_path, rows, storage):
    uri, _, _ = storage
    service = make_service(model_dir, storage_uri=uri, sample_fraction=1.0, seed=0)
    answer = service.predict(rows[:12].tolist())
    service.close()
    x, probs = TrafficStore(uri, "default", "fraud").read_recent(100)
    np.testing.assert_array_equal(np.sort(x, axis=0), np.sort(rows[:12], axis=0))
    np.testing.assert_allclose(np.sort(probs, axis=0), np.sort(np.array(answer["probabilities"]), axis=0), rtol=1e-6)
    assert service.worker_status()["traffic"]["written"] == 12


def test_config_from_environment(tmp_path):
    env = {"SELFHEAL_STORAGE_URI": "file:///x", "SELFHEAL_SAMPLE_FRACTION": "0.25", "SELFHEAL_MAX_ROWS": "7",
           "SELFHEAL_SEED": "3", "UNRELATED": "1"}
    config = ServiceConfig.from_env(env, model_name="m")
    assert (config.storage_uri, config.sample_fraction, config.max_rows, config.seed, config.model_name) == \
        ("file:///x", 0.25, 7, 3, "m")
    with pytest.raises(ServiceError, match="SELFHEAL_MAX_ROWS='lots'"):
        ServiceConfig.from_env({"SELFHEAL_MAX_ROWS": "lots"})
    with pytest.raises(ServiceError, match="sample_fraction"):
        ServiceConfig(sample_fraction=1.5)


def test_unreadable_model_directory_is_a_service_error(tmp_path):
    with pytest.raises(ServiceError, match="cannot load the model directory"):
        ModelService.from_model_dir(tmp_path, ServiceConfig())


def test_rules_file_replaces_the_archived_rules(model_dir, tmp_path, rows):
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text("rules:\n  - {name: all_fraud, when: amount >= 0, label: fraud, weight: 1.0}\n")
    service = make_service(model_dir, rules_file=str(rules_file))
    service.predict(rows[:5].tolist())
    assert service.sketch.n_rules == 1 and service.sketch.counters["rule_fires"].tolist() == [int((rows[:5, 0] >= 0).sum())]
    assert service.worker_status()["rules_hash"] == RuleSet.from_yaml(rules_file, FEATURES, CLASSES).hash()
    with pytest.raises(ServiceError, match="cannot load"):
        make_service(model_dir, rules_file=str(tmp_path / "missing.yaml"))


def test_a_dead_workers_counts_stay_but_its_adapter_does_not_count(model_dir, tmp_path, rows, storage):
    """A worker that served v1 and died: its rows still count, the pod is not 'mixed' because of it."""
    uri, _, _ = storage
    status_dir = tmp_path / "status"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = make_service(model_dir, storage_uri=uri, adapter_version="v1", status_dir=str(status_dir))
    dead.predict(rows[:7].tolist())
    status = dead.worker_status() | {"pid": int(gone.stdout)}
    (status_dir / f"{dead.worker_id}.json").write_text(json.dumps(status))
    live = make_service(model_dir, storage_uri=uri, status_dir=str(status_dir))
    live.predict(rows[7:10].tolist())
    pod = live.pod_status()
    assert pod["samples"] == 10
    assert pod["adapter"]["version"] == "base" and pod["adapter"]["versions"] == ["base"]
    assert sorted((w["alive"], w["adapter"]) for w in pod["workers"]) == [(False, "v1"), (True, "base")]
