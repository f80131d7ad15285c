"""Training the backbone before deployment, and the reference facts shipped with it.

This runs once, offline, on labelled source data. After deployment only the adapter changes.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from model_handler.model import ModelSpec, SelfHealingNet

QUANTILES = np.linspace(0.05, 0.95, 19)


def train_backbone(x: np.ndarray, y: np.ndarray, features: list[str], classes: list[str], *,
                   log_features: list[str] = (), hidden: tuple[int, ...] = (64, 64),
                   adapter_rank: int = 8, epochs: int = 12, batch_size: int = 256, lr: float = 3e-3,
                   weight_decay: float = 1e-5, seed: int = 0) -> SelfHealingNet:
    """Fit normalisation, backbone and head on labelled data; return it with the adapter at identity.

    The spec records the training prior and the normalised input quantiles: healing needs them
    to diagnose drift without labels.
    """
    if len(x) != len(y) or len(x) < 50:
        raise ValueError(f"need at least 50 labelled rows with matching labels, got x{x.shape} y{y.shape}")
    if not np.isfinite(x).all():
        raise ValueError("training inputs contain NaN or inf")
    torch.manual_seed(seed)
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long)
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
    return model
