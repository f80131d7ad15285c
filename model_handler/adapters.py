"""Reading an adapter from the registry with every check, and nothing but numpy (no torch).

One implementation of the checks, used by all three readers:
  - the serving pod and the heal Job, through `model_handler.served.load_adapter` (it installs the
    checked arrays into the torch model),
  - the operator, through `verify_adapter` directly (the controller imports no torch).

The checks, in order; the first that fails raises with a message naming the version and the problem:
  1. the registry has the version, committed, and its bytes match the sha256 in `meta.json`
     (`AdapterRegistry.get`: AdapterNotFoundError, IncompleteAdapterError, CorruptAdapterError);
  2. it was trained for this backbone (`meta.base_model_hash`), where the reader knows the backbone;
  3. the file is safetensors (never pickle, never code);
  4. exactly the adapter's tensors, float16/bfloat16/float32/float64, of the adapter's shapes;
  5. finite once cast to float32 (a finite float64 beyond the float32 range would serve as inf);
  6. `class_prior` is all zeros (none recorded) or a distribution.
  7. `input_unit` (a unit factor) is positive.
Adapters written before reflections (`input_sign`), raw-space unit changes (`input_unit`) or prior
corrections (`class_prior`) were recorded read with their identity values (ones, ones, zeros).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from safetensors import deserialize

from model_handler.registry import BASE_VERSION, AdapterMeta, AdapterRegistry

# name -> shape, in symbols: F features, C classes, W backbone width (last hidden layer), R rank
ADAPTER_TENSORS = {"input_shift": ("F",), "input_log_scale": ("F",), "input_sign": ("F",), "input_unit": ("F",),
                   "down.weight": ("R", "W"), "down.bias": ("R",), "up.weight": ("W", "R"), "up.bias": ("W",),
                   "logit_bias": ("C",), "class_prior": ("C",)}
ADAPTER_DTYPES = ("float16", "float32", "float64")   # as numpy reads them (bfloat16 is widened to float32)
# dtypes numpy has no name for, named as torch (which wrote them) does in a refusal
FOREIGN_DTYPES = {"F8_E4M3": "torch.float8_e4m3fn", "F8_E5M2": "torch.float8_e5m2", "F8_E8M0": "torch.float8_e8m0fnu",
                  "F4": "torch.float4_e2m1fn_x2", "C64": "torch.complex64"}
SAFETENSORS_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I8": np.int8, "I16": np.int16,
                      "I32": np.int32, "I64": np.int64, "U8": np.uint8, "U16": np.uint16, "U32": np.uint32,
                      "U64": np.uint64, "BOOL": np.bool_}


class AdapterError(ValueError):
    """An adapter that must not be served: wrong tensors, wrong shapes, non-finite values."""


@dataclass(frozen=True)
class AdapterShapes:
    """The sizes an adapter's tensors must have. A size left None is the one most of the adapter's
    own tensors that carry it agree on (the first of them on a tie), and the others must agree with
    it: the operator knows the features and classes from the pods' reference profile, never the
    backbone's width or the adapter's rank."""

    features: int | None = None
    classes: int | None = None
    width: int | None = None
    rank: int | None = None

    def resolved(self, tensors: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        sizes = {"F": self.features, "C": self.classes, "W": self.width, "R": self.rank}
        for symbol in [s for s, size in sizes.items() if size is None]:
            seen = [np.shape(tensors[name])[axis] for name, symbols in ADAPTER_TENSORS.items()
                    for axis, each in enumerate(symbols)
                    if each == symbol and len(np.shape(tensors[name])) == len(symbols)]
            sizes[symbol] = max(seen, key=seen.count) if seen else -1
        return {name: tuple(sizes[s] for s in symbols) for name, symbols in ADAPTER_TENSORS.items()}


@dataclass(frozen=True)
class VerifiedAdapter:
    """An adapter that passed every check: float32 arrays, its registry meta and the file's sha256."""

    version: str
    tensors: dict[str, np.ndarray]
    meta: AdapterMeta | None
    sha256: str


def adapter_arrays(data: bytes) -> dict[str, Any]:
    """Parse safetensors bytes into numpy arrays (bfloat16 widened to float32, exactly). A tensor of
    a dtype numpy lacks (float8) comes back as its dtype name, for `check_tensors` to refuse. Any
    malformed file is an AdapterError, never a crash."""
    try:
        entries = deserialize(bytes(data))
    except Exception as err:  # safetensors raises its own error types for every malformed header
        raise AdapterError(f"adapter file is not valid safetensors: {err}") from err
    arrays: dict[str, Any] = {}
    for name, entry in entries:
        dtype, shape, raw = entry["dtype"], entry["shape"], entry["data"]
        if dtype == "BF16":   # the upper half of a float32
            widened = np.frombuffer(raw, dtype="<u2").astype("<u4") << 16
            arrays[name] = widened.view("<f4").reshape(shape)
        elif dtype in SAFETENSORS_DTYPES:
            arrays[name] = np.frombuffer(raw, dtype=np.dtype(SAFETENSORS_DTYPES[dtype]).newbyteorder("<")
                                         ).reshape(shape)
        else:
            arrays[name] = FOREIGN_DTYPES.get(dtype, dtype)
    return arrays


