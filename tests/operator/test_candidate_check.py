"""The operator's last look at a heal Job's candidate before it promotes it (Auto) or offers it
(Manual): the file in the registry must be intact and the very one the Job reported. Real files in a
file:// registry; the end-to-end case (a real Job whose candidate is truncated after it was written)
is in bench/chaos.py's jobs group."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from model_handler.model import ModelSpec, SelfHealingNet, adapter_to_bytes
from model_handler.registry import ADAPTER_FILE, META_FILE, AdapterRegistry, RegistryError
from shm_operator.rollout import candidate_problem


def adapter_bytes(bias: float = 0.5) -> bytes:
    model = SelfHealingNet(ModelSpec(features=["a", "b"], classes=["x", "y"], hidden=[4], adapter_rank=2))
    tensors = model.adapter_state()
    tensors["logit_bias"] = torch.tensor([-bias, bias])
    return adapter_to_bytes(tensors)


@pytest.fixture
def registry(tmp_path) -> AdapterRegistry:
    (tmp_path / "store").mkdir()
    return AdapterRegistry((tmp_path / "store").as_uri(), "default", "fraud")


def put(registry: AdapterRegistry, version: str, data: bytes) -> tuple[str, Path]:
    """Commit like a heal Job; returns the sha256 the Job would report, and the adapter file."""
    meta = registry.put(version, data, {"base_model_hash": "b" * 64, "rules_hash": "r"})
    return meta.sha256, Path(registry.storage.path("adapters", version, ADAPTER_FILE))


def test_an_intact_candidate_with_the_reported_hash_passes(registry):
    sha, _ = put(registry, "v1", adapter_bytes())
    assert candidate_problem(registry, "v1", sha) is None
    assert candidate_problem(registry, "v1", None) is None   # an older Job that reported no hash


def test_a_truncated_candidate_is_refused(registry):
    sha, path = put(registry, "v1", adapter_bytes())
    path.write_bytes(path.read_bytes()[:40])
    problem = candidate_problem(registry, "v1", sha)
    assert problem.startswith("candidate v1 is unusable") and "sha256 mismatch" in problem


def test_garbage_whose_meta_was_rewritten_to_match_is_refused(registry):
    sha, path = put(registry, "v1", adapter_bytes())
    junk = b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}"
    path.write_bytes(junk)
    meta_path = path.with_name(META_FILE)
    meta = json.loads(meta_path.read_text())
    meta["sha256"] = hashlib.sha256(junk).hexdigest()
    meta_path.write_text(json.dumps(meta))
    assert "not valid safetensors" in candidate_problem(registry, "v1", None)
    # with the Job's report, even a well-formed file is refused if it is not the one the Job wrote
    other = adapter_bytes(2.0)
    path.write_bytes(other)
    meta["sha256"] = hashlib.sha256(other).hexdigest()
    meta_path.write_text(json.dumps(meta))
    problem = candidate_problem(registry, "v1", sha)
    assert "is not the file the heal Job wrote" in problem and sha in problem


def test_non_finite_missing_and_uncommitted_candidates_are_refused(registry):
    nan = SelfHealingNet(ModelSpec(features=["a"], classes=["x", "y"], hidden=[4], adapter_rank=2)).adapter_state()
    nan["logit_bias"] = torch.tensor([float("nan"), 0.0])
    sha, _ = put(registry, "v1", _raw_safetensors(nan))
    assert "non-finite" in candidate_problem(registry, "v1", sha)
    assert "not found" in candidate_problem(registry, "v7", None)
    _, path = put(registry, "v2", adapter_bytes())
    path.with_name(META_FILE).unlink()   # a writer that died before its commit marker
    assert "incomplete" in candidate_problem(registry, "v2", None)


def _raw_safetensors(tensors: dict[str, torch.Tensor]) -> bytes:
    """safetensors bytes without adapter_to_bytes' own checks (it refuses NaN on the way out)."""
    from safetensors.torch import save
    return save({k: v.contiguous() for k, v in tensors.items()})


def test_unreachable_storage_is_an_error_to_retry_not_a_verdict(registry, tmp_path):
    sha, _ = put(registry, "v1", adapter_bytes())
    shutil.rmtree(tmp_path / "store")
    with pytest.raises(RegistryError):
        candidate_problem(registry, "v1", sha)
