"""The served model: a frozen backbone wrapped by a small, swappable reflexive adapter.

    x -> fixed transform (signed log1p of heavy-tailed features) -> reference normalisation
      -> [adapter] per-feature recalibration (z - shift) / scale
      -> backbone MLP (frozen) -> h
      -> [adapter] h + up(relu(down(h)))            (up is zero at start: identity)
      -> head (frozen) -> logits
      -> [adapter] + per-class logit bias            (prior correction)

Everything that may change after deployment lives in the adapter, so healing can never overwrite
what the backbone learned, an adapter is a few kilobytes, and `reset_adapter()` is the `base`
version. Models and adapters are stored with safetensors only (no pickle, no code execution).

Serving small batches goes through `FoldedPredictor`, a numpy snapshot of the same function: the
frozen normalisation and the adapter's recalibration are one affine map per feature, folded into
the first backbone layer; the logit bias is folded into the head's bias; a residual whose `up` is
exactly zero is skipped. A handful of numpy matmuls on one row take microseconds, where the ~15
small torch ops of `forward` take over a hundred.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from model_handler.adapters import AdapterError, AdapterShapes, check_tensors  # noqa: F401  (AdapterError: callers)

MODEL_FILE = "model.safetensors"
SPEC_FILE = "model.json"
ADAPTER_PREFIX = "adapter."

@dataclass
class ModelSpec:
    features: list[str]
    classes: list[str]
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    adapter_rank: int = 8
    log_features: list[str] = field(default_factory=list)  # signed log1p before normalisation
    train_prior: list[float] = field(default_factory=list)  # class rates of the training labels
    # Per-feature quantiles (5%..95%) of the normalised training inputs: lets healing tell a
    # unit change (same shape, moved and scaled) from a change of shape.
    reference_quantiles: list[list[float]] = field(default_factory=list)
    # Fitted on labelled source rows the backbone did not train on (empty/1.0 for older models):
    # bias-corrected temperature scaling of the logits and P(predicted | true), what label-shift
    # estimation needs (model_handler.labelshift), and the Spearman rank correlations of the
    # training features, what tells a pipeline change (monotone: ranks keep their relations) from
    # a change of population (healing.recalibration_evidence).
    calibration_temperature: float = 1.0
    calibration_bias: list[float] = field(default_factory=list)
    confusion: list[list[float]] = field(default_factory=list)
    rank_correlation: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.features) == 0 or len(set(self.features)) != len(self.features):
            raise ValueError("features must be a non-empty list of unique names")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must be at least two unique names")
        unknown = set(self.log_features) - set(self.features)
        if unknown:
            raise ValueError(f"log_features not in features: {sorted(unknown)}")
        if self.adapter_rank < 1 or not self.hidden:
            raise ValueError("adapter_rank must be >= 1 and hidden non-empty")


def signed_log1p(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(torch.abs(x))


class ReflexiveAdapter(nn.Module):
    """The only trainable part after deployment. Identity when freshly reset."""

    def __init__(self, n_features: int, width: int, rank: int, n_classes: int):
        super().__init__()
        self.input_shift = nn.Parameter(torch.zeros(n_features))
        self.input_log_scale = nn.Parameter(torch.zeros(n_features))
        # +1, or -1 where an upstream change reflected a feature (a PCA refit flipping a component)
        self.input_sign = nn.Parameter(torch.ones(n_features), requires_grad=False)
        # Raw inputs are divided by this before the frozen transform: an exact unit change x -> F x
        # (cents for dollars, metres for km). On a log1p-scaled feature no map after the transform
        # is one (log1p(F x) - log F = log(x + 1/F), not log1p(x): small values land a unit low).
        self.input_unit = nn.Parameter(torch.ones(n_features), requires_grad=False)
        self.down = nn.Linear(width, rank)
        self.up = nn.Linear(rank, width)
        self.logit_bias = nn.Parameter(torch.zeros(n_classes))
        # The class prior a prior correction set the logit bias for (zeros: none was made, the
        # model serves the training prior). The pods compare the estimated prior against it.
        self.class_prior = nn.Parameter(torch.zeros(n_classes), requires_grad=False)
        self.reset()

    def reset(self) -> None:
        with torch.no_grad():
            self.input_shift.zero_()
            self.input_log_scale.zero_()
            self.input_sign.fill_(1.0)
            self.input_unit.fill_(1.0)
            # down is random (a fixed seed keeps `base` reproducible), up is zero: h + 0 == h.
            gen = torch.Generator().manual_seed(0)
            bound = 1.0 / math.sqrt(self.down.in_features)
            self.down.weight.copy_(torch.empty_like(self.down.weight).uniform_(-bound, bound, generator=gen))
            self.down.bias.zero_()
            self.up.weight.zero_()
            self.up.bias.zero_()
            self.logit_bias.zero_()
            self.class_prior.zero_()

    def to_training_units(self, x: torch.Tensor) -> torch.Tensor:
        """Raw inputs in the units the backbone was trained on (identity unless a unit change was healed)."""
        return x / self.input_unit

    def recalibrate(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.input_shift) * torch.exp(-self.input_log_scale) * self.input_sign

    def unrecalibrate(self, z: torch.Tensor) -> torch.Tensor:
        """The inverse of `recalibrate`."""
        return z * self.input_sign * torch.exp(self.input_log_scale) + self.input_shift

    def residual(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(torch.relu(self.down(h)))


class SelfHealingNet(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        n_features, n_classes = len(spec.features), len(spec.classes)
        log_mask = torch.tensor([f in spec.log_features for f in spec.features])
        self.register_buffer("log_mask", log_mask)
        self.register_buffer("norm_mean", torch.zeros(n_features))
        self.register_buffer("norm_std", torch.ones(n_features))
        layers: list[nn.Module] = []
        width = n_features
        for hidden in spec.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.backbone = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_classes)
        self.adapter = ReflexiveAdapter(n_features, width, spec.adapter_rank, n_classes)
        self.backbone_hash = ""   # sha256 of model.safetensors when loaded from a directory ("" = unknown)

    # ---- forward path -------------------------------------------------------------------
    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Fixed, frozen input transform (before the adapter)."""
        x = torch.where(self.log_mask, signed_log1p(x), x)
        return (x - self.norm_mean) / self.norm_std

    def untransform(self, z: torch.Tensor) -> torch.Tensor:
        """The inverse of `transform`."""
        x = z * self.norm_std + self.norm_mean
        return torch.where(self.log_mask, torch.sign(x) * torch.expm1(torch.abs(x)), x)

    @torch.no_grad()
    def restore_inputs(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        """Raw inputs with the adapter's recalibration applied, in the units of the training data:
        what a rule written for those units must read after an upstream unit change was healed.
        Features the recalibration leaves alone are returned unchanged (bit for bit)."""
        array = np.asarray(x, dtype=np.float32)
        a = self.adapter
        moved = ((a.input_shift != 0) | (a.input_log_scale != 0) | (a.input_sign != 1) | (a.input_unit != 1)).numpy()
        if not moved.any():
            return array
        restored = self.untransform(self.recalibrated(torch.as_tensor(array))).numpy()
        out = array.copy()
        out[:, moved] = restored[:, moved]
        return out

    def recalibrated(self, x: torch.Tensor) -> torch.Tensor:
        """What the backbone reads: raw inputs in training units, transformed, recalibrated."""
        return self.adapter.recalibrate(self.transform(self.adapter.to_training_units(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.recalibrated(x)
        h = self.adapter.residual(self.backbone(z))
        return self.head(h) + self.adapter.logit_bias

    def served_prior(self) -> np.ndarray:
        """The class prior the model's outputs are made for: the one a prior correction recorded,
        else the training prior tilted by the logit bias (divided by the calibration temperature:
        the bias is added to raw logits)."""
        recorded = self.adapter.class_prior.detach().double().numpy()
        if recorded.any():
            return recorded / recorded.sum()
        prior = np.asarray(self.spec.train_prior, dtype=np.float64)
        temperature = self.spec.calibration_temperature or 1.0
        tilted = prior * np.exp(self.adapter.logit_bias.detach().double().numpy() / temperature)
        return tilted / tilted.sum()

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float32)
        return torch.softmax(self.forward(x), dim=-1)

    # ---- training the backbone (before deployment only) ---------------------------------
    def fit_normalisation(self, x: torch.Tensor) -> None:
        x = torch.where(self.log_mask, signed_log1p(x), x)
        self.norm_mean.copy_(x.mean(0))
        self.norm_std.copy_(x.std(0).clamp_min(1e-6))

    def freeze_backbone(self) -> None:
        for name, param in self.named_parameters():
            param.requires_grad_(name.startswith("adapter."))

    # ---- adapter state ------------------------------------------------------------------
    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.adapter.state_dict().items()}

    def adapter_shapes(self) -> AdapterShapes:
        return AdapterShapes(len(self.spec.features), len(self.spec.classes), self.spec.hidden[-1],
                             self.spec.adapter_rank)

    def load_adapter_state(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Validate fully (`adapters.check_tensors`, the checks every reader runs), then load: a
        refused adapter leaves the current one untouched."""
        self.load_adapter_arrays(check_tensors({k: _as_array(v) for k, v in tensors.items()}, self.adapter_shapes()))

    def load_adapter_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Load float32 arrays that passed `adapters.check_tensors` for this model's shapes."""
        self.adapter.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in arrays.items()})

    def reset_adapter(self) -> None:
        self.adapter.reset()

    def copy(self) -> "SelfHealingNet":
        clone = SelfHealingNet(self.spec)
        clone.load_state_dict(self.state_dict())
        clone.backbone_hash = self.backbone_hash
        return clone


def _as_array(value):
    """A torch tensor as numpy for `check_tensors` (bfloat16 widened to float32, exactly); anything
    else as it is, for the check to refuse with its type."""
    if not isinstance(value, torch.Tensor):
        return value
    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:
        return value.to(torch.float32).numpy()
    try:
        return value.numpy()
    except TypeError:   # a dtype numpy has no name for (float8, complex32): refused by its name
        return str(value.dtype).removeprefix("torch.")


FOLDED_MAX_MULTIPLY_ADDS = 2 ** 18   # OpenBLAS computes a GEMM this small on one thread


class FoldedPredictor:
    """`SelfHealingNet.predict_proba` as a few numpy float32 ops, for serving small batches.

    A snapshot of the model's weights when built: after the adapter changes, build a new one (the
    serving core does on every adapter swap). Agrees with `forward` within float32 rounding;
    the folding itself is done in float64 so it adds no more than one rounding per weight.
    """

    def __init__(self, model: SelfHealingNet):
        def array(t: torch.Tensor) -> np.ndarray:
            return t.detach().cpu().double().numpy()

        adapter = model.adapter
        inverse_scale = np.exp(-array(adapter.input_log_scale)) * array(adapter.input_sign)
        # z = ((t - mean) / std - shift) * inverse_scale  ==  t * scale + offset
        scale = inverse_scale / array(model.norm_std)
        offset = -(array(model.norm_mean) / array(model.norm_std) + array(adapter.input_shift)) * inverse_scale
        linears = [m for m in model.backbone if isinstance(m, nn.Linear)]
        if len(linears) != len(model.spec.hidden) or any(
                not isinstance(m, (nn.Linear, nn.ReLU)) for m in model.backbone):
            raise TypeError("FoldedPredictor needs a backbone of Linear + ReLU layers")
        first_weight = array(linears[0].weight)
        layers = [(first_weight * scale[None, :], first_weight @ offset + array(linears[0].bias))]
        layers += [(array(m.weight), array(m.bias)) for m in linears[1:]]
        self.layers = [(np.ascontiguousarray(w.T, dtype=np.float32), b.astype(np.float32)) for w, b in layers]
        up_weight, up_bias = array(adapter.up.weight), array(adapter.up.bias)
        self.residual = None
        if up_weight.any() or up_bias.any():
            self.residual = (np.ascontiguousarray(array(adapter.down.weight).T, dtype=np.float32),
                             array(adapter.down.bias).astype(np.float32),
                             np.ascontiguousarray(up_weight.T, dtype=np.float32), up_bias.astype(np.float32))
        self.head = (np.ascontiguousarray(array(model.head.weight).T, dtype=np.float32),
                     (array(model.head.bias) + array(adapter.logit_bias)).astype(np.float32))
        self.log_columns = np.flatnonzero(model.log_mask.cpu().numpy())
        unit = array(adapter.input_unit)
        self.unit = unit.astype(np.float32) if (unit != 1).any() else None
        self.n_features = len(model.spec.features)
        matrices = [w for w, _ in self.layers] + [self.head[0]]
        if self.residual is not None:
            matrices += [self.residual[0], self.residual[2]]
        largest = max(m.size for m in matrices)
        # Batches up to `max_rows` rows keep every matmul at most FOLDED_MAX_MULTIPLY_ADDS, which
        # numpy's BLAS runs on the calling thread; larger ones belong to torch, whose thread count
        # the worker controls (a BLAS thread pool per worker only fights the other workers).
        self.max_rows = max(1, FOLDED_MAX_MULTIPLY_ADDS // largest)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """[N, F] inputs (any real dtype) -> [N, C] float32 logits."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"input must have shape [N, {self.n_features}], got {list(x.shape)}")
        if self.unit is not None:
            x = x / self.unit
        if len(self.log_columns):
            x = x.copy()
            heavy = x[:, self.log_columns]
            x[:, self.log_columns] = np.sign(heavy) * np.log1p(np.abs(heavy))
        h = x
        for weight, bias in self.layers:
            h = h @ weight
            h += bias
            np.maximum(h, 0.0, out=h)
        if self.residual is not None:
            down_weight, down_bias, up_weight, up_bias = self.residual
            inner = h @ down_weight
            inner += down_bias
            np.maximum(inner, 0.0, out=inner)
            h = h + inner @ up_weight
            h += up_bias
        out = h @ self.head[0]
        out += self.head[1]
        return out

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """[N, F] inputs -> [N, C] float32 class probabilities (softmax of `logits`)."""
        z = self.logits(x)
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z


# ---- persistence --------------------------------------------------------------------------

def _frozen_state(model: SelfHealingNet) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()
            if not k.startswith(ADAPTER_PREFIX)}


def save_model(model: SelfHealingNet, directory: str | Path) -> str:
    """Write the frozen model (no adapter) and its spec; returns the model's content hash."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = st_save(_frozen_state(model))
    (directory / MODEL_FILE).write_bytes(data)
    (directory / SPEC_FILE).write_text(json.dumps(asdict(model.spec), indent=1))
    return hashlib.sha256(data).hexdigest()


def load_model(directory: str | Path) -> SelfHealingNet:
    directory = Path(directory)
    try:
        spec = ModelSpec(**json.loads((directory / SPEC_FILE).read_text()))
        data = (directory / MODEL_FILE).read_bytes()
        tensors = st_load(data)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"no model at {directory}: {err.filename} is missing") from err
    except (TypeError, ValueError, json.JSONDecodeError) as err:
        raise ValueError(f"model at {directory} is unreadable: {err}") from err
    model = SelfHealingNet(spec)
    expected = set(_frozen_state(model))
    if set(tensors) != expected:
        raise ValueError(f"model at {directory} does not match its spec: "
                         f"missing {sorted(expected - set(tensors))}, unexpected {sorted(set(tensors) - expected)}")
    model.load_state_dict({**tensors, **{ADAPTER_PREFIX + k: v for k, v in model.adapter.state_dict().items()}})
    model.freeze_backbone()
    model.eval()
    model.backbone_hash = hashlib.sha256(data).hexdigest()
    return model


def model_hash(directory: str | Path) -> str:
    return hashlib.sha256((Path(directory) / MODEL_FILE).read_bytes()).hexdigest()


def adapter_to_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    return st_save({k: v.detach().contiguous().float() for k, v in tensors.items()},
                   metadata=dict(metadata or {}))


def adapter_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """Parse safetensors bytes. Any malformed file is an AdapterError, never a crash."""
    try:
        return st_load(bytes(data))
    except Exception as err:  # safetensors raises its own error types for every malformed header
        raise AdapterError(f"adapter file is not valid safetensors: {err}") from err


def adapter_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
