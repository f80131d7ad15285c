"""Adapters from a registry nobody should have to trust: storage is shared, can rot, or be written by an
attacker. Whatever sits in `adapter.safetensors`, with a `meta.json` whose sha256 matches it or not, the
healing Job and the serving pods must refuse it with a clear error, never execute it, and keep serving
the adapter they had. Each case runs through both readers: `served.load_adapter` (the Job) and
`ModelService.load_adapter` (the pod), on a real trained model and a real file:// registry. The last
test reuses that model for the pod's other bad input: values that overflow the network."""
from __future__ import annotations

import hashlib
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save

from examples.fraud.generator import FEATURES, sample
from model_handler.served import load_adapter as load_adapter_version   # the heal Job's reader
from model_handler.model import AdapterError, adapter_from_bytes, adapter_to_bytes, load_model, model_hash
from model_handler.registry import ADAPTER_FILE, META_FILE, AdapterRegistry, RegistryError
from model_handler.service import ModelService, ServiceConfig


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return sample(np.random.default_rng(1), 20).x.astype(np.float32)


@pytest.fixture
def registry(tmp_path, model_dir) -> AdapterRegistry:
    (tmp_path / "store").mkdir()
    registry = AdapterRegistry(f"file://{tmp_path / 'store'}", "default", "fraud")
    put(registry, "v1", adapter_to_bytes(good_tensors(model_dir)), model_dir)
    return registry


def good_tensors(model_dir: Path, bias: float = 2.0) -> dict[str, torch.Tensor]:
    tensors = load_model(model_dir).adapter_state()
    tensors["logit_bias"] = torch.tensor([-bias, bias])
    return tensors


def put(registry: AdapterRegistry, version: str, data: bytes, model_dir: Path) -> None:
    """Commit `data` as the registry itself would: meta.json carries the bytes' true sha256."""
    registry.put(version, data, {"base_model_hash": model_hash(model_dir), "rules_hash": "r"})


def adapter_path(registry: AdapterRegistry, version: str) -> Path:
    return Path(registry.storage.path("adapters", version, ADAPTER_FILE))


def assert_refused_everywhere(registry, model_dir, rows, version: str, why: str) -> None:
    """The Job's reader raises a clear error naming `why`; a pod serving v1 refuses it, says why in its
    status and keeps answering exactly as before."""
    model = load_model(model_dir)
    before = {k: v.clone() for k, v in model.adapter_state().items()}
    with pytest.raises((AdapterError, RegistryError)) as caught:
        load_adapter_version(model, registry, version)
    assert why in str(caught.value), str(caught.value)
    assert all(torch.equal(before[k], v) for k, v in model.adapter_state().items()), "a refused adapter was half-loaded"

    service = ModelService.from_model_dir(model_dir, ServiceConfig(model_name="fraud", storage_uri=registry.uri,
                                                                   adapter_version="v1"))
    assert service.adapter.version == "v1"
    served = service.predict(rows.tolist())["probabilities"]
    assert not service.load_adapter(version)
    assert why in service.adapter.refused[version], service.adapter.refused[version]
    assert service.worker_status()["adapter"]["version"] == "v1"
    assert service.predict(rows.tolist())["probabilities"] == served


# ------------------------------------------------------------------------------------------ code execution

