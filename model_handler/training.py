"""Training the backbone before deployment, and the reference facts shipped with it.

This runs once, offline, on labelled source data. After deployment only the adapter changes.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from model_handler.labelshift import fit_bcts
from model_handler.model import ModelSpec, SelfHealingNet
from model_handler.sketches import confusion_matrix

QUANTILES = np.linspace(0.05, 0.95, 19)
CALIBRATION_MIN_ROWS = 2000   # below this every labelled row trains the backbone (no calibration, no confusion)


def train_backbone(x: np.ndarray, y: np.ndarray, features: list[str], classes: list[str], *,
                   log_features: list[str] = (), hidden: tuple[int, ...] = (64, 64),
                   adapter_rank: int = 8, epochs: int = 12, batch_size: int = 256, lr: float = 3e-3,
                   weight_decay: float = 1e-5, seed: int = 0,
                   calibration_fraction: float = 0.15) -> SelfHealingNet:
    """Fit normalisation, backbone and head on labelled data; return it with the adapter at identity.

    The spec records the training prior and the normalised input quantiles: healing needs them
    to diagnose drift without labels.
    """
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y) or len(x) < 50:
        raise ValueError(f"need at least 50 labelled rows with matching labels, got x{x.shape} y{y.shape}")
    if not np.isfinite(x).all():
        raise ValueError("training inputs contain NaN or inf")
    y = class_indices(y, len(classes))
    torch.manual_seed(seed)
    # Labelled rows the backbone never trains on: calibration and the confusion matrix need them.
    order = np.random.default_rng(seed).permutation(len(y))
    n_cal = int(len(y) * calibration_fraction) if len(y) >= CALIBRATION_MIN_ROWS else 0
    cal, fit = order[:n_cal], order[n_cal:]
    xt = torch.as_tensor(x[fit], dtype=torch.float32)
    yt = torch.as_tensor(y[fit], dtype=torch.long)
    prior = np.bincount(y, minlength=len(classes)) / len(y)
    spec = ModelSpec(features=list(features), classes=list(classes), hidden=list(hidden),
                     adapter_rank=adapter_rank, log_features=list(log_features),
                     train_prior=prior.tolist())
    model = SelfHealingNet(spec)
    model.fit_normalisation(xt)
    params = [p for n, p in model.named_parameters() if not n.startswith("adapter.")]
    for p in model.adapter.parameters():
        p.requires_grad_(False)
    optimiser = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for start in range(0, len(perm), batch_size):
            idx = perm[start:start + batch_size]
            optimiser.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            optimiser.step()
    model.eval()
    model.freeze_backbone()
    with torch.no_grad():
        z = model.transform(xt).numpy()
        spec.reference_quantiles = np.quantile(z, QUANTILES, axis=0).T.round(6).tolist()
    spec.rank_correlation = rank_correlation(x[fit]).round(4).tolist()
    if n_cal:
        with torch.no_grad():
            logits = model(torch.as_tensor(x[cal], dtype=torch.float32)).double().numpy()
        temperature, bias = fit_bcts(logits, y[cal])
        spec.calibration_temperature, spec.calibration_bias = temperature, bias.round(6).tolist()
        spec.confusion = confusion_matrix(logits, y[cal], len(classes)).round(6).tolist()
    return model


def class_indices(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Labels as int64 class indices; float labels are accepted only when they are whole numbers."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"labels must be a 1-d array of class indices, got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating) or y.dtype == np.bool_):
        raise ValueError(f"labels must be class indices (integers), got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all() or not np.all(y == np.round(y)):
            raise ValueError("labels must be whole class indices 0..C-1; got non-integer floats "
                             "(probabilities or scores are not labels)")
    out = y.astype(np.int64)
    if len(out) and (out.min() < 0 or out.max() >= n_classes):
        raise ValueError(f"labels must be class indices in [0, {n_classes}), got {out.min()}..{out.max()}")
    return out


def rank_correlation(x: np.ndarray) -> np.ndarray:
    """Spearman rank correlation matrix of the columns of x (constant columns correlate 0)."""
    from scipy.stats import rankdata

    ranks = np.apply_along_axis(rankdata, 0, np.asarray(x, dtype=np.float64))
    ranks -= ranks.mean(0)
    norm = np.sqrt((ranks ** 2).sum(0))
    norm[norm == 0] = np.inf
    return (ranks.T @ ranks) / np.outer(norm, norm)
