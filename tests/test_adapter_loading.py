"""One set of adapter checks, three readers: the heal Job (`served.load_adapter`), the serving pod
(`ModelService.load_adapter`) and the operator (`rollout.verified_meta` and `candidate_problem`,
torch-free, knowing the backbone hash and the reference profile from the pods' status). Each bad
adapter gets the same refusal, word for word, from every reader; a good one loads everywhere."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from examples.fraud.train import build
from model_handler.model import AdapterError, adapter_to_bytes, load_model, model_hash
from model_handler.registry import ADAPTER_FILE, AdapterRegistry, RegistryError
from model_handler.served import load_adapter, load_served
from model_handler.service import ModelService, ServiceConfig
from shm_operator import memory
from shm_operator.rollout import adapter_expected, candidate_problem, verified_meta
from shm_operator.signals import ingest


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fraud-model")
    build(out, rows=3000, seed=0)
    return out


@pytest.fixture
def registry(tmp_path, model_dir) -> AdapterRegistry:
    (tmp_path / "store").mkdir()
    registry = AdapterRegistry((tmp_path / "store").as_uri(), "default", "fraud")
    registry.put("v1", adapter_to_bytes(good(model_dir)), {"base_model_hash": model_hash(model_dir), "rules_hash": "r"})
    return registry


def good(model_dir: Path) -> dict[str, torch.Tensor]:
    tensors = load_model(model_dir).adapter_state()
    tensors["logit_bias"] = torch.tensor([-1.0, 1.0])
    return tensors


def put(registry, model_dir, version, tensors=None, data=None, backbone=None) -> Path:
    data = data if data is not None else adapter_to_bytes(tensors)
    registry.put(version, data, {"base_model_hash": backbone or model_hash(model_dir), "rules_hash": "r"})
    return Path(registry.storage.path("adapters", version, ADAPTER_FILE))


def with_(model_dir, **changes) -> dict[str, torch.Tensor]:
    return {**good(model_dir), **changes}


def non_finite(registry, model_dir):
    put(registry, model_dir, "v2", with_(model_dir, logit_bias=torch.tensor([float("nan"), 0.0])))


def wrong_shape(registry, model_dir):
    shift = good(model_dir)["input_shift"]
    put(registry, model_dir, "v2", with_(model_dir, input_shift=torch.zeros(len(shift) + 1)))


def wrong_backbone(registry, model_dir):
    put(registry, model_dir, "v2", good(model_dir), backbone="c" * 64)


def not_safetensors(registry, model_dir):
    put(registry, model_dir, "v2", data=pickle.dumps({k: v.numpy() for k, v in good(model_dir).items()}))


def sha256_mismatch(registry, model_dir):
    path = put(registry, model_dir, "v2", good(model_dir))
    path.write_bytes(adapter_to_bytes(with_(model_dir, logit_bias=torch.tensor([3.0, -3.0]))))


def missing_file(registry, model_dir):
    put(registry, model_dir, "v2", good(model_dir)).unlink()


def prior_not_a_distribution(registry, model_dir):
    put(registry, model_dir, "v2", with_(model_dir, class_prior=torch.tensor([0.7, 0.7])))


def unit_not_positive(registry, model_dir):
    unit = good(model_dir)["input_unit"]
    put(registry, model_dir, "v2", with_(model_dir, input_unit=torch.zeros_like(unit)))


BAD = {"non-finite": (non_finite, "tensor 'logit_bias' has non-finite values"),
       "wrong shape": (wrong_shape, "tensor 'input_shift' has shape"),
       "wrong backbone hash": (wrong_backbone, "was trained for backbone cccccccccccc"),
       "not safetensors": (not_safetensors, "is not valid safetensors"),
       "sha256 mismatch": (sha256_mismatch, "sha256 mismatch"),
       "missing file": (missing_file, "adapter.safetensors is missing"),
       "class_prior not a distribution": (prior_not_a_distribution, "'class_prior' must be all zeros or a distribution"),
       "input_unit not positive": (unit_not_positive, "'input_unit' must be positive")}


def operator_memo(service: ModelService) -> dict:
    """What the operator learns from polling the pod: its reference profile and backbone hash."""
    memo: dict = {}
    ingest(memory.of(memo).window, "pod-uid", service.pod_status())
    return memo


def refusals(registry, model_dir, rows, version: str) -> dict[str, str]:
    """Each reader's refusal of `version`; a reader that accepts it fails the test."""
    found = {}
    model = load_model(model_dir)
    before = {k: v.clone() for k, v in model.adapter_state().items()}
    with pytest.raises((AdapterError, RegistryError)) as caught:
        load_adapter(model, registry, version)
    assert all(torch.equal(before[k], v) for k, v in model.adapter_state().items()), "half-loaded"
    found["job"] = str(caught.value)

    service = ModelService.from_model_dir(model_dir, ServiceConfig(model_name="fraud", storage_uri=registry.uri,
                                                                   adapter_version="v1"))
    served = service.predict(rows.tolist())["probabilities"]
    assert not service.load_adapter(version)
    assert service.adapter.version == "v1" and service.predict(rows.tolist())["probabilities"] == served
    found["pod"] = service.adapter.refused[version].split(": ", 1)[1]   # "<ErrorType>: <message>"

    memo = operator_memo(service)
    with pytest.raises((AdapterError, RegistryError)) as caught:
        verified_meta(registry, version, *adapter_expected(memo))
    found["operator"] = str(caught.value)
    problem = candidate_problem(registry, version, None, *adapter_expected(memo))
    assert problem is not None
    found["operator candidate"] = problem.removeprefix(f"candidate {version} is unusable in the registry: ")
    return found


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    from examples.fraud.generator import sample
    return sample(np.random.default_rng(1), 10).x.astype(np.float32)