class Payload:
    """Unpickling this creates `marker`: what a pickle-based loader (torch.load, pickle.load) would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("container", ["pickle", "torch.save"])
def test_a_pickle_posing_as_an_adapter_is_refused_and_never_runs(registry, model_dir, rows, tmp_path, container):
    marker = tmp_path / "pwned"
    if container == "pickle":
        data = pickle.dumps({"logit_bias": Payload(marker)})
    else:  # torch's zip format: the same pickle inside, what `torch.load(weights_only=False)` would run
        path = tmp_path / "evil.pt"
        torch.save({"logit_bias": Payload(marker)}, path, _use_new_zipfile_serialization=True)
        data = path.read_bytes()
    put(registry, "v2", data, model_dir)                # hash-consistent: the attacker wrote meta.json too
    assert registry.get("v2")[0] == data
    assert_refused_everywhere(registry, model_dir, rows, "v2", "not valid safetensors")
    assert not marker.exists(), "an adapter file was executed"
    pickle.loads(data if container == "pickle" else pickle.dumps(Payload(marker)))
    assert marker.exists(), "control: the payload is live, so its absence above means it never ran"


# ------------------------------------------------------------------------------------------ integrity

def test_a_well_formed_adapter_swapped_in_after_the_commit_fails_the_hash(registry, model_dir, rows):
    put(registry, "v2", adapter_to_bytes(good_tensors(model_dir, 1.0)), model_dir)
    swapped = adapter_to_bytes(good_tensors(model_dir, 9.0))  # valid safetensors, valid values, other bytes
    adapter_path(registry, "v2").write_bytes(swapped)
    assert_refused_everywhere(registry, model_dir, rows, "v2", "sha256 mismatch")


def test_meta_json_whose_sha256_was_edited_is_refused(registry, model_dir, rows):
    put(registry, "v2", adapter_to_bytes(good_tensors(model_dir, 1.0)), model_dir)
    meta_path = adapter_path(registry, "v2").with_name(META_FILE)
    meta = json.loads(meta_path.read_text())
    meta["sha256"] = hashlib.sha256(b"something else").hexdigest()
    meta_path.write_text(json.dumps(meta))
    assert_refused_everywhere(registry, model_dir, rows, "v2", "sha256 mismatch")


# ------------------------------------------------------------------------------------------ malformed files

def _header(header: dict, body: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


VALID_LENGTH = len(adapter_to_bytes({"x": torch.zeros(1)}))
MALFORMED = {
    "truncated header length": lambda data: data[:5],
    "truncated header": lambda data: data[:20],
    "truncated data": lambda data: data[:-3],
    "header claims 2**62 bytes": lambda data: struct.pack("<Q", 2 ** 62) + data[8:],
    "header not JSON": lambda data: struct.pack("<Q", 9) + b"{not json",
    "offsets past the end": lambda data: _header({"logit_bias": {"dtype": "F32", "shape": [2],
                                                                 "data_offsets": [0, 8000]}}, b"\0" * 8),
    "offsets overlap": lambda data: _header({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                             "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
                                            b"\0" * 12),
    "shape disagrees with the bytes": lambda data: _header({"logit_bias": {"dtype": "F32", "shape": [3],
                                                                           "data_offsets": [0, 8]}}, b"\0" * 8),
    "unknown dtype": lambda data: _header({"logit_bias": {"dtype": "Q99", "shape": [2],
                                                          "data_offsets": [0, 8]}}, b"\0" * 8),
    "zip file": lambda data: b"PK\x03\x04" + data,
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_safetensors_are_refused(registry, model_dir, rows, case):
    data = MALFORMED[case](adapter_to_bytes(good_tensors(model_dir)))
    put(registry, "v2", data, model_dir)
    assert_refused_everywhere(registry, model_dir, rows, "v2", "not valid safetensors")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_prefix_or_byte_flip_of_an_adapter_is_refused_or_loads_finite_values(data):
    """Straight at the parser and the validator (no registry, so no hash to catch it): a cut or a
    flipped byte is an AdapterError, or, when the damage fell in the numbers, a finite adapter."""
    from model_handler.model import ModelSpec, SelfHealingNet
    model = SelfHealingNet(ModelSpec(features=["a", "b", "c"], classes=["x", "y"], hidden=[8], adapter_rank=2))
    raw = bytearray(adapter_to_bytes(model.adapter_state()))
    if data.draw(st.booleans()):
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    else:
        for _ in range(data.draw(st.integers(1, 4))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        model.load_adapter_state(adapter_from_bytes(bytes(raw)))
    except AdapterError as error:
        assert str(error)
        return
    assert all(torch.isfinite(v).all() for v in model.adapter_state().values())


# ------------------------------------------------------------------------------------------ wrong contents

def _edited(model_dir: Path, edit) -> bytes:
    tensors = good_tensors(model_dir)
    edit(tensors)
    return st_save({k: v.contiguous() for k, v in tensors.items()})


WRONG = {
    "extra tensor": (lambda t: t.update(backdoor=torch.zeros(3)), "unexpected ['backdoor']"),
    "missing tensor": (lambda t: t.pop("up.weight"), "missing ['up.weight']"),
    "renamed tensor": (lambda t: t.update({"up.Weight": t.pop("up.weight")}), "missing ['up.weight']"),
    "wrong shape": (lambda t: t.update(logit_bias=torch.zeros(3)), "shape (3,)"),
    "transposed matrix": (lambda t: t.update({"down.weight": t["down.weight"].T.clone()}), "shape"),
    "scalar for a vector": (lambda t: t.update(logit_bias=torch.tensor(0.5)), "shape ()"),
    "NaN": (lambda t: t["input_shift"].__setitem__(0, float("nan")), "non-finite"),
    "inf": (lambda t: t["up.bias"].__setitem__(1, float("-inf")), "non-finite"),
    "float64 beyond float32": (lambda t: t.update(logit_bias=torch.tensor([1e300, 0.0], dtype=torch.float64)),
                               "non-finite"),
    "float16 inf": (lambda t: t.update(logit_bias=torch.tensor([float("inf"), 0.0], dtype=torch.float16)),
                    "non-finite"),
    "integer tensor": (lambda t: t.update(logit_bias=torch.tensor([1, 2], dtype=torch.int64)), "dtype torch.int64"),
    "bool tensor": (lambda t: t.update(logit_bias=torch.tensor([True, False])), "dtype torch.bool"),
    "float8 tensor": (lambda t: t.update(logit_bias=torch.zeros(2).to(torch.float8_e4m3fn)), "dtype torch.float8"),
}


@pytest.mark.parametrize("case", sorted(WRONG))
def test_adapters_with_wrong_tensors_are_refused(registry, model_dir, rows, case):
    """Regressions among these: a float64 value beyond the float32 range loaded as inf (finiteness was
    checked before the cast), and a float8 tensor raised NotImplementedError from isfinite."""
    edit, why = WRONG[case]
    put(registry, "v2", _edited(model_dir, edit), model_dir)
    assert_refused_everywhere(registry, model_dir, rows, "v2", why)


def test_a_valid_adapter_in_another_float_dtype_still_loads(registry, model_dir, rows):
    """The dtype check refuses what is not a float tensor, not a float16/float64 copy of a good adapter."""
    tensors = {k: v.double() for k, v in good_tensors(model_dir).items()}
    put(registry, "v2", st_save(tensors), model_dir)
    service = ModelService.from_model_dir(model_dir, ServiceConfig(model_name="fraud", storage_uri=registry.uri))
    assert service.load_adapter("v2") and service.adapter.version == "v2"
    model = load_model(model_dir)
    load_adapter_version(model, registry, "v2")
    assert torch.equal(model.adapter.logit_bias.detach(), torch.tensor([-2.0, 2.0]))


def test_values_that_overflow_the_network_refuse_only_their_own_request(model_dir, rows):
    """Regression: a finite float32 input near the limit (3e38) overflows the network; predict_many
    raised ValueError, failing every other request of the TorchServe batch with a 500."""
    service = ModelService.from_model_dir(model_dir, ServiceConfig(model_name="fraud"))
    alone = service.predict(rows[:2].tolist())
    huge = [rows[0].tolist(), [3e38] * len(FEATURES)]
    with np.errstate(all="ignore"):
        results = service.predict_many([rows[:2].tolist(), huge, b"{broken"])
    # The same answer as alone, to float32 rounding: how BLAS blocks a 3-row and a 2-row product
    # differs by machine, so bit equality across batch sizes is not promised (nor needed).
    np.testing.assert_allclose(results[0]["probabilities"], alone["probabilities"], rtol=1e-5, atol=1e-7)
    assert results[1].status == 422 and results[1].message.startswith("row 1: ") and "overflow" in results[1].message
    assert results[2].status == 400
    assert service.rows == 4 and service.requests == 4 and service.rejected == 2
    with np.errstate(all="ignore"), pytest.raises(Exception) as caught:
        service.predict(huge)
    assert getattr(caught.value, "status", None) == 422