def check_tensors(tensors: Mapping[str, Any], shapes: AdapterShapes = AdapterShapes()) -> dict[str, np.ndarray]:
    """The adapter's tensors as float32 arrays, after checks 4 to 6; raises AdapterError.
    Values are numpy arrays (bfloat16 already widened to float32); anything else is refused, a
    string as the name of a dtype numpy lacks, other values by their type. Dtypes are named as torch
    names them (`torch.int64`), whichever reader refuses."""
    tensors = dict(tensors)
    if "input_sign" not in tensors and "input_shift" in tensors:   # written before reflections were healable
        tensors["input_sign"] = np.ones(np.shape(tensors["input_shift"]), np.float32)
    if "input_unit" not in tensors and "input_shift" in tensors:   # written before raw-space unit changes
        tensors["input_unit"] = np.ones(np.shape(tensors["input_shift"]), np.float32)
    if "class_prior" not in tensors and "logit_bias" in tensors:   # before prior corrections were recorded
        tensors["class_prior"] = np.zeros(np.shape(tensors["logit_bias"]), np.float32)
    missing, unexpected = set(ADAPTER_TENSORS) - set(tensors), set(tensors) - set(ADAPTER_TENSORS)
    if missing or unexpected:
        raise AdapterError(f"adapter tensors do not match the model: missing {sorted(missing)}, "
                           f"unexpected {sorted(unexpected)}")
    for name in ADAPTER_TENSORS:
        value = tensors[name]
        dtype = f"torch.{value.dtype}" if isinstance(value, np.ndarray) else str(value) if isinstance(value, str) \
            else type(value).__name__
        if not isinstance(value, np.ndarray) or str(value.dtype) not in ADAPTER_DTYPES:
            raise AdapterError(f"adapter tensor {name!r} has dtype {dtype}; adapters hold "
                               f"float16, bfloat16, float32 or float64 tensors")
    expected = shapes.resolved(tensors)
    converted = {}
    for name, shape in expected.items():
        value = tensors[name]
        if tuple(value.shape) != shape:
            raise AdapterError(f"adapter tensor {name!r} has shape {tuple(value.shape)}, "
                               f"the model needs {shape}")
        # checked after the cast: a finite float64 beyond the float32 range would load as inf
        with np.errstate(over="ignore"):
            converted[name] = np.array(value, dtype=np.float32)
        if not np.isfinite(converted[name]).all():
            raise AdapterError(f"adapter tensor {name!r} has non-finite values "
                               f"(or values beyond the float32 range)")
    if (converted["input_unit"] <= 0).any():
        raise AdapterError(f"adapter tensor 'input_unit' must be positive (a unit factor), "
                           f"got {converted['input_unit'].tolist()}")
    prior = converted["class_prior"].astype(np.float64)
    if prior.any() and ((prior < 0).any() or abs(float(prior.sum()) - 1.0) > 1e-3):
        raise AdapterError(f"adapter tensor 'class_prior' must be all zeros or a distribution "
                           f"(non-negative, summing to 1), got {prior.tolist()}")
    return converted


def check_backbone(version: str, meta: AdapterMeta, backbone_hash: str | None) -> None:
    if backbone_hash and meta.base_model_hash != backbone_hash:
        raise AdapterError(f"adapter {version} was trained for backbone {meta.base_model_hash[:12]}, "
                           f"this model is {backbone_hash[:12]}")


def verify_adapter(registry: AdapterRegistry | None, version: str, shapes: AdapterShapes = AdapterShapes(),
                   backbone_hash: str | None = None) -> VerifiedAdapter:
    """Read `version` from the registry and run every check (module docstring); raises AdapterError
    or a RegistryError. `backbone_hash` None or "": the reader does not know the backbone."""
    if version == BASE_VERSION:
        raise AdapterError(f"{BASE_VERSION!r} is the identity adapter: built in, never read from the registry")
    if registry is None:
        raise AdapterError("no storage_uri configured, so only 'base' can be served")
    data, meta = registry.get(version)
    check_backbone(version, meta, backbone_hash)
    try:
        tensors = check_tensors(adapter_arrays(data), shapes)
    except AdapterError as err:
        raise AdapterError(f"adapter {version}: {err}") from None
    return VerifiedAdapter(version, tensors, meta, hashlib.sha256(data).hexdigest())