@pytest.mark.parametrize("case", sorted(BAD))
def test_every_reader_refuses_a_bad_adapter_with_the_same_message(registry, model_dir, rows, case):
    make, why = BAD[case]
    make(registry, model_dir)
    found = refusals(registry, model_dir, rows, "v2")
    assert why in found["job"], found
    assert set(found.values()) == {found["job"]}, found


def test_the_operator_checks_without_the_pods_knowledge_too(registry, model_dir):
    """Before any pod answered the operator knows neither the backbone nor the sizes: it still
    refuses what is refused without them (here: tensors that disagree with each other)."""
    wrong_shape(registry, model_dir)
    with pytest.raises(AdapterError, match="'input_shift' has shape"):
        verified_meta(registry, "v2", *adapter_expected({}))
    assert verified_meta(registry, "v1", *adapter_expected({})).version == "v1"


def test_a_good_adapter_and_an_old_one_without_class_prior_load_everywhere(registry, model_dir, rows):
    old = {k: v for k, v in good(model_dir).items() if k != "class_prior"}
    put(registry, model_dir, "v2", old)
    served = load_served(model_dir)
    for version in ("v1", "v2"):
        verified = load_adapter(served.model, registry, version)
        assert verified.version == version and not served.model.adapter.class_prior.any()
        assert torch.equal(served.model.adapter.logit_bias, torch.tensor([-1.0, 1.0]))
        service = ModelService.from_model_dir(model_dir, ServiceConfig(model_name="fraud", storage_uri=registry.uri))
        assert service.load_adapter(version) and service.adapter.sha256 == verified.sha256
        memo = operator_memo(service)
        assert verified_meta(registry, version, *adapter_expected(memo)).sha256 == verified.sha256
        assert candidate_problem(registry, version, verified.sha256, *adapter_expected(memo)) is None


def test_load_served_reads_the_directory_and_the_rule_overrides(model_dir, tmp_path):
    served = load_served(model_dir)
    assert served.backbone_hash == model_hash(model_dir) == served.model.backbone_hash
    assert served.rules.features == served.model.spec.features == served.reference.features
    one = [{"name": "big", "when": "amount > 1000", "label": "fraud"}]
    assert [r.name for r in load_served(model_dir, rules=one).rules.rules] == ["big"]
    (tmp_path / "rules.yaml").write_text("rules:\n  - {name: late, when: hour > 22, label: fraud}\n")
    assert [r.name for r in load_served(model_dir, rules_file=tmp_path / "rules.yaml").rules.rules] == ["late"]
